"""The demo's editing prior: a small FLUX.2-architecture model pretrained to edit photos.

CoTIR fine-tunes a *pretrained* FLUX editing model (FLUX.1 Kontext, FLUX.2 klein). The
demo profile cannot download one, so it ships its own stand-in: the ``demo`` variant's
``Flux2Transformer2DModel`` (3.2 M parameters, 8x8-pixel luma-chroma tokens), every parameter
trained here on a general editing objective over the demo *train* photos only:

- ``copy``: reproduce the reference image ("Keep the image unchanged."), half the samples;
- five prompted global edits of the reference (brighter, darker, more and less contrast,
  black and white), the other half.

The shipped recipe has two stages (:func:`shipped_config`): 16,000 steps on 64 px crops
from random weights, then 2,000 on 128 px crops, the size the demo restores at.

The objective is the paper's flow matching (noise -> target, the reference as tokens at
FLUX.2's reference time coordinate, logit-normal times); only the data differ from the
CoTIR fine-tune. A further stage can continue from a prior's weights
(:func:`continuation_config`, ``--continue-from``), optionally starting some flows at the
reference image (an editing model that edits from the source). Photos held apart from
training (``PriorConfig.held_out``) measure how well the prior copies a reference it
never saw, through the same sampler the demo uses.

The weights are saved in diffusers' ``save_pretrained`` layout (``transformer/``, bf16
safetensors) with ``prior.json`` beside them: command, seed, data, steps, sha256 of
every file and the measured quality. The CoTIR fine-tune loads them through
:func:`models.backbones.load_transformer`, the path that loads FLUX.2 klein in the
full profile. Training is deterministic on a given CPU kind and thread count, and
resumes exactly from its state file, so ``make prior`` rebuilds the shipped weights bit
for bit (:func:`verify_prior` checks the digests).

    python -m models.prior --out models/demo_prior            # the shipped prior, both stages
    python -m models.prior --out /tmp/prior --first-stage-only --steps 200   # a quick smoke run
    python -m models.prior --out /tmp/more --continue-from models/demo_prior --steps 500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from cotir_pipeline.demo_photos import DEMO_PHOTOS, load_photo, photo_digest
from cotir_pipeline.digests import file_sha256
from models.variants import get_variant

#: The variant the prior is the base of.
PRIOR_VARIANT = "demo"
#: Where the shipped prior lives, inside the ``models`` package.
BUNDLED_PRIOR_DIR = Path(__file__).resolve().parent / "demo_prior"
#: The record written next to the weights.
RECORD_FILE = "prior.json"
#: The diffusers subfolder holding the transformer.
TRANSFORMER_DIR = "transformer"
#: Resumable training state (removed when the prior is finished).
STATE_FILE = ".prior-state.pt"
RECORD_FORMAT = "cotir-demo-prior/1"
#: Euler steps of the quality measurement (fixed, whatever the variant samples with).
PRIOR_EVAL_STEPS = 8
#: Steps of the shipped prior's second stage (128 px crops).
SECOND_STAGE_STEPS = 2000


class PriorIntegrityError(RuntimeError):
    """A prior folder's files do not match the sha256 digests its record lists."""


