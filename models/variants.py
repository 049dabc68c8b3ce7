"""CoTIR variants as data, and their parameter counts measured on the meta device.

A :class:`Variant` names everything that differs between CoTIR-12B, -4B, -9B and the
demo ``tiny``: the diffusers transformer class and config, the text encoder and its
width D, the adapter depth S, the LoRA rank, the sampler (steps, schedule, guidance),
the image codec, the default image size and where the base weights live under
``COTIR_WEIGHTS_DIR``.

``python -m models.variants`` prints the parameter table of docs/MODEL.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from models.kinds import BackboneKind

#: FLUX.1 Kontext's guidance-embedding value, in training and at inference: the public
#: release feeds 4 to CoTIR-12B in both (docs/MODEL.md). ``tiny-kontext``, the toy of the
#: 12B's Kontext path, uses the same value.
KONTEXT_GUIDANCE = 4.0


class TextEncoderKind(StrEnum):
    """Which text encoder produces prompts and CoT targets."""

    T5_CLIP = "t5-xxl+clip-l"
    QWEN3 = "qwen3"
    MINILM = "all-minilm-l6-v2"


class CodecKind(StrEnum):
    """Which image codec maps pixels to token grids (see :mod:`models.codecs`)."""

    FLUX1_VAE = "flux1-vae"
    FLUX2_VAE = "flux2-vae"
    PIXEL = "pixel-unshuffle"
    LUMA_CHROMA = "luma-chroma-420"

    @property
    def weightless(self) -> bool:
        """True for the demo-only pixel codecs (no weights; exportable to ONNX)."""
        return self in (CodecKind.PIXEL, CodecKind.LUMA_CHROMA)


@dataclass(frozen=True)
class Variant:
    """Everything that defines one CoTIR variant."""

    name: str
    backbone: BackboneKind
    transformer_config: Mapping[str, Any]
    text_encoder: TextEncoderKind
    text_dim: int
    codec: CodecKind
    steps: int
    adapter_depth: int = 6
    lora_rank: int = 96
    image_size: int = 512
    max_text_tokens: int = 512
    #: Value fed to FLUX.1's guidance embedding (no CFG is run); None for FLUX.2 klein.
    guidance: float | None = None
    #: FLUX.1 shifted schedule (base shift, max shift over 256..4096 image tokens).
    base_shift: float = 0.5
    max_shift: float = 1.15
    #: Base diffusers pipeline folder under COTIR_WEIGHTS_DIR; None: none needed there.
    weights_folder: str | None = None
    #: Base pipeline folder shipped inside the ``models`` package (the demo prior), if any.
    bundled_base: str | None = None
    #: Pixels per token side of the codec (16 for the FLUX VAEs).
    token_stride: int = 16
    #: Paper's total parameter count in billions (the CoTIR paper and its public release), if any.
    paper_params_b: float | None = None
    description: str = ""
    text_layers: tuple[int, ...] = field(default=())

    @property
    def schedule(self) -> str:
        """``flux1`` (shift linear in sequence length) or ``flux2`` (empirical mu)."""
        return "flux1" if self.backbone is BackboneKind.FLUX1_KONTEXT else "flux2"

    @property
    def is_demo(self) -> bool:
        """True for the CPU demo variants (no base weights under COTIR_WEIGHTS_DIR needed)."""
        return self.weights_folder is None

    @property
    def exports_to_onnx(self) -> bool:
        """True where ``cotir export-onnx`` covers the variant: the CPU demo variants, with
        a weightless pixel codec and the MiniLM text encoder (the FLUX VAEs and text encoders are
        for GPUs)."""
        return (
            self.is_demo and self.codec.weightless and self.text_encoder is TextEncoderKind.MINILM
        )

    @property
    def builds_in_code(self) -> bool:
        """True for the random test toys (``tiny``): no base weights at all."""
        return self.weights_folder is None and self.bundled_base is None


def _frozen(config: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(config)


VARIANTS: dict[str, Variant] = {
    "cotir-12b": Variant(
        name="cotir-12b",
        backbone=BackboneKind.FLUX1_KONTEXT,
        transformer_config=_frozen(
            {
                "patch_size": 1,
                "in_channels": 64,
                "num_layers": 19,
                "num_single_layers": 38,
                "attention_head_dim": 128,
                "num_attention_heads": 24,
                "joint_attention_dim": 4096,
                "pooled_projection_dim": 768,
                "guidance_embeds": True,
                "axes_dims_rope": (16, 56, 56),
            }
        ),
        text_encoder=TextEncoderKind.T5_CLIP,
        text_dim=4096,
        codec=CodecKind.FLUX1_VAE,
        steps=20,
        guidance=KONTEXT_GUIDANCE,
        weights_folder="FLUX.1-Kontext-dev",
        paper_params_b=13.47,
        description="FLUX.1 Kontext dev + CoT adapter (T5-XXL targets)",
    ),
    "cotir-4b": Variant(
        name="cotir-4b",
        backbone=BackboneKind.FLUX2_KLEIN,
        transformer_config=_frozen(
            {
                "patch_size": 1,
                "in_channels": 128,
                "num_layers": 5,
                "num_single_layers": 20,
                "attention_head_dim": 128,
                "num_attention_heads": 24,
                "joint_attention_dim": 7680,
                "timestep_guidance_channels": 256,
                "mlp_ratio": 3.0,
                "axes_dims_rope": (32, 32, 32, 32),
                "rope_theta": 2000,
                "eps": 1e-6,
                "guidance_embeds": False,
            }
        ),
        text_encoder=TextEncoderKind.QWEN3,
        text_dim=7680,
        text_layers=(9, 18, 27),
        codec=CodecKind.FLUX2_VAE,
        steps=5,
        weights_folder="FLUX.2-klein-4B",
        paper_params_b=4.98,
        description="FLUX.2 klein 4B + CoT adapter (Qwen3-4B layers 9/18/27 targets)",
    ),
    "cotir-9b": Variant(
        name="cotir-9b",
        backbone=BackboneKind.FLUX2_KLEIN,
        transformer_config=_frozen(
            {
                "patch_size": 1,
                "in_channels": 128,
                "num_layers": 8,
                "num_single_layers": 24,
                "attention_head_dim": 128,
                "num_attention_heads": 32,
                "joint_attention_dim": 12288,
                "timestep_guidance_channels": 256,
                "mlp_ratio": 3.0,
                "axes_dims_rope": (32, 32, 32, 32),
                "rope_theta": 2000,
                "eps": 1e-6,
                "guidance_embeds": False,
            }
        ),
        text_encoder=TextEncoderKind.QWEN3,
        text_dim=12288,
        text_layers=(9, 18, 27),
        codec=CodecKind.FLUX2_VAE,
        steps=5,
        weights_folder="FLUX.2-klein-9B",
        paper_params_b=11.05,
        description="FLUX.2 klein 9B + CoT adapter (Qwen3-8B layers 9/18/27 targets)",
    ),
    "tiny": Variant(
        name="tiny",
        backbone=BackboneKind.FLUX2_KLEIN,
        transformer_config=_frozen(
            {
                "patch_size": 1,
                "in_channels": 768,
                "num_layers": 2,
                "num_single_layers": 2,
                "attention_head_dim": 32,
                "num_attention_heads": 2,
                "joint_attention_dim": 384,
                "timestep_guidance_channels": 64,
                "mlp_ratio": 3.0,
                "axes_dims_rope": (8, 8, 8, 8),
                "rope_theta": 2000,
                "eps": 1e-6,
                "guidance_embeds": False,
            }
        ),
        text_encoder=TextEncoderKind.MINILM,
        text_dim=384,
        codec=CodecKind.PIXEL,
        steps=4,
        adapter_depth=2,
        lora_rank=8,
        image_size=64,
        max_text_tokens=64,
        description="demo only: FLUX.2-architecture toy (width 64), pixel-unshuffle codec, "
        "all-MiniLM-L6-v2 text features, random weights",
    ),
    "demo": Variant(
        name="demo",
        backbone=BackboneKind.FLUX2_KLEIN,
        transformer_config=_frozen(
            {
                "patch_size": 1,
                "in_channels": 96,
                "num_layers": 1,
                "num_single_layers": 3,
                "attention_head_dim": 32,
                "num_attention_heads": 6,
                "joint_attention_dim": 384,
                "timestep_guidance_channels": 64,
                "mlp_ratio": 3.0,
                "axes_dims_rope": (4, 12, 12, 4),
                "rope_theta": 100,
                "eps": 1e-6,
                "guidance_embeds": False,
            }
        ),
        text_encoder=TextEncoderKind.MINILM,
        text_dim=384,
        codec=CodecKind.LUMA_CHROMA,
        token_stride=8,
        steps=4,
        adapter_depth=2,
        lora_rank=32,
        image_size=128,
        max_text_tokens=64,
        bundled_base="demo_prior",
        description="demo only: a 3.2M-parameter FLUX.2-architecture editing prior pretrained "
        "on the demo train photos (shipped in models/demo_prior); 8x8-pixel tokens of 96 "
        "numbers: brightness at full resolution, colour at half",
    ),
    "tiny-kontext": Variant(
        name="tiny-kontext",
        backbone=BackboneKind.FLUX1_KONTEXT,
        transformer_config=_frozen(
            {
                "patch_size": 1,
                "in_channels": 768,
                "num_layers": 2,
                "num_single_layers": 2,
                "attention_head_dim": 16,
                "num_attention_heads": 4,
                "joint_attention_dim": 384,
                "pooled_projection_dim": 384,
                "guidance_embeds": True,
                "axes_dims_rope": (4, 6, 6),
            }
        ),
        text_encoder=TextEncoderKind.MINILM,
        text_dim=384,
        codec=CodecKind.PIXEL,
        steps=4,
        adapter_depth=2,
        lora_rank=8,
        image_size=64,
        max_text_tokens=64,
        guidance=KONTEXT_GUIDANCE,
        description="demo only: the tiny toy on the FLUX.1 Kontext architecture",
    ),
}

#: The released sizes, in the paper's order.
FULL_SIZE_VARIANTS = ("cotir-12b", "cotir-4b", "cotir-9b")


def get_variant(name: str) -> Variant:
    """Look a variant up by name; unknown names raise ``KeyError`` listing the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of one variant: backbone, adapter, LoRA, and the trainable part."""

    variant: str
    backbone: int
    adapter: int
    lora: int
    paper_total_b: float | None

    @property
    def total(self) -> int:
        """Backbone + adapter + LoRA (text encoders and VAE not counted)."""
        return self.backbone + self.adapter + self.lora

    @property
    def trainable(self) -> int:
        """Adapter + LoRA."""
        return self.adapter + self.lora


def count_parameters(name: str) -> ParameterCount:
    """Instantiate ``name`` on the meta device (no memory, no weights) with LoRA and count."""
    from models.backbones import CoTIRTransformer
    from models.lora import apply_lora, trainable_report

    variant = get_variant(name)
    model = CoTIRTransformer.from_variant(variant, device="meta")
    backbone = sum(p.numel() for p in model.transformer.parameters())
    apply_lora(model, variant.lora_rank)
    report = trainable_report(model)
    if report.counts.get("other", 0):
        raise RuntimeError(f"{name}: parameters outside adapter and LoRA are trainable")
    lora = report.counts.get("lora", 0)
    return ParameterCount(
        variant=name,
        backbone=backbone,
        adapter=report.counts.get("adapter", 0),
        lora=lora,
        paper_total_b=variant.paper_params_b,
    )


def format_parameter_table(rows: list[ParameterCount]) -> str:
    """Markdown table of exact counts and billions, next to the paper's totals."""
    lines = [
        "| variant | backbone | adapter | LoRA | total | trainable | total (B) | paper (B) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        paper = "" if row.paper_total_b is None else f"{row.paper_total_b:.2f}"
        lines.append(
            f"| {row.variant} | {row.backbone:,d} | {row.adapter:,d} | {row.lora:,d} | "
            f"{row.total:,d} | {row.trainable:,d} | {row.total / 1e9:.2f} | {paper} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Print the parameter table of the three full-size variants."""
    print(format_parameter_table([count_parameters(name) for name in FULL_SIZE_VARIANTS]))


if __name__ == "__main__":
    main()
