"""The restore API: a loaded CoTIR model that turns an LQ image and an instruction into an image.

:class:`CoTIRRestorer` bundles a variant's transformer (with adapter and LoRA), image
codec and text encoder. ``restore(image, prompt, steps, seed)`` runs the Euler sampler
of :mod:`models.sampler`: the LQ image is resized to multiples of 16, encoded and
given as reference tokens next to the noisy target tokens (Kontext: first id axis 1;
FLUX.2: time coordinate 10), the velocity is integrated from pure noise (seeded on the
CPU, so a seed gives the same noise on any device), and the result is decoded and
resized back to the input's size. ``restore_turns`` is multi-turn restoration: each
turn is conditioned on the previous turn's output and its own instruction.

Loading: ``from_variant`` builds a variant (demo variants in code; full-size bases from
``COTIR_WEIGHTS_DIR`` via :func:`cotir_pipeline.weights.require_weights`) with a fresh,
zero-gated adapter; ``from_pretrained`` adds a trained checkpoint, ours or the public
release's (``cot_adapter.pt`` + ``lora.pt``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cotir_pipeline.checkpoint_layout import (
    META_FILE,
    MODEL_DIR,
    RELEASE_ADAPTER_FILE,
    checkpoint_folder_method,
)
from cotir_pipeline.settings import CotirSettings, load_settings
from cotir_pipeline.weights import MissingWeightsError, require_weights
from models.backbones import (
    BackboneKind,
    CoTIRTransformer,
    grid_to_tokens,
    noisy_and_reference_ids,
    text_ids,
    tokens_to_grid,
)
from models.checkpoint_io import (
    BASE_DIR,
    RELEASE_LORA_FILE,
    load_checkpoint,
    load_release_checkpoint,
    read_checkpoint_meta,
)
from models.codecs import Flux2VAECodec, FluxVAECodec, LatentCodec, weightless_codec
from models.restore_requests import (
    checked_steps,
    resized_back,
    restore_in_turns,
    working_image,
)
from models.sampler import euler_sample, schedule_for
from models.text_encoders import (
    MiniLMTextEncoder,
    Qwen3TextEncoder,
    T5ClipTextEncoder,
    TextEncoder,
    TextEncoding,
)
from models.tiling import DEFAULT_TILE_OVERLAP, Window, blended_velocity, plan_windows
from models.variants import CodecKind, TextEncoderKind, Variant, get_variant

DEFAULT_SEED = 42
#: Subfolders a full variant's diffusers pipeline folder must hold, by text encoder.
_BASE_SUBFOLDERS: dict[TextEncoderKind, tuple[str, ...]] = {
    TextEncoderKind.T5_CLIP: (
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
    ),
    TextEncoderKind.QWEN3: ("transformer", "vae", "text_encoder", "tokenizer"),
    TextEncoderKind.MINILM: ("transformer",),
}
StepCallback = Callable[[int, int], None]
#: Most image tokens sampled in one transformer call without tiling: the demo models run
#: on a CPU (4096 tokens is 512 x 512 px there); FLUX's 16 px tokens allow 2048 x 2048 px.
MAX_UNTILED_TOKENS_DEMO = 4096
MAX_UNTILED_TOKENS_FULL = 16384


def _settings(settings: CotirSettings | None) -> CotirSettings:
    return settings if settings is not None else load_settings()


def _default_dtype(device: torch.device | str) -> torch.dtype:
    """float32 on the CPU, bfloat16 on accelerators (the released models run in bf16)."""
    return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16


def lora_merges_exactly(dtype: torch.dtype) -> bool:
    """Whether inference merges the LoRA into the base weights: in float32 (the CPU's
    default) the merged model matches the LoRA'd one to float rounding; in bf16/fp16 a
    small delta would round away, so peft's separate layers are kept."""
    return dtype == torch.float32


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(pixels: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [-1, 1] -> 8-bit RGB PIL image (values clamped)."""
    if pixels.ndim != 4 or pixels.shape[0] != 1 or pixels.shape[1] != 3:
        raise ValueError(f"expected a (1, 3, H, W) image tensor, got {tuple(pixels.shape)}")
    array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


def _build_demo_transformer(variant: Variant, seed: int) -> CoTIRTransformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CoTIRTransformer.from_variant(variant)


def _load_codec(variant: Variant, base: Path | None, dtype: torch.dtype) -> LatentCodec:
    if variant.codec.weightless:
        return weightless_codec(variant.codec, variant.token_stride)
    if base is None:
        raise MissingWeightsError(f"the {variant.name} VAE needs a base weights folder")
    from diffusers import AutoencoderKL, AutoencoderKLFlux2

    if variant.codec is CodecKind.FLUX1_VAE:
        vae = AutoencoderKL.from_pretrained(str(base), torch_dtype=dtype, local_files_only=True)
        return FluxVAECodec(vae.eval())
    vae = AutoencoderKLFlux2.from_pretrained(str(base), torch_dtype=dtype, local_files_only=True)
    return Flux2VAECodec(vae.eval())


def _load_text_encoder(variant: Variant, base: Path | None, dtype: torch.dtype) -> TextEncoder:
    if variant.text_encoder is TextEncoderKind.MINILM:
        return MiniLMTextEncoder.from_folder()
    if base is None:
        raise MissingWeightsError(f"the {variant.name} text encoder needs a base weights folder")
    if variant.text_encoder is TextEncoderKind.T5_CLIP:
        return T5ClipTextEncoder.from_pipeline_folder(base, dtype=dtype)
    return Qwen3TextEncoder.from_pipeline_folder(base, dtype=dtype, layers=variant.text_layers)


#: The folder shipped bases lie in (the ``models`` package).
BUNDLED_BASES_DIR = Path(__file__).resolve().parent


def bundled_base_path(variant: Variant) -> Path:
    """Where the variant's base shipped inside the ``models`` package lies (not checked)."""
    if variant.bundled_base is None:
        raise ValueError(f"{variant.name} ships no base")
    return BUNDLED_BASES_DIR / variant.bundled_base


def bundled_base_folder(variant: Variant) -> Path:
    """The variant's shipped base, checked against its record."""
    return base_folder(bundled_base_path(variant))


def base_folder(folder: Path) -> Path:
    """``folder`` after checking it: a prior folder (``prior.json``) must match its digests."""
    from models.prior import RECORD_FILE, verify_prior

    folder = Path(folder)
    if (folder / RECORD_FILE).is_file():
        verify_prior(folder)
    elif not folder.exists():
        raise MissingWeightsError(f"the base model folder {folder} does not exist")
    return folder


def base_fingerprint(folder: Path) -> dict[str, str]:
    """What a checkpoint records about its base: where it is and its digest (a prior's own
    sha256).

    A base shipped inside the ``models`` package is named (``"bundled": "demo_prior"``),
    not given by its absolute path, so the same training in two clones of the repository
    records the same base and gives checkpoints with the same digest.
    """
    from models.prior import RECORD_FILE, read_record

    folder = Path(folder).resolve()
    shipped = folder.parent == BUNDLED_BASES_DIR
    identity = {"bundled": folder.name} if shipped else {"path": str(folder)}
    if (folder / RECORD_FILE).is_file():
        identity["sha256"] = str(read_record(folder)["sha256"])
    else:
        config = folder / "transformer" / "config.json"
        config = config if config.is_file() else folder / "config.json"
        if config.is_file():
            identity["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    return identity


def _base_of_checkpoint(variant: Variant, meta: dict[str, object]) -> Path | None:
    """The base a checkpoint was trained on, when it is not the variant's default one."""
    recorded = meta.get("base")
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return None
    wanted = str(recorded["sha256"])
    candidates = []
    if variant.bundled_base is not None:
        candidates.append(bundled_base_path(variant))
    if isinstance(recorded.get("path"), str):
        candidates.append(Path(str(recorded["path"])))
    for candidate in candidates:
        if candidate.is_dir() and base_fingerprint(candidate).get("sha256") == wanted:
            return candidate  # from_variant checks it against its record
    where = recorded.get("path") or f"the shipped {recorded.get('bundled')}"
    raise MissingWeightsError(
        f"the checkpoint was trained on base {wanted[:16]}... (recorded at "
        f"{where}), and no such base is available: the shipped prior differs "
        "(rebuild it with `make prior` at the recorded settings, or pass its folder)"
    )


class ReleaseRotaryEmbedding(torch.nn.Module):
    """FLUX RoPE computed as the release computes it from bf16 ids, in diffusers' form.

    The release's ``rope`` works in the dtype of the ids it is given, which its sampler
    casts to bf16: positions, frequencies, angles and their cosines and sines are all
    bf16 (only the result is cast to float32). bf16 keeps 8 significant bits, so
    positions above 256 collapse (FLUX.2's 512 text positions become 385 values), and
    released weights were trained under that rounding. Returns diffusers' ``(cos, sin)`` pair
    (each frequency repeated for its two channels), so it stands in for the
    transformer's ``pos_embed``.
    """

    def __init__(self, theta: float, axes_dim: Sequence[int]) -> None:
        super().__init__()
        self.theta = theta
        self.axes_dim = tuple(int(dim) for dim in axes_dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (N, sum(axes_dim)) float32, for (N, len(axes_dim)) ids."""
        positions = ids.to(torch.bfloat16)
        cos_parts, sin_parts = [], []
        for axis, dim in enumerate(self.axes_dim):
            scale = torch.arange(0, dim, 2, dtype=torch.bfloat16, device=ids.device) / dim
            omega = 1.0 / (self.theta**scale)
            angles = positions[..., axis, None] * omega
            cos_parts.append(torch.cos(angles).float().repeat_interleave(2, dim=-1))
            sin_parts.append(torch.sin(angles).float().repeat_interleave(2, dim=-1))
        return torch.cat(cos_parts, dim=-1), torch.cat(sin_parts, dim=-1)


@contextlib.contextmanager
def release_rope(transformer: torch.nn.Module) -> Iterator[None]:
    """Swap the transformer's ``pos_embed`` for :class:`ReleaseRotaryEmbedding` meanwhile."""
    original = transformer.pos_embed
    transformer.pos_embed = ReleaseRotaryEmbedding(original.theta, original.axes_dim)
    try:
        yield
    finally:
        transformer.pos_embed = original


def initial_noise(
    shape: tuple[int, ...],
    seed: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Gaussian noise from a generator seeded with ``seed`` on ``device``, in ``dtype``.

    Ours: a CPU float32 generator (the same sample on any device). The release: a
    generator on the sampling device, drawn directly in the latents' dtype.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


@dataclass(frozen=True)
class _Sampling:
    """How a checkpoint is sampled, from its ``cotir.json`` (the release's: the paper's)."""

    flow_start: str = "noise"
    velocity: str = "model"
    steps: int | None = None


def _sampling_of(folder: Path, meta: Mapping[str, object]) -> _Sampling:
    """The checked ``flow_start``, ``velocity`` and ``sample_steps`` of a checkpoint."""
    flow_start = str(meta.get("flow_start", "noise"))
    if flow_start not in ("noise", "reference"):
        raise ValueError(f"{folder}: unknown flow_start {flow_start!r}")
    velocity = str(meta.get("velocity", "model"))
    if velocity not in ("model", "delta"):
        raise ValueError(f"{folder}: unknown velocity {velocity!r}")
    recorded = meta.get("sample_steps")
    steps: int | None = None
    if recorded is not None:
        if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded < 1:
            raise ValueError(f"{folder}: sample_steps must be a positive int, got {recorded!r}")
        steps = recorded
    return _Sampling(flow_start, velocity, steps)


class CoTIRRestorer:
    """A loaded CoTIR model: transformer + adapter (+ LoRA), codec, text encoder."""

    def __init__(
        self,
        variant: Variant,
        model: CoTIRTransformer,
        codec: LatentCodec,
        text_encoder: TextEncoder,
        *,
        device: torch.device | str = "cpu",
    ) -> None:
        if model.kind is not variant.backbone:
            raise ValueError(f"{variant.name} needs a {variant.backbone} model, got {model.kind}")
        if text_encoder.dim != variant.text_dim:
            raise ValueError(
                f"{variant.name} expects D = {variant.text_dim}, the text encoder gives "
                f"{text_encoder.dim}"
            )
        self.variant = variant
        #: Where the Euler sampler starts: Gaussian noise (the paper) or the LQ tokens.
        self.flow_start = "noise"
        #: Euler steps when a call names none (None: the variant's); a checkpoint trained
        #: only at the flow's start records 1.
        self.sample_steps: int | None = None
        #: Sample as the public release's inference does (RoPE from bf16 position ids,
        #: :class:`ReleaseRotaryEmbedding`; noise from a generator on the device in the
        #: latents' dtype; latents kept in that dtype between steps; sizes floored to
        #: multiples of 16). On for the
        #: release's checkpoint files (the weights were trained that way), off otherwise.
        self.release_compat = False
        #: Images of more tokens than this are refused unless restored in tiles (None: any).
        self.max_untiled_tokens: int | None = (
            MAX_UNTILED_TOKENS_DEMO if variant.is_demo else MAX_UNTILED_TOKENS_FULL
        )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.codec = codec.to(self.device).eval()
        self.text_encoder = text_encoder.to(self.device).eval()

    @property
    def default_steps(self) -> int:
        """Euler steps when a call names none: the checkpoint's own, else the variant's."""
        return self.sample_steps if self.sample_steps is not None else self.variant.steps

    @property
    def dtype(self) -> torch.dtype:
        """Dtype the transformer runs in."""
        return self.model.dtype

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def from_variant(
        cls,
        name: str,
        *,
        settings: CotirSettings | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        seed: int = 0,
        base: Path | None = None,
    ) -> CoTIRRestorer:
        """Build ``name`` with a fresh (zero-gated) adapter and no LoRA.

        Demo variants are built in code from ``seed`` (random, untrained weights). Full
        variants read the diffusers pipeline folder ``COTIR_WEIGHTS_DIR/<weights_folder>``
        (transformer, vae and text encoder subfolders); ``base`` overrides that folder
        with an explicit transformer folder (e.g. a checkpoint's ``transformer/``).
        """
        variant = get_variant(name)
        dtype = dtype or _default_dtype(device)
        pipeline_folder: Path | None = None
        if not variant.is_demo:
            config = _settings(settings)
            pipeline_folder = require_weights(
                config, variant.weights_folder or "", what=f"{name} base pipeline"
            )
            for sub in _BASE_SUBFOLDERS[variant.text_encoder]:
                require_weights(config, f"{variant.weights_folder}/{sub}", what=f"{name} {sub}")
        elif variant.bundled_base is not None and base is None:
            pipeline_folder = bundled_base_folder(variant)
        if base is not None:
            base_folder(base)  # a prior folder is checked against its record
            model = CoTIRTransformer.from_pretrained_base(
                variant.backbone,
                base,
                text_dim=variant.text_dim,
                adapter_depth=variant.adapter_depth,
                dtype=dtype,
            )
        elif pipeline_folder is not None:
            # The full variants' FLUX folders and the demo's shipped prior load alike.
            model = CoTIRTransformer.from_pretrained_base(
                variant.backbone,
                pipeline_folder / "transformer",
                text_dim=variant.text_dim,
                adapter_depth=variant.adapter_depth,
                dtype=dtype,
            )
        else:
            model = _build_demo_transformer(variant, seed).to(dtype)
        if variant.is_demo:
            pipeline_folder = None  # the demo codec and text encoder need no files
        vae_folder = None if pipeline_folder is None else pipeline_folder / "vae"
        codec = _load_codec(variant, vae_folder, dtype).to(dtype)
        text_encoder = _load_text_encoder(variant, pipeline_folder, dtype)
        return cls(variant, model, codec, text_encoder, device=device)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: Path | str,
        *,
        variant: str | None = None,
        settings: CotirSettings | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        release_compat: bool | None = None,
        merge_lora: bool | None = None,
    ) -> CoTIRRestorer:
        """Load a trained checkpoint folder: ours (``cotir.json``) or the release's (``*.pt``).

        A relative ``checkpoint`` that does not exist is looked up under
        ``COTIR_WEIGHTS_DIR``. The release's files carry no variant, so ``variant`` is
        required for them. ``release_compat`` (None: on for the release's files only)
        sets :attr:`release_compat`. ``merge_lora`` (None: when the weights are float32,
        see :func:`lora_merges_exactly`) adds the LoRA into the base weights instead of
        keeping peft's layers; a checkpoint whose velocity is its change to the base
        (``"velocity": "delta"`` in ``cotir.json``) always keeps them.
        """
        dtype = dtype or _default_dtype(device)
        if merge_lora is None:
            merge_lora = lora_merges_exactly(dtype)
        folder = Path(checkpoint)
        if not folder.exists():
            if folder.is_absolute():
                raise MissingWeightsError(f"the CoTIR checkpoint {folder} does not exist")
            folder = require_weights(_settings(settings), str(folder), what="CoTIR checkpoint")
        sampling = _Sampling()  # the release's files: the paper's
        if (folder / META_FILE).is_file():
            meta = read_checkpoint_meta(folder)
            sampling = _sampling_of(folder, meta)
            if sampling.velocity == "delta":
                merge_lora = False  # the base's own output is needed beside the LoRA'd one
            name = variant or meta.get("variant")
            if not name:
                raise ValueError(f"{folder} names no variant; pass variant=")
            base = folder / BASE_DIR if (folder / BASE_DIR).is_dir() else None
            if base is None:
                base = _base_of_checkpoint(get_variant(name), meta)
            restorer = cls.from_variant(
                name, settings=settings, device="cpu", dtype=dtype, base=base
            )
            load_checkpoint(restorer.model, folder, merge_lora=merge_lora)
            release_files = False
        elif (folder / RELEASE_ADAPTER_FILE).is_file():
            release_files = True
            if not variant:
                raise ValueError("the release's checkpoint files name no variant; pass variant=")
            restorer = cls.from_variant(variant, settings=settings, device="cpu", dtype=dtype)
            lora = folder / RELEASE_LORA_FILE
            load_release_checkpoint(
                restorer.model,
                folder / RELEASE_ADAPTER_FILE,
                lora if lora.is_file() else None,
                merge_lora=merge_lora,
            )
        else:
            raise MissingWeightsError(
                f"{folder} holds neither {META_FILE} (a cotir checkpoint) nor "
                f"{RELEASE_ADAPTER_FILE} (the public release)"
            )
        loaded = cls(
            restorer.variant,
            restorer.model,
            restorer.codec,
            restorer.text_encoder,
            device=device,
        )
        loaded.flow_start = sampling.flow_start
        loaded.sample_steps = sampling.steps
        loaded.model.velocity_delta = sampling.velocity == "delta"
        loaded.release_compat = release_files if release_compat is None else release_compat
        return loaded

    # -- inference ----------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> TextEncoding:
        """Text features of one instruction, on the model's device and dtype."""
        encoding = self.text_encoder.encode([prompt], self.variant.max_text_tokens)
        return encoding.to(self.device, self.dtype)

    def _tile_tokens(self, tile_size: int, tile_overlap: int) -> tuple[int, int]:
        """A tile and its overlap in pixels -> whole tokens (checked)."""
        stride = self.codec.stride
        if tile_size < 2 * stride:
            raise ValueError(f"tile size must be at least {2 * stride} px, got {tile_size}")
        if not 0 <= tile_overlap < tile_size:
            raise ValueError(
                f"tile overlap must be in [0, tile size), got {tile_overlap} for {tile_size}"
            )
        return tile_size // stride, tile_overlap // stride

    def guidance(self) -> torch.Tensor | None:
        """The distilled guidance scale a FLUX.1 transformer with guidance embeddings takes
        (the variant's, else 1); None for every other transformer."""
        if self.variant.backbone is not BackboneKind.FLUX1_KONTEXT:
            return None
        if not self.model.transformer.config.guidance_embeds:
            return None
        value = self.variant.guidance if self.variant.guidance is not None else 1.0
        return torch.full((1,), value, device=self.device, dtype=torch.float32)

    def _velocity_fn(
        self, text: TextEncoding, grid_h: int, grid_w: int
    ) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
        """v(x, reference, t) for a ``grid_h`` x ``grid_w`` token grid: one transformer call
        on the noisy tokens followed by the reference tokens."""
        kind = self.variant.backbone
        n_tokens = grid_h * grid_w
        ids = noisy_and_reference_ids(kind, grid_h, grid_w, device=self.device)
        txt_ids = text_ids(kind, text.embeds.shape[1], device=self.device)
        guidance = self.guidance()
        pooled = text.pooled if kind is BackboneKind.FLUX1_KONTEXT else None

        def velocity(x: torch.Tensor, reference: torch.Tensor, t: float) -> torch.Tensor:
            hidden = torch.cat([x.to(self.device, self.dtype), reference], dim=1)
            timestep = torch.full((1,), t, device=self.device, dtype=self.dtype)
            output = self.model(
                hidden,
                text.embeds,
                timestep,
                ids,
                txt_ids,
                pooled_projections=pooled,
                guidance=guidance,
            )
            return output.sample[:, :n_tokens]

        return velocity

    def _sigmas(self, n_tokens: int, steps: int) -> torch.Tensor:
        """The variant's Euler times for a sequence of ``n_tokens`` image tokens."""
        variant = self.variant
        return schedule_for(
            variant.schedule,
            n_tokens,
            steps,
            base_shift=variant.base_shift,
            max_shift=variant.max_shift,
        )

    @torch.no_grad()
    def restore(
        self,
        image: Image.Image,
        prompt: str,
        steps: int | None = None,
        seed: int = DEFAULT_SEED,
        *,
        on_step: StepCallback | None = None,
        tile_size: int | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
    ) -> Image.Image:
        """Restore ``image`` following ``prompt``; the output has the input's size.

        With ``tile_size`` (pixels), the transformer sees overlapping windows of that
        size whose velocities are blended at every Euler step (:mod:`models.tiling`), and
        the autoencoder encodes and decodes in tiles where it can: memory stays bounded
        for any image size. Without it, an image of more than
        :attr:`max_untiled_tokens` tokens is refused (:class:`ImageTooLargeError`).
        """
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        steps = checked_steps(prompt, steps, self.default_steps)
        tiles = None if tile_size is None else self._tile_tokens(tile_size, tile_overlap)
        compat = self.release_compat
        limit = self.max_untiled_tokens if tiles is None else None
        source, grid_h, grid_w = working_image(image, self.codec.stride, limit, down=compat)
        n_tokens = grid_h * grid_w

        pixels = pil_to_tensor(source).to(self.device, self.dtype)
        codec_tiling = self.codec.tiling if tiles else contextlib.nullcontext
        with codec_tiling():
            reference_grid = self.codec.encode(pixels).to(self.dtype)
        reference = grid_to_tokens(reference_grid)
        text = self.encode_prompt(prompt)
        noise = initial_noise(
            (1, n_tokens, reference.shape[-1]),
            seed,
            device=self.device if compat else torch.device("cpu"),
            dtype=reference.dtype if compat else torch.float32,
        )
        start = reference if self.flow_start == "reference" else noise.to(self.device)
        if tiles is None:
            model_velocity = self._velocity_fn(text, grid_h, grid_w)

            def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
                return model_velocity(x, reference, t)

            sigmas = self._sigmas(n_tokens, steps)
        else:
            velocity, window_tokens = self._tiled_velocity(text, reference_grid, *tiles)
            sigmas = self._sigmas(window_tokens, steps)
        rope = release_rope(self.model.transformer) if compat else contextlib.nullcontext()
        with rope:
            latents = euler_sample(
                velocity,
                start,
                sigmas,
                on_step=on_step,
                state_dtype=reference.dtype if compat else torch.float32,
            )
        grid = tokens_to_grid(latents.to(self.dtype), grid_h, grid_w)
        with codec_tiling():
            result = tensor_to_pil(self.codec.decode(grid))
        return resized_back(result, image.size)

    def _tiled_velocity(
        self, text: TextEncoding, reference_grid: torch.Tensor, tile: int, overlap: int
    ) -> tuple[Callable[[torch.Tensor, float], torch.Tensor], int]:
        """v(x, t) over the whole token sequence, sampled in blended windows, and the
        largest window's token count (the schedule's sequence length)."""
        _, _, grid_h, grid_w = reference_grid.shape
        windows = plan_windows(grid_h, grid_w, tile, overlap)
        by_size: dict[tuple[int, int], Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]]
        by_size = {}

        def window_velocity(window: Window, state: torch.Tensor, t: float) -> torch.Tensor:
            size = (window.height, window.width)
            if size not in by_size:
                by_size[size] = self._velocity_fn(text, *size)
            reference = grid_to_tokens(window.crop(reference_grid))
            tokens = by_size[size](grid_to_tokens(state), reference, t)
            return tokens_to_grid(tokens, *size)

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            state = tokens_to_grid(x, grid_h, grid_w)
            return grid_to_tokens(blended_velocity(window_velocity, state, t, windows, overlap))

        return velocity, max(window.height * window.width for window in windows)

    def restore_turns(
        self,
        image: Image.Image,
        prompts: Sequence[str],
        steps: int | None = None,
        seed: int = DEFAULT_SEED,
        *,
        on_step: StepCallback | None = None,
        tile_size: int | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
    ) -> list[Image.Image]:
        """Multi-turn restoration: turn k restores turn k-1's output with ``prompts[k]``."""

        def restore_one(current: Image.Image, prompt: str) -> Image.Image:
            return self.restore(
                current,
                prompt,
                steps,
                seed,
                on_step=on_step,
                tile_size=tile_size,
                tile_overlap=tile_overlap,
            )

        return restore_in_turns(restore_one, image, prompts)

    def for_evaluation(
        self, *, name: str | None = None, version: str = "0", steps: int | None = None
    ) -> EvaluationRestorer:
        """This model behind the evaluation layer's ``Restorer`` protocol (ndarray in, out)."""
        return EvaluationRestorer(
            self, name=name or self.variant.name, version=version, steps=steps
        )


class EvaluationRestorer:
    """Adapter to ``cotir_pipeline.evaluation``'s protocol: ``restore(lq, prompt, degradation)``.

    ``lq`` and the result are RGB uint8 arrays (H, W, 3); the degradation label is not
    used (CoTIR reads everything from the instruction). Seed 42, the variant's steps.
    """

    def __init__(
        self, restorer: CoTIRRestorer, *, name: str, version: str, steps: int | None = None
    ) -> None:
        self.restorer = restorer
        self.name = name
        self.version = version
        self.steps = steps

    def restore(self, lq: np.ndarray, prompt: str, degradation: str) -> np.ndarray:
        """Restore an RGB uint8 array following ``prompt``."""
        del degradation
        array = np.asarray(lq)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {array.shape} {array.dtype}")
        result = self.restorer.restore(Image.fromarray(array), prompt, self.steps)
        return np.asarray(result, dtype=np.uint8)


def restorer_from_checkpoint(checkpoint: str) -> EvaluationRestorer:
    """A restorer for a saved CoTIR checkpoint folder (`cotir bench --method cotir:DIR`).

    ``models.cli.checkpoint_restorer``, the ``cotir.restorers`` entry point, calls it, so
    the command line reaches the model without the library importing torch.
    """
    folder = Path(checkpoint)
    name = checkpoint_folder_method(folder)  # as the tables name it (cotir bench's rows)
    if (folder / MODEL_DIR).is_dir():  # a training checkpoint: its inference part
        folder = folder / MODEL_DIR
    return CoTIRRestorer.from_pretrained(folder).for_evaluation(name=name)