class PriorConfig(BaseModel):
    """Everything that determines the prior's weights (with the photos and library versions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: str = Field(default=PRIOR_VARIANT, description="Variant whose base this is.")
    steps: int = Field(default=16_000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(default=8, ge=1, description="Samples per step.")
    crop: int = Field(default=64, ge=16, description="Side of the square training crops.")
    scales: tuple[float, ...] = Field(
        default=(1.0, 0.75, 0.5), description="Photo scales crops are cut from."
    )
    lr: float = Field(default=2e-3, gt=0, description="Peak AdamW learning rate.")
    min_lr: float = Field(default=2e-5, ge=0, description="LR at the end of the cosine.")
    warmup_steps: int = Field(default=200, ge=0, description="Linear warm-up steps.")
    betas: tuple[float, float] = Field(default=(0.9, 0.99), description="Adam betas.")
    weight_decay: float = Field(default=0.0, ge=0, description="Decoupled weight decay.")
    grad_clip: float = Field(default=1.0, gt=0, description="Max global gradient norm.")
    copy_probability: float = Field(
        default=0.5, ge=0, le=1, description="Share of plain copies (the rest: global edits)."
    )
    reference_start_probability: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of samples whose flow starts at the reference instead of noise "
        "(the rest: the paper's noise start).",
    )
    edit_set: Literal["basic", "extended"] = Field(
        default="basic",
        description="basic: the five global edits of the shipped prior; extended: those plus "
        "seven more, four of them image-dependent corrections (auto levels, exposure, white "
        "balance) and three of texture and colour (EXTENDED_EDITS).",
    )
    parent: PriorConfig | None = Field(
        default=None, description="The prior this one continues training from (None: random init)."
    )
    parent_sha256: str | None = Field(
        default=None, description="Weights digest the parent is expected to have (shipped)."
    )
    held_out: tuple[str, ...] = Field(
        default=("kodak_i08", "rocket"),
        description="Train-split photos kept out of the prior's training, to measure it.",
    )
    eval_size: int = Field(default=128, ge=16, description="Side of the held-out crops.")
    eval_crops: int = Field(default=8, ge=1, description="Held-out crops measured.")
    seed: int = Field(default=0, ge=0, description="Seed of init, data and noise.")
    threads: int = Field(
        default=2, ge=1, description="torch threads (fixed: results depend on it)."
    )
    checkpoint_every: int = Field(default=500, ge=1, description="Steps between state saves.")
    log_every: int = Field(default=250, ge=1, description="Steps between progress lines.")

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then half a cosine from ``lr`` to ``min_lr`` at ``steps``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def digest(self) -> str:
        """sha256 of the config (a state file only resumes the same config).

        Fields added after the first shipped prior are left out while they hold their
        defaults, so records written before they existed keep their digests.
        """
        unset = {name for name, default in _LATER_FIELDS.items() if getattr(self, name) == default}
        return hashlib.sha256(self.model_dump_json(exclude=unset).encode()).hexdigest()

    def total_steps(self) -> int:
        """Optimizer steps of this stage and every stage before it."""
        return self.steps + (self.parent.total_steps() if self.parent is not None else 0)


#: Config fields added after the shipped prior's record was written, with their defaults.
_LATER_FIELDS: dict[str, Any] = {
    "reference_start_probability": 0.0,
    "edit_set": "basic",
    "parent": None,
    "parent_sha256": None,
}


#: sha256 of the first stage's weights as trained for the shipped prior (2026-12-07, the
#: project's 2-core VM, luma-chroma codec); a rebuild on another CPU kind may differ and is
#: used with a warning.
BASE_STAGE_SHA256 = "8e0e407a4e7bb7fdd968d4ac9d1a7858cc2c8b64e2ab83230df5811be375048f"


def base_stage_config() -> PriorConfig:
    """The shipped prior's first stage: 16,000 steps from random weights, 64 px crops."""
    return PriorConfig()


def shipped_config() -> PriorConfig:
    """The recipe of the shipped prior (``models/demo_prior``): two stages.

    The first (:func:`base_stage_config`) learns to copy and edit on 64 px crops. The
    second continues on 128 px crops, the size the demo benches and restores at: a
    prior trained only on 64 px crops copies 3 dB worse at 128 px (its attention
    spreads over four times as many reference tokens), and the second stage closes that.
    """
    return PriorConfig(
        steps=SECOND_STAGE_STEPS,
        crop=128,
        batch_size=4,
        lr=1e-3,
        warmup_steps=50,
        parent=base_stage_config(),
        parent_sha256=BASE_STAGE_SHA256,
    )


def continuation_config(parent_folder: Path, **changes: Any) -> PriorConfig:
    """A further stage that continues training the prior in ``parent_folder``.

    The parent's record supplies its config and weights digest; ``changes`` set this
    stage's own fields (steps, lr, ``reference_start_probability``...).
    """
    record = verify_prior(parent_folder)
    parent = PriorConfig(**record["config"])
    return parent.model_copy(
        update={**changes, "parent": parent, "parent_sha256": record["sha256"]}
    )


# -- edits --------------------------------------------------------------------------------------


def _luma(x01: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 * weights).sum(1, keepdim=True)


def _contrast(x01: torch.Tensor, factor: float) -> torch.Tensor:
    mean = _luma(x01).mean(dim=(1, 2, 3), keepdim=True)
    return (x01 - mean) * factor + mean


@dataclass(frozen=True)
class Edit:
    """A prompted global edit: instructions and the function on images in [0, 1]."""

    name: str
    prompts: tuple[str, ...]
    apply: Callable[[torch.Tensor], torch.Tensor]


COPY = Edit(
    "copy",
    (
        "Keep the image unchanged.",
        "Reproduce this photo exactly.",
        "Return the same image.",
        "Do not change anything.",
    ),
    lambda x: x,
)
EDITS: tuple[Edit, ...] = (
    Edit(
        "brighter",
        ("Make the image brighter.", "Brighten the photo.", "Increase the exposure."),
        lambda x: x.clamp(0, 1) ** (1 / 1.8),
    ),
    Edit(
        "darker",
        ("Make the image darker.", "Darken the photo.", "Lower the exposure."),
        lambda x: x.clamp(0, 1) ** 1.8,
    ),
    Edit(
        "more_contrast",
        ("Increase the contrast.", "Make the colors more vivid and contrasted."),
        lambda x: _contrast(x, 1.6),
    ),
    Edit(
        "less_contrast",
        ("Reduce the contrast.", "Make the image flatter and softer."),
        lambda x: _contrast(x, 0.6),
    ),
    Edit(
        "grayscale",
        ("Convert the photo to black and white.", "Remove the colors."),
        lambda x: _luma(x).expand(-1, 3, -1, -1),
    ),
)


