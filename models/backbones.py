"""FLUX backbones with the CoT adapter inserted between the double- and single-stream blocks.

One wrapper, :class:`CoTIRTransformer`, serves both diffusers classes:

- ``FluxTransformer2DModel`` (FLUX.1 Kontext, CoTIR-12B) and
- ``Flux2Transformer2DModel`` (FLUX.2 klein, CoTIR-4B/9B).

The diffusers model is held unchanged (composition, not a subclass) and two forward
hooks splice the adapter in:

1. a hook on the timestep embedding (``time_text_embed`` / ``time_guidance_embed``)
   records the timestep vector ``vec`` that drives the adapter's adaLN (a pre-hook on
   the transformer clears it at the start of every forward);
2. a hook on ``transformer_blocks[-1]`` (the last double-stream block) receives that
   block's output ``(text, image)`` and returns ``(text', image)``, where ``text'`` is
   the adapter's gated text stream. It reads the rotary embedding over the joint ids
   from the block's own arguments.

FLUX.1 keeps two streams through its single-stream blocks; FLUX.2 concatenates
``[text ; image]`` into one stream right after the last double block. Because the hook
returns the text stream *before* that concatenation, both join the adapted text with
no other change, and the adapter always sees text and image separately. Since
``from_pretrained`` only ever touches the diffusers model, the adapter's parameters are
never left on the meta device (the trap of subclassing, ENVIRONMENT.md).

The module also holds the per-backbone token layout: position ids for text, noisy
image and LQ reference tokens (the CoTIR paper and its public release) and the (un)packing of latent
grids into token sequences.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from models.cot_adapter import CoTAdapter, CoTAdapterConfig, RotaryEmbedding
from models.kinds import BackboneKind

if TYPE_CHECKING:
    from models.variants import Variant

#: FLUX.2 reference images sit at time coordinate 10 (diffusers' ``_prepare_image_ids``).
FLUX2_REFERENCE_T = 10
#: FLUX.1 Kontext reference images have first id axis 1 (noisy target: 0).
FLUX1_REFERENCE_T = 1


def transformer_class(kind: BackboneKind) -> type[nn.Module]:
    """The diffusers class for ``kind`` (imported lazily: diffusers is slow to import)."""
    from diffusers import Flux2Transformer2DModel, FluxTransformer2DModel

    return FluxTransformer2DModel if kind is BackboneKind.FLUX1_KONTEXT else Flux2Transformer2DModel


def backbone_kind_of(transformer: nn.Module) -> BackboneKind:
    """Recognise the backbone of a diffusers transformer instance."""
    from diffusers import Flux2Transformer2DModel, FluxTransformer2DModel

    if isinstance(transformer, FluxTransformer2DModel):
        return BackboneKind.FLUX1_KONTEXT
    if isinstance(transformer, Flux2Transformer2DModel):
        return BackboneKind.FLUX2_KLEIN
    raise TypeError(
        f"expected a diffusers FluxTransformer2DModel or Flux2Transformer2DModel, "
        f"got {type(transformer).__name__}"
    )


def build_transformer(
    kind: BackboneKind,
    config: Mapping[str, Any],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Instantiate a randomly initialised diffusers transformer (``device="meta"`` to count)."""
    cls = transformer_class(kind)
    with torch.device(device or "cpu"):
        model = cls(**dict(config))
    if dtype is not None and str(device) != "meta":
        model = model.to(dtype)
    return model.eval()


def load_transformer(
    kind: BackboneKind, path: Path, *, dtype: torch.dtype | None = None
) -> nn.Module:
    """Load a diffusers transformer from a local ``save_pretrained`` folder; never downloads.

    ``path`` is either the transformer folder itself (holding ``config.json``) or a
    pipeline folder with a ``transformer/`` subfolder.
    """
    path = Path(path)
    if (path / "transformer" / "config.json").is_file():
        path = path / "transformer"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no diffusers transformer (no config.json)")
    cls = transformer_class(kind)
    model = cls.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
    return model.eval()


def hidden_size_of(transformer: nn.Module) -> int:
    """Width h of the transformer's streams."""
    return int(transformer.config.num_attention_heads * transformer.config.attention_head_dim)


def adapter_config_for(
    transformer: nn.Module, *, text_dim: int, depth: int = 6
) -> CoTAdapterConfig:
    """Adapter sizes matching ``transformer`` (hidden size and heads) and the text width D."""
    return CoTAdapterConfig(
        hidden_size=hidden_size_of(transformer),
        num_heads=int(transformer.config.num_attention_heads),
        text_dim=text_dim,
        depth=depth,
    )


@dataclass
class CoTIROutput:
    """The velocity for the noisy (and reference) tokens plus the three CoT predictions."""

    sample: torch.Tensor
    scene: torch.Tensor
    degradation: torch.Tensor
    plan: torch.Tensor


class CoTIRTransformer(nn.Module):
    """A diffusers FLUX transformer with the CoT adapter spliced in by forward hooks.

    ``transformer`` is the unchanged diffusers model (LoRA from :mod:`models.lora` is
    injected into it), ``cot_adapter`` the adapter; the state dict's ``cot_adapter.*``
    keys are the release's ``cot_adapter.pt`` keys. With the three gates at zero, the
    sample equals the base model's output exactly.

    With :attr:`velocity_delta` on, the sample is the fine-tune's *change* to the base:
    the output with LoRA and adapter minus the frozen base's output for the same input
    (one more forward, without gradients). Before training that change is exactly zero,
    so a flow started at the LQ tokens begins as the identity map and training only
    moves away from it where the loss gains (the demo's LQ-start recipe,
    docs/TRAINING.md). Needs the LoRA as peft layers, not merged into the base.
    """

    def __init__(self, transformer: nn.Module, cot_adapter: CoTAdapter) -> None:
        super().__init__()
        self.kind = backbone_kind_of(transformer)
        if hidden_size_of(transformer) != cot_adapter.config.hidden_size:
            raise ValueError(
                f"adapter width {cot_adapter.config.hidden_size} does not match the "
                f"transformer's {hidden_size_of(transformer)}"
            )
        if len(transformer.transformer_blocks) == 0:
            raise ValueError("the transformer has no double-stream block to attach the adapter to")
        self.transformer = transformer
        self.cot_adapter = cot_adapter
        self._vec: torch.Tensor | None = None
        self._predictions: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._adapter_bypassed = False
        self.velocity_delta = False
        last_block = transformer.transformer_blocks[-1]
        self._block_signature = inspect.signature(last_block.forward)
        embedder = (
            transformer.time_text_embed
            if self.kind is BackboneKind.FLUX1_KONTEXT
            else transformer.time_guidance_embed
        )
        self._hooks = [
            transformer.register_forward_pre_hook(self._reset_state),
            embedder.register_forward_hook(self._capture_vec),
            last_block.register_forward_hook(self._run_adapter, with_kwargs=True),
        ]

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        kind: BackboneKind,
        transformer_config: Mapping[str, Any],
        *,
        text_dim: int,
        adapter_depth: int = 6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CoTIRTransformer:
        """A randomly initialised backbone plus a fresh adapter (``device="meta"`` to count)."""
        transformer = build_transformer(kind, transformer_config, device=device, dtype=dtype)
        return cls.with_new_adapter(transformer, text_dim=text_dim, adapter_depth=adapter_depth)

    @classmethod
    def from_variant(
        cls, variant: Variant, *, device: torch.device | str | None = None
    ) -> CoTIRTransformer:
        """The variant's backbone, randomly initialised, with its adapter (``device="meta"``
        to count parameters or to build a skeleton for loading)."""
        return cls.from_config(
            variant.backbone,
            variant.transformer_config,
            text_dim=variant.text_dim,
            adapter_depth=variant.adapter_depth,
            device=device,
        )

    @classmethod
    def from_pretrained_base(
        cls,
        kind: BackboneKind,
        path: Path,
        *,
        text_dim: int,
        adapter_depth: int = 6,
        dtype: torch.dtype | None = None,
    ) -> CoTIRTransformer:
        """Base weights from a local diffusers folder, adapter freshly initialised."""
        transformer = load_transformer(kind, path, dtype=dtype)
        return cls.with_new_adapter(transformer, text_dim=text_dim, adapter_depth=adapter_depth)

    @classmethod
    def with_new_adapter(
        cls, transformer: nn.Module, *, text_dim: int, adapter_depth: int = 6
    ) -> CoTIRTransformer:
        """Wrap ``transformer`` with a new adapter on its device and in its dtype."""
        reference = next(transformer.parameters())
        config = adapter_config_for(transformer, text_dim=text_dim, depth=adapter_depth)
        with torch.device(reference.device):
            adapter = CoTAdapter(config)
        if reference.device.type != "meta":
            adapter = adapter.to(dtype=reference.dtype)
        return cls(transformer, adapter)

    # -- hooks --------------------------------------------------------------------------

    def _reset_state(self, _module: nn.Module, _args: Any) -> None:
        self._vec = None
        self._predictions = None

    def _capture_vec(self, _module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        # The first call of a forward is the noisy tokens' timestep; FLUX.2's KV-cache
        # "extract" mode calls the embedder a second time for the reference tokens.
        if self._vec is None:
            self._vec = output

    def _run_adapter(
        self,
        _module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._adapter_bypassed:
            return None  # the block's own output: the base model's pass
        if self._vec is None:
            raise RuntimeError("the timestep vector was not captured before the adapter ran")
        bound = self._block_signature.bind_partial(*args, **kwargs)
        rotary: RotaryEmbedding | None = bound.arguments.get("image_rotary_emb")
        if rotary is None:
            raise RuntimeError("the last double-stream block was called without a rotary embedding")
        text, image = output
        result = self.cot_adapter(text, image, self._vec, rotary)
        self._predictions = (result.scene, result.degradation, result.plan)
        return result.text, image

    def remove_hooks(self) -> None:
        """Detach the adapter: the transformer behaves as the plain base model again."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # -- forward ------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the transformer's weights."""
        return next(self.transformer.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device of the transformer's weights."""
        return next(self.transformer.parameters()).device

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint the backbone's blocks (the adapter runs inside the last double block's).

        The recomputation in backward reuses the timestep vector of the latest forward,
        so run one forward per backward (as training does) while this is on.
        """
        self.transformer.enable_gradient_checkpointing()

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        *,
        pooled_projections: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> CoTIROutput:
        """Velocity for ``hidden_states`` (noisy tokens, then reference tokens) and predictions.

        Arguments follow the diffusers transformers: ``timestep`` is the flow time in
        [0, 1] per sample, ``img_ids``/``txt_ids`` the 2-D position ids (3 axes for
        FLUX.1, 4 for FLUX.2); FLUX.1 also needs ``pooled_projections``.
        """
        kwargs: dict[str, Any] = {
            "hidden_states": hidden_states,
            "encoder_hidden_states": encoder_hidden_states,
            "timestep": timestep,
            "img_ids": img_ids,
            "txt_ids": txt_ids,
            "guidance": guidance,
            "joint_attention_kwargs": joint_attention_kwargs,
            "return_dict": False,
        }
        if self.kind is BackboneKind.FLUX1_KONTEXT:
            if pooled_projections is None:
                raise ValueError("FLUX.1 needs pooled_projections (the pooled CLIP embedding)")
            kwargs["pooled_projections"] = pooled_projections
        elif pooled_projections is not None:
            raise ValueError("FLUX.2 takes no pooled_projections")
        base = self._base_sample(kwargs) if self.velocity_delta else None
        sample = self.transformer(**kwargs)[0]
        if base is not None:
            sample = sample - base
        if self._predictions is None:
            raise RuntimeError("the adapter hook did not run (were the hooks removed?)")
        scene, degradation, plan = self._predictions
        self._predictions = None
        return CoTIROutput(sample=sample, scene=scene, degradation=degradation, plan=plan)

    def _base_sample(self, kwargs: dict[str, Any]) -> torch.Tensor:
        """The frozen base's output for the same input: LoRA off, adapter skipped."""
        if not has_peft_layers(self.transformer):
            raise RuntimeError(
                "velocity_delta needs the LoRA as separate layers (load without merging)"
            )
        with torch.no_grad():
            self._adapter_bypassed = True
            self.transformer.disable_adapters()
            try:
                return self.transformer(**kwargs)[0]
            finally:
                self.transformer.enable_adapters()
                self._adapter_bypassed = False


def has_peft_layers(transformer: nn.Module) -> bool:
    """Whether peft LoRA layers sit in ``transformer`` (injected, not merged into its
    weights): the one test of it, also behind :func:`models.lora.has_lora`."""
    return any("lora_A" in name for name, _ in transformer.named_parameters())


# -- token layout --------------------------------------------------------------------------


def text_ids(
    kind: BackboneKind, length: int, *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Position ids of ``length`` text tokens: FLUX.1 all zeros (L, 3); FLUX.2 (0, 0, 0, l)."""
    if length < 1:
        raise ValueError(f"text length must be positive, got {length}")
    if kind is BackboneKind.FLUX1_KONTEXT:
        return torch.zeros(length, 3, device=device)
    ids = torch.zeros(length, 4, dtype=torch.long, device=device)
    ids[:, 3] = torch.arange(length, device=device)
    return ids


def image_ids(
    kind: BackboneKind,
    grid_height: int,
    grid_width: int,
    *,
    reference: bool,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Position ids of a row-major token grid: (t, row, col) (FLUX.1), (t, row, col, 0) (FLUX.2).

    t is 0 for the noisy target and 1 (FLUX.1 Kontext) or 10 (FLUX.2) for the LQ
    reference image, as the diffusers pipelines lay them out.
    """
    if grid_height < 1 or grid_width < 1:
        raise ValueError(f"grid must be at least 1x1, got {grid_height}x{grid_width}")
    # Broadcast aranges, no in-place writes: the same ids, and a graph that exports with
    # the grid's size dynamic (models.onnx_export).
    rows = torch.arange(grid_height, device=device)[:, None].expand(grid_height, grid_width)
    cols = torch.arange(grid_width, device=device)[None, :].expand(grid_height, grid_width)
    flux1 = kind is BackboneKind.FLUX1_KONTEXT
    t_value = (FLUX1_REFERENCE_T if flux1 else FLUX2_REFERENCE_T) if reference else 0
    axes = [torch.full_like(rows, t_value), rows, cols]
    if not flux1:
        axes.append(torch.zeros_like(rows))
    ids = torch.stack(axes, dim=-1).reshape(grid_height * grid_width, len(axes))
    return ids.float() if flux1 else ids


def noisy_and_reference_ids(
    kind: BackboneKind, grid_height: int, grid_width: int, *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Position ids of one transformer input: the noisy target grid's tokens, then the LQ
    reference grid's (:func:`image_ids` of each, concatenated)."""
    return torch.cat(
        [
            image_ids(kind, grid_height, grid_width, reference=False, device=device),
            image_ids(kind, grid_height, grid_width, reference=True, device=device),
        ]
    )


def grid_to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) token grid -> (B, H*W, C) row-major sequence."""
    if grid.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) grid, got shape {tuple(grid.shape)}")
    return grid.flatten(2).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
    """(B, H*W, C) row-major sequence -> (B, C, H, W) grid."""
    batch, length, channels = tokens.shape
    if length != grid_height * grid_width:
        raise ValueError(f"{length} tokens do not fill a {grid_height}x{grid_width} grid")
    return tokens.transpose(1, 2).reshape(batch, channels, grid_height, grid_width)


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, 2H, 2W) VAE latents -> (B, 4C, H, W), channels ordered (c, dy, dx) as FLUX packs."""
    batch, channels, height, width = latents.shape
    if height % 2 or width % 2:
        raise ValueError(f"latent size {height}x{width} is not even")
    x = latents.view(batch, channels, height // 2, 2, width // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(batch, channels * 4, height // 2, width // 2)


def unpatchify(grid: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    batch, channels, height, width = grid.shape
    if channels % 4:
        raise ValueError(f"{channels} channels are not a multiple of 4")
    x = grid.reshape(batch, channels // 4, 2, 2, height, width)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels // 4, height * 2, width * 2)