def _auto_levels(x01: torch.Tensor) -> torch.Tensor:
    """Stretch each image's 1st-99th luma percentiles to the full range."""
    luma = _luma(x01).flatten(1)
    low = torch.quantile(luma, 0.01, dim=1).view(-1, 1, 1, 1)
    high = torch.quantile(luma, 0.99, dim=1).view(-1, 1, 1, 1)
    return (x01 - low) / (high - low).clamp(min=0.05)


def _auto_exposure(x01: torch.Tensor) -> torch.Tensor:
    """The gamma that brings each image's mean luma to 0.45."""
    mean = _luma(x01).mean(dim=(1, 2, 3), keepdim=True).clamp(0.02, 0.98)
    gamma = torch.log(torch.tensor(0.45)) / torch.log(mean)
    return x01.clamp(1e-4, 1) ** gamma


def _white_balance(x01: torch.Tensor) -> torch.Tensor:
    """Grey world: scale each channel so its mean equals the image's mean luma."""
    means = x01.mean(dim=(2, 3), keepdim=True).clamp(min=0.02)
    return x01 * (_luma(means) / means)


def _gaussian_blur(x01: torch.Tensor, sigma: float = 1.0, radius: int = 2) -> torch.Tensor:
    taps = torch.arange(-radius, radius + 1, dtype=x01.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    kernel2d = (kernel[:, None] * kernel[None, :]).expand(x01.shape[1], 1, -1, -1)
    padded = F.pad(x01, (radius, radius, radius, radius), mode="reflect")
    return F.conv2d(padded, kernel2d, groups=x01.shape[1])


def _saturate(x01: torch.Tensor, factor: float = 1.5) -> torch.Tensor:
    luma = _luma(x01)
    return luma + factor * (x01 - luma)


#: The extended set's further edits (``PriorConfig.edit_set = "extended"``): corrections
#: whose amount depends on the image, the kind of instruction-following a restoration
#: fine-tune can build on, and texture and colour edits.
EXTENDED_EDITS: tuple[Edit, ...] = (
    Edit(
        "auto_levels",
        (
            "Stretch the contrast to the full range.",
            "Apply auto levels.",
            "Make the darkest parts black and the brightest parts white.",
        ),
        _auto_levels,
    ),
    Edit(
        "auto_exposure",
        (
            "Correct the exposure.",
            "Fix the brightness of the photo.",
            "Give the photo a natural exposure.",
        ),
        _auto_exposure,
    ),
    Edit(
        "white_balance",
        ("Fix the white balance.", "Remove the color cast.", "Make the colors neutral."),
        _white_balance,
    ),
    Edit(
        "much_brighter",
        ("Make the image much brighter.", "Strongly brighten this dark photo."),
        lambda x: x.clamp(0, 1) ** (1 / 2.6),
    ),
    Edit(
        "sharpen",
        ("Sharpen the image.", "Make the details crisper."),
        lambda x: x + (x - _gaussian_blur(x)),
    ),
    Edit(
        "smooth",
        ("Smooth the image.", "Soften the fine details.", "Reduce the grain."),
        _gaussian_blur,
    ),
    Edit("saturate", ("Make the colors more saturated.", "Boost the colors."), _saturate),
)


def edits_for(config: PriorConfig) -> tuple[Edit, ...]:
    """The prompted edits (besides the copy) a config trains with."""
    return EDITS + EXTENDED_EDITS if config.edit_set == "extended" else EDITS


def all_prompts(config: PriorConfig) -> list[str]:
    """Every instruction a prior of ``config`` is trained with."""
    return [prompt for edit in (COPY, *edits_for(config)) for prompt in edit.prompts]


# -- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriorPhotos:
    """The photo pyramid crops are cut from, and the held-out evaluation crops."""

    train: tuple[torch.Tensor, ...]
    evaluation: torch.Tensor
    train_ids: tuple[str, ...]
    held_out_ids: tuple[str, ...]
    digests: Mapping[str, str]


def _to_unit(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


def load_prior_photos(config: PriorConfig) -> PriorPhotos:
    """Train-split demo photos (never the bench's), at every scale; held-out eval crops."""

    known = {photo.photo_id for photo in DEMO_PHOTOS if photo.split == "train"}
    unknown = sorted(set(config.held_out) - known)
    if unknown:
        raise ValueError(f"held_out names photos that are not train-split demo photos: {unknown}")
    train: list[torch.Tensor] = []
    train_ids: list[str] = []
    evaluation: list[torch.Tensor] = []
    digests: dict[str, str] = {}
    generator = torch.Generator().manual_seed(config.seed + 1)
    for photo in DEMO_PHOTOS:
        if photo.split != "train":
            continue
        image = _to_unit(load_photo(photo))
        digests[photo.photo_id] = photo_digest(photo)
        if photo.photo_id in config.held_out:
            evaluation.append(image)
            continue
        train_ids.append(photo.photo_id)
        for scale in config.scales:
            size = (round(image.shape[2] * scale), round(image.shape[3] * scale))
            if min(size) < config.crop:
                continue
            scaled = (
                image
                if scale == 1.0
                else F.interpolate(
                    image, size=size, mode="bilinear", antialias=True, align_corners=False
                )
            )
            train.append(scaled[0])
    crops = []
    for index in range(config.eval_crops):
        image = evaluation[index % len(evaluation)][0]
        crops.append(_random_crop(image, config.eval_size, generator))
    return PriorPhotos(
        train=tuple(train),
        evaluation=torch.stack(crops),
        train_ids=tuple(train_ids),
        held_out_ids=tuple(config.held_out),
        digests=digests,
    )


def _random_crop(image: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    _, height, width = image.shape
    top = int(torch.randint(height - size + 1, (1,), generator=generator))
    left = int(torch.randint(width - size + 1, (1,), generator=generator))
    return image[:, top : top + size, left : left + size]


def draw_batch(
    photos: PriorPhotos, config: PriorConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Reference and target crops in [-1, 1] and the instruction of each sample."""
    references, targets, prompts = [], [], []
    edits = edits_for(config)
    for _ in range(config.batch_size):
        image = photos.train[int(torch.randint(len(photos.train), (1,), generator=generator))]
        crop = _random_crop(image, config.crop, generator)
        if bool(torch.rand(1, generator=generator) < 0.5):
            crop = crop.flip(-1)
        if float(torch.rand(1, generator=generator)) < config.copy_probability:
            edit = COPY
        else:
            edit = edits[int(torch.randint(len(edits), (1,), generator=generator))]
        prompt = edit.prompts[int(torch.randint(len(edit.prompts), (1,), generator=generator))]
        target = edit.apply(crop.unsqueeze(0))[0].clamp(0, 1)
        references.append(crop)
        targets.append(target)
        prompts.append(prompt)
    return torch.stack(references) * 2 - 1, torch.stack(targets) * 2 - 1, prompts


# -- model --------------------------------------------------------------------------------------


@dataclass
class PriorParts:
    """The transformer being trained and the frozen pieces around it."""

    transformer: torch.nn.Module
    codec: Any
    text_encoder: Any
    prompt_features: dict[str, torch.Tensor]


def build_parts(config: PriorConfig) -> PriorParts:
    """A freshly initialised demo transformer (seeded), its weightless codec and text encoder."""
    from models.backbones import build_transformer
    from models.text_encoders import MiniLMTextEncoder

    variant = get_variant(config.variant)
    torch.manual_seed(config.seed)
    transformer = build_transformer(variant.backbone, variant.transformer_config).train()
    codec = codec_for(config.variant)
    text_encoder = MiniLMTextEncoder.from_folder().eval()
    features = {
        prompt: text_encoder.encode([prompt], variant.max_text_tokens).embeds.float()
        for prompt in all_prompts(config)
    }
    return PriorParts(transformer, codec, text_encoder, features)


def _token_ids(variant_name: str, grid: int, text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    from models.backbones import noisy_and_reference_ids, text_ids

    kind = get_variant(variant_name).backbone
    return noisy_and_reference_ids(kind, grid, grid), text_ids(kind, text_length)


def prior_loss(
    parts: PriorParts,
    config: PriorConfig,
    references: torch.Tensor,
    targets: torch.Tensor,
    prompts: Sequence[str],
    generator: torch.Generator,
) -> torch.Tensor:
    """Flow matching to the target, the reference as FLUX.2 reference tokens.

    The flow starts at Gaussian noise (the paper's objective) or, for a
    ``reference_start_probability`` share of the samples, at the reference tokens.
    """
    from models.backbones import grid_to_tokens
    from models.losses import flow_matching_loss, interpolate, sample_timesteps, velocity_target

    clean = grid_to_tokens(parts.codec.encode(targets))
    reference = grid_to_tokens(parts.codec.encode(references))
    t = sample_timesteps(clean.shape[0], generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    if config.reference_start_probability > 0:
        # Drawn only when used, so a noise-only config keeps its random stream (and bytes).
        from_reference = torch.rand(clean.shape[0], generator=generator)
        from_reference = (from_reference < config.reference_start_probability).view(-1, 1, 1)
        noise = torch.where(from_reference, reference, noise)
    text = torch.cat([parts.prompt_features[prompt] for prompt in prompts])
    grid = config.crop // parts.codec.stride
    prediction = predict_velocity(
        parts.transformer, config.variant, interpolate(clean, noise, t), reference, text, t, grid
    )
    return flow_matching_loss(prediction, velocity_target(clean, noise))


def predict_velocity(
    transformer: torch.nn.Module,
    variant_name: str,
    noisy: torch.Tensor,
    reference: torch.Tensor,
    text: torch.Tensor,
    t: torch.Tensor,
    grid: int,
) -> torch.Tensor:
    """The prior's velocity for the noisy tokens of a ``grid`` x ``grid`` image, the
    reference image's tokens appended as FLUX.2 reference tokens (training and diagnosis
    share it, so both see the same token layout and positions)."""
    ids, txt_ids = _token_ids(variant_name, grid, text.shape[1])
    prediction = transformer(
        hidden_states=torch.cat([noisy, reference], dim=1),
        encoder_hidden_states=text,
        timestep=t,
        img_ids=ids,
        txt_ids=txt_ids,
        guidance=None,
        return_dict=False,
    )[0]
    return prediction[:, : noisy.shape[1]]


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of tensors in [0, 1] (uint8-quantised, as saved images are)."""
    output = (output.clamp(0, 1) * 255).round() / 255
    target = (target.clamp(0, 1) * 255).round() / 255
    mse = (output - target).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def measure_prior(
    transformer: torch.nn.Module,
    text_encoder: Any,
    images01: torch.Tensor,
    *,
    variant_name: str = PRIOR_VARIANT,
    steps: int = PRIOR_EVAL_STEPS,
    flow_start: str = "noise",
    edits: tuple[Edit, ...] = EDITS,
) -> dict[str, float]:
    """Copy and edit PSNR on ``images01`` through the demo's own restore path (seed 42).

    ``flow_start`` is where the sampler starts: Gaussian noise, or the reference image.
    """

    from models.backbones import CoTIRTransformer
    from models.restore import CoTIRRestorer

    variant = get_variant(variant_name)
    was_training = transformer.training
    model = CoTIRTransformer.with_new_adapter(
        transformer.eval(), text_dim=variant.text_dim, adapter_depth=variant.adapter_depth
    )
    restorer = CoTIRRestorer(variant, model, codec_for(variant_name), text_encoder, device="cpu")
    restorer.flow_start = flow_start
    results: dict[str, float] = {}
    for edit in (COPY, *edits):
        targets = edit.apply(images01).clamp(0, 1)
        scores = []
        for image, target in zip(images01, targets, strict=True):
            array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out = restorer.restore(Image.fromarray(array), edit.prompts[0], steps)
            restored = torch.from_numpy(np.array(out)).permute(2, 0, 1).float() / 255
            scores.append(float(psnr(restored.unsqueeze(0), target.unsqueeze(0))[0]))
        results[edit.name] = float(np.mean(scores))
    model.remove_hooks()
    transformer.train(was_training)
    return results


def codec_for(variant_name: str) -> Any:
    """The demo variant's weightless codec (the prior, its diagnosis and benchmarks share it)."""
    from models.codecs import weightless_codec

    variant = get_variant(variant_name)
    return weightless_codec(variant.codec, variant.token_stride)


# -- files --------------------------------------------------------------------------------------


def weight_files(folder: Path) -> dict[str, str]:
    """sha256 of every file of the prior's ``transformer/`` folder, by relative path."""
    root = Path(folder) / TRANSFORMER_DIR
    return {
        path.relative_to(folder).as_posix(): file_sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def prior_digest(files: Mapping[str, str]) -> str:
    """One sha256 over the (path, digest) list: the prior's identity."""
    text = "".join(f"{name}\0{digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def read_record(folder: Path) -> dict[str, Any]:
    """The prior's ``prior.json``; a clear error when the folder holds no prior."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: not a demo prior folder (build one with `make prior`)"
        )
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("format") != RECORD_FORMAT:
        raise PriorIntegrityError(f"{path}: not a demo prior record ({record.get('format')!r})")
    return record


def verify_prior(folder: Path) -> dict[str, Any]:
    """Check every weight file against the record's sha256; return the record."""
    folder = Path(folder)
    record = read_record(folder)
    expected = record.get("files", {})
    actual = weight_files(folder)
    if actual != expected:
        changed = sorted(
            name for name in set(actual) | set(expected) if actual.get(name) != expected.get(name)
        )
        raise PriorIntegrityError(
            f"{folder}: files differ from {RECORD_FILE}: {', '.join(changed)} (rebuild with "
            "`make prior`, or restore the shipped files with git)"
        )
    if prior_digest(actual) != record.get("sha256"):
        raise PriorIntegrityError(f"{folder}: the combined sha256 does not match {RECORD_FILE}")
    return record


# -- training -----------------------------------------------------------------------------------


def _save_state(
    path: Path,
    step: int,
    parts: PriorParts,
    optimizer: Any,
    generator: Any,
    config: PriorConfig,
    log: list[dict[str, Any]],
) -> None:
    temporary = path.with_suffix(".partial")
    torch.save(
        {
            "config_digest": config.digest(),
            "step": step,
            "model": parts.transformer.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "log": log,
        },
        temporary,
    )
    os.replace(temporary, path)


def default_parent_dir(out: Path) -> Path:
    """Where a stage's parent prior is built: a sibling folder, ``<out>-parent``."""
    out = Path(out)
    return out.parent / f"{out.name}-parent"


def ensure_parent(
    config: PriorConfig,
    parent_dir: Path,
    *,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The record of ``config.parent`` in ``parent_dir``, training it there when missing.

    A folder whose weights have ``config.parent_sha256``, or whose record was made with
    the parent's config, is used as it is; otherwise the parent is trained (resumably)
    with :func:`train_prior`. A rebuilt parent whose digest differs from the expected
    one (another CPU kind or library version) is used with a warning.
    """
    if config.parent is None:
        raise ValueError("this prior config has no parent stage")
    parent_dir = Path(parent_dir)
    record: dict[str, Any] | None = None
    try:
        found = verify_prior(parent_dir)
    except (FileNotFoundError, PriorIntegrityError) as error:
        print_fn(f"no usable parent prior in {parent_dir} ({error})")
    else:
        if found.get("sha256") == config.parent_sha256 or (
            found.get("config_sha256") == config.parent.digest()
        ):
            record = found
    if record is None:
        print_fn(f"training the parent stage into {parent_dir} ({config.parent.steps} steps)")
        record = train_prior(
            config.parent,
            parent_dir,
            command=f"parent stage of {config.digest()[:12]}",
            print_fn=print_fn,
        )
        if record is None:  # pragma: no cover - train_prior only stops early when asked
            raise RuntimeError(f"the parent stage in {parent_dir} did not finish")
    if config.parent_sha256 is not None and record["sha256"] != config.parent_sha256:
        print_fn(
            f"warning: the parent prior in {parent_dir} has sha256 {record['sha256'][:16]}..., "
            f"not the expected {config.parent_sha256[:16]}... (another CPU kind or library "
            "version rounds differently); continuing from it"
        )
    return record


def _load_parent_weights(transformer: torch.nn.Module, parent_dir: Path) -> None:
    loaded = type(transformer).from_pretrained(
        str(Path(parent_dir) / TRANSFORMER_DIR), torch_dtype=torch.float32, local_files_only=True
    )
    transformer.load_state_dict(loaded.state_dict())


def _ship_prior(
    config: PriorConfig,
    out: Path,
    parts: PriorParts,
    photos: PriorPhotos,
    *,
    command: str,
    parent_record: dict[str, Any] | None,
    log: list[dict[str, Any]],
    elapsed: float,
    print_fn: Callable[[str], None],
) -> dict[str, Any]:
    """Save the trained prior as bf16 ``save_pretrained`` weights, measure the saved copy
    (from noise and from the reference) and write its record; the record."""
    transformer = parts.transformer.eval().to(torch.bfloat16)
    transformer.save_pretrained(str(out / TRANSFORMER_DIR), safe_serialization=True)
    shipped = type(transformer).from_pretrained(
        str(out / TRANSFORMER_DIR), torch_dtype=torch.float32, local_files_only=True
    )
    quality = measure_prior(
        shipped,
        parts.text_encoder,
        photos.evaluation * 1.0,
        variant_name=config.variant,
        edits=edits_for(config),
    )
    quality_reference_start = measure_prior(
        shipped,
        parts.text_encoder,
        photos.evaluation * 1.0,
        variant_name=config.variant,
        flow_start="reference",
        edits=edits_for(config),
    )
    files = weight_files(out)
    record = _prior_record(
        config,
        command=command,
        photos=photos,
        quality={"psnr": quality, "psnr_reference_start": quality_reference_start},
        parent_record=parent_record,
        log=log,
        parameters=sum(p.numel() for p in transformer.parameters()),
        elapsed=elapsed,
        files=files,
    )
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print_fn(
        f"prior written to {out}: sha256 {record['sha256'][:16]}..., noise start: "
        + ", ".join(f"{name} {value:.2f} dB" for name, value in quality.items())
        + "; reference start: "
        + ", ".join(f"{name} {value:.2f} dB" for name, value in quality_reference_start.items())
    )
    return record


def train_prior(
    config: PriorConfig,
    out: Path,
    *,
    command: str = "",
    print_fn: Callable[[str], None] = print,
    stop_after: int | None = None,
    parent_dir: Path | None = None,
) -> dict[str, Any] | None:
    """Train the prior into ``out`` (resuming ``out/.prior-state.pt``); return its record.

    A config with a ``parent`` stage first gets that stage's weights from ``parent_dir``
    (default ``<out>-parent``; trained there when missing) and continues from them.
    ``stop_after`` saves the state after that many steps and returns None (an
    interruption, for tests); a later call resumes exactly where it stopped.
    """

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parent_record: dict[str, Any] | None = None
    if config.parent is not None:
        parent_dir = Path(parent_dir) if parent_dir is not None else default_parent_dir(out)
        parent_record = ensure_parent(config, parent_dir, print_fn=print_fn)
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    photos = load_prior_photos(config)
    parts = build_parts(config)
    if parent_dir is not None and parent_record is not None:
        _load_parent_weights(parts.transformer, parent_dir)
    optimizer = torch.optim.AdamW(
        parts.transformer.parameters(),
        lr=config.lr,
        betas=config.betas,
        weight_decay=config.weight_decay,
    )
    generator = torch.Generator().manual_seed(config.seed)
    state_path = out / STATE_FILE
    step, log = _resume_prior(state_path, config, parts, optimizer, generator, print_fn)
    started = time.perf_counter()
    window: list[float] = []
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        references, targets, prompts = draw_batch(photos, config, generator)
        loss = prior_loss(parts, config, references, targets, prompts, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parts.transformer.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        window.append(loss.item())
        if step % config.log_every == 0 or step == config.steps:
            entry = {"step": step, "loss": float(np.mean(window)), "lr": config.lr_at(step - 1)}
            window = []
            log.append(entry)
            print_fn(
                f"prior step {step}/{config.steps}: loss {entry['loss']:.4f} "
                f"lr {entry['lr']:.2e} ({time.perf_counter() - started:.0f} s)"
            )
        if (step % config.checkpoint_every == 0 and step < config.steps) or step == stop_after:
            _save_state(state_path, step, parts, optimizer, generator, config, log)
        if step == stop_after and step < config.steps:
            print_fn(f"stopped after step {step}; the state is in {state_path}")
            return None
    elapsed = time.perf_counter() - started
    record = _ship_prior(
        config,
        out,
        parts,
        photos,
        command=command,
        parent_record=parent_record,
        log=log,
        elapsed=elapsed,
        print_fn=print_fn,
    )
    state_path.unlink(missing_ok=True)
    return record


def _resume_prior(
    state_path: Path,
    config: PriorConfig,
    parts: Any,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    print_fn: Callable[[str], None],
) -> tuple[int, list[dict[str, Any]]]:
    """Load an interrupted run's state of the same config: (step, loss log); (0, []) else."""
    if not state_path.is_file():
        return 0, []
    state = torch.load(state_path, weights_only=False)
    if state.get("config_digest") != config.digest():
        print_fn(f"{state_path} belongs to another config; starting afresh")
        return 0, []
    parts.transformer.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    step = int(state["step"])
    print_fn(f"resuming the prior at step {step} from {state_path}")
    return step, list(state.get("log", []))


def _prior_record(
    config: PriorConfig,
    *,
    command: str,
    photos: Any,
    quality: dict[str, Any],
    parent_record: dict[str, Any] | None,
    log: list[dict[str, Any]],
    parameters: int,
    elapsed: float,
    files: dict[str, Any],
) -> dict[str, Any]:
    """prior.json: the command, config, data, objective, measured quality, parent stage,
    loss log, environment and the sha256 of every file."""
    from diffusers import __version__ as diffusers_version

    variant = get_variant(config.variant)
    return {
        "format": RECORD_FORMAT,
        "variant": config.variant,
        "command": command,
        "config": json.loads(config.model_dump_json()),
        "config_sha256": config.digest(),
        "codec": {
            "kind": variant.codec.value,
            "stride": variant.token_stride,
            "token_channels": variant.transformer_config["in_channels"],
        },
        "steps": config.steps,
        "seed": config.seed,
        "data": {
            "train_photos": list(photos.train_ids),
            "held_out_photos": list(photos.held_out_ids),
            "photo_sha256": dict(photos.digests),
            "note": "demo train-split photos only; the bench photos are never used",
        },
        "objective": {
            "copy_probability": config.copy_probability,
            "reference_start_probability": config.reference_start_probability,
            "edit_set": config.edit_set,
            "edits": {edit.name: list(edit.prompts) for edit in (COPY, *edits_for(config))},
        },
        "quality": {
            "what": f"PSNR (dB) of the bf16 weights on {config.eval_crops} held-out "
            f"{config.eval_size}px crops, {PRIOR_EVAL_STEPS} Euler steps, seed 42; psnr: the "
            "flow started at noise (the paper's sampler), psnr_reference_start: started at "
            "the reference image",
            **quality,
        },
        "parent": None
        if parent_record is None
        else {
            "sha256": parent_record["sha256"],
            "expected_sha256": config.parent_sha256,
            "config_sha256": parent_record.get("config_sha256"),
            "steps": parent_record.get("steps"),
            "total_steps": parent_record.get("total_steps", parent_record.get("steps")),
            "training_seconds": parent_record.get("training_seconds"),
            "quality": parent_record.get("quality"),
        },
        "total_steps": config.total_steps(),
        "log": log,
        "parameters": parameters,
        "training_seconds": round(elapsed, 1),
        "environment": {
            "torch": torch.__version__,
            "diffusers": diffusers_version,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": config.threads,
        },
        "files": files,
        "sha256": prior_digest(files),
    }


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m models.prior`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m models.prior",
        description="Pretrain the demo's editing prior (the demo stand-in for FLUX.2 klein).",
    )
    parser.add_argument("--out", type=Path, default=BUNDLED_PRIOR_DIR, help="Output folder.")
    parser.add_argument(
        "--continue-from",
        type=Path,
        help="Train a further stage from this prior folder's weights (checked against its "
        "record) instead of from random weights.",
    )
    parser.add_argument("--steps", type=int, help="Optimizer steps (default: the recipe's).")
    parser.add_argument("--lr", type=float, help="Peak learning rate (default: the recipe's).")
    parser.add_argument(
        "--crop",
        type=int,
        help="Side of the square training crops in pixels (default: the recipe's).",
    )
    parser.add_argument("--batch-size", type=int, help="Samples per step (default: the recipe's).")
    parser.add_argument(
        "--copy-probability",
        type=float,
        help="Share of plain copies among the samples (default: the recipe's 0.5).",
    )
    parser.add_argument("--warmup-steps", type=int, help="Warm-up steps (default: the recipe's).")
    parser.add_argument(
        "--reference-start-probability",
        type=float,
        help="Share of flows started at the reference image instead of noise (default 0).",
    )
    parser.add_argument(
        "--edit-set",
        choices=["basic", "extended"],
        help="The prompted edits: basic (the shipped prior's five, default) or extended "
        "(twelve, with image-dependent corrections).",
    )
    parser.add_argument("--seed", type=int, help="Seed (default 0).")
    parser.add_argument(
        "--first-stage-only",
        action="store_true",
        help="Train only the first stage's recipe (from random weights, 64 px crops) instead "
        "of the shipped two-stage recipe.",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        help="After training, compare the weights with this prior folder's record (exit 1 if "
        "they differ): `make prior` checks the shipped prior is reproduced bit for bit.",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[PriorConfig, Path | None]:
    """The config a command line trains, and the folder of its parent stage (None: the
    default ``<out>-parent``, trained there when missing)."""
    options = {
        "steps": args.steps,
        "lr": args.lr,
        "crop": args.crop,
        "batch_size": args.batch_size,
        "copy_probability": args.copy_probability,
        "warmup_steps": args.warmup_steps,
        "reference_start_probability": args.reference_start_probability,
        "edit_set": args.edit_set,
        "seed": args.seed,
    }
    changes = {name: value for name, value in options.items() if value is not None}
    if args.continue_from is not None:
        return continuation_config(args.continue_from, **changes), args.continue_from
    recipe = base_stage_config() if args.first_stage_only else shipped_config()
    return PriorConfig(**{**recipe.model_dump(), **changes}), None


def main(argv: Sequence[str] | None = None) -> int:
    """Train a prior; optionally compare it with another (the shipped one)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.first_stage_only and args.continue_from is not None:
        parser.error("--first-stage-only trains from random weights; drop --continue-from")
    config, parent_dir = config_from_args(args)
    command = "python -m models.prior " + " ".join(sys.argv[1:] if argv is None else argv)
    record = train_prior(config, args.out, command=command.strip(), parent_dir=parent_dir)
    if record is None:
        return 1
    if args.compare is not None:
        reference = read_record(args.compare)
        same = reference.get("sha256") == record["sha256"]
        print(
            f"{'identical to' if same else 'DIFFERS from'} {args.compare}: "
            f"{record['sha256']} vs {reference.get('sha256')}"
        )
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
