"""LoRA (peft) on the single-stream blocks and the final layer (and, by choice, the text
path); everything else frozen.

the CoTIR paper and its release: LoRA on every Linear of the single-stream blocks and of the
final layer only, rank 96, scale 1.0, with a bias on B; the double-stream blocks, the
VAE and the text encoders are frozen. The LoRA lives inside the diffusers transformer
(``transformer.add_adapter``), so its state dict is in diffusers' own naming and loads
into a stock pipeline with ``load_lora_weights``.

A module whose smaller side is below the rank gets that side as its rank, as the release's
LoRA layer does (CoTIR-12B's final ``proj_out``, 3072 -> 64, is rank 64 of 96); every
module keeps scale 1.0.

Targets (diffusers names):

- FLUX.1: ``single_transformer_blocks.N.{attn.to_q, attn.to_k, attn.to_v, proj_mlp,
  proj_out, norm.linear}`` and the top-level ``proj_out`` and ``norm_out.linear``;
- FLUX.2: ``single_transformer_blocks.N.attn.{to_qkv_mlp_proj, to_out}`` and the
  top-level ``proj_out`` and ``norm_out.linear`` (FLUX.2's single-stream modulation is
  shared outside the blocks and gets no LoRA, as in the release).

Scope (a documented choice): ``scope="paper"`` (default) is the targets above.
``scope="text_path"`` adds the prompt's way in: ``context_embedder`` (the text
features' projection) and the text stream of every double-stream block (its attention
projections and feed-forward). The demo's main recipe uses it because the demo prior,
pretrained on a handful of edit instructions, projects the restoration prompts into
nearly one direction (docs/TRAINING.md); FLUX's own text path saw far more text.

Initialisation of B (a documented choice): ``init_b="zero"`` (default) is standard
LoRA practice: B = 0 (and its bias 0), so training starts exactly at the base model
plus the zero-gated adapter. ``init_b="random"`` reproduces the public release, which
leaves B at nn.Linear's default random init, so the LoRA perturbs the model from
step 0.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from torch import nn

from models.backbones import BackboneKind, CoTIRTransformer, has_peft_layers
from models.kinds import LORA_SCOPES, LoraScope

if TYPE_CHECKING:
    from peft import LoraConfig

DEFAULT_RANK = 96
ADAPTER_NAME = "default"
InitB = Literal["zero", "random"]

#: Full-match regexes over module names inside the diffusers transformer (peft's
#: ``target_modules`` as a string). The top-level ``proj_out`` alternative cannot match a
#: single block's ``proj_out`` because peft matches the whole name.
LORA_TARGETS: dict[BackboneKind, str] = {
    BackboneKind.FLUX1_KONTEXT: (
        r"single_transformer_blocks\.\d+\.(attn\.to_q|attn\.to_k|attn\.to_v|proj_mlp|proj_out"
        r"|norm\.linear)|proj_out|norm_out\.linear"
    ),
    BackboneKind.FLUX2_KLEIN: (
        r"single_transformer_blocks\.\d+\.attn\.(to_qkv_mlp_proj|to_out)|proj_out|norm_out\.linear"
    ),
}


#: The text path's Linears, added by ``scope="text_path"``: the projection of the text
#: encoder's features and each double-stream block's text-stream attention and MLP.
LORA_TEXT_PATH_TARGETS: dict[BackboneKind, str] = {
    BackboneKind.FLUX1_KONTEXT: (
        r"context_embedder|transformer_blocks\.\d+\.(attn\.add_q_proj|attn\.add_k_proj"
        r"|attn\.add_v_proj|attn\.to_add_out|ff_context\.net\.0\.proj|ff_context\.net\.2)"
    ),
    BackboneKind.FLUX2_KLEIN: (
        r"context_embedder|transformer_blocks\.\d+\.(attn\.add_q_proj|attn\.add_k_proj"
        r"|attn\.add_v_proj|attn\.to_add_out|ff_context\.linear_in|ff_context\.linear_out)"
    ),
}


def lora_targets(kind: BackboneKind, scope: LoraScope = "paper") -> str:
    """peft's ``target_modules`` regex for ``kind`` and ``scope`` (see the module docstring)."""
    if scope == "paper":
        return LORA_TARGETS[kind]
    if scope == "text_path":
        return f"{LORA_TARGETS[kind]}|{LORA_TEXT_PATH_TARGETS[kind]}"
    raise ValueError(f"LoRA scope must be one of {LORA_SCOPES}, got {scope!r}")


def lora_scope_of(model: CoTIRTransformer) -> LoraScope:
    """The scope the model's LoRA was injected with (from peft's recorded targets)."""
    targets = model.transformer.peft_config[ADAPTER_NAME].target_modules
    for scope in LORA_SCOPES:
        if targets == lora_targets(model.kind, scope):
            return scope
    raise ValueError(f"the model's LoRA targets {targets!r} match no LoRA scope")


def exact_module_pattern(name: str) -> str:
    """A peft ``rank_pattern`` key that matches the module ``name`` and nothing else.

    peft matches a key against the *end* of a module name after a dot, so a plain
    ``proj_out`` would also select ``single_transformer_blocks.0.proj_out``; the
    look-behind rules out any name with a prefix.
    """
    return r"(?<![\w.])" + re.escape(name)


def capped_ranks(model: CoTIRTransformer, rank: int, scope: LoraScope = "paper") -> dict[str, int]:
    """Target modules whose rank is capped at min(in, out) < ``rank``, as the release does.

    The release's LoRA layer lowers its rank to the smaller side of the Linear, so
    CoTIR-12B's ``final_layer.linear`` (3072 -> 64) is stored at rank 64 while the others
    are 96. Returns ``{module name: capped rank}`` for those modules only.
    """
    pattern = re.compile(lora_targets(model.kind, scope))
    capped: dict[str, int] = {}
    for name, module in model.transformer.named_modules():
        if isinstance(module, nn.Linear) and pattern.fullmatch(name):
            limit = min(module.in_features, module.out_features)
            if limit < rank:
                capped[name] = limit
    return capped


def lora_config(
    kind: BackboneKind,
    rank: int = DEFAULT_RANK,
    *,
    lora_bias: bool = True,
    init_b: InitB = "zero",
    capped: Mapping[str, int] | None = None,
    scope: LoraScope = "paper",
) -> LoraConfig:
    """A peft ``LoraConfig`` for ``kind`` and ``scope``: scale 1.0 (alpha = rank), no dropout.

    ``capped`` gives per-module ranks (:func:`capped_ranks`); their alpha equals their
    rank too, so every module keeps the release's scale of 1.0.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    if init_b not in ("zero", "random"):
        raise ValueError(f"init_b must be 'zero' or 'random', got {init_b!r}")
    per_module = {exact_module_pattern(name): r for name, r in (capped or {}).items()}
    return LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=lora_targets(kind, scope),
        lora_bias=lora_bias,
        rank_pattern=dict(per_module),
        alpha_pattern={key: float(r) for key, r in per_module.items()},
        # True: A kaiming, B (and its bias) zero. False: peft leaves nn.Linear's default init.
        init_lora_weights=init_b == "zero",
    )


def has_lora(model: CoTIRTransformer) -> bool:
    """Whether LoRA layers were already injected into the model's transformer."""
    return has_peft_layers(model.transformer)


def apply_lora(
    model: CoTIRTransformer,
    rank: int = DEFAULT_RANK,
    *,
    lora_bias: bool = True,
    init_b: InitB = "zero",
    scope: LoraScope = "paper",
) -> None:
    """Inject LoRA into ``model.transformer`` and freeze all non-LoRA backbone weights.

    A module whose smaller side is below ``rank`` gets that side as its rank
    (:func:`capped_ranks`), as in the release. The adapter stays trainable. FLUX.2's
    Linears have no bias, so with ``lora_bias`` peft warns that such a LoRA cannot be
    merged into the base weights; that is expected (CoTIR never merges) and the warning
    is silenced here.
    """
    if has_lora(model):
        raise ValueError("the model already has LoRA layers")
    config = lora_config(
        model.kind,
        rank,
        lora_bias=lora_bias,
        init_b=init_b,
        capped=capped_ranks(model, rank, scope),
        scope=scope,
    )
    model.transformer.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lora_bias=True.*has no bias.*")
        model.transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    for name, parameter in model.transformer.named_parameters():
        parameter.requires_grad_("lora_" in name)
    model.cot_adapter.requires_grad_(True)


def freeze(*modules: nn.Module | None) -> None:
    """Freeze whole modules (VAE, text encoders): no gradients, eval mode."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False)
            module.eval()


def lora_target_names(model: CoTIRTransformer) -> list[str]:
    """Names of the transformer's Linears that carry LoRA."""
    return sorted(
        name.removesuffix(".lora_A." + ADAPTER_NAME)
        for name, _ in model.transformer.named_modules()
        if name.endswith(".lora_A." + ADAPTER_NAME)
    )


@dataclass
class TrainableReport:
    """Which parameters train: names, per-group counts and totals."""

    names: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    trainable: int = 0
    frozen: int = 0

    @property
    def total(self) -> int:
        """All parameters, trainable or not."""
        return self.trainable + self.frozen

    def format(self) -> str:
        """Human-readable summary, one group per line."""
        lines = [f"{group:<12} {count:>16,d}" for group, count in sorted(self.counts.items())]
        lines.append(f"{'trainable':<12} {self.trainable:>16,d}")
        lines.append(f"{'frozen':<12} {self.frozen:>16,d}")
        return "\n".join(lines)


def _group(name: str) -> str:
    if name.startswith("cot_adapter."):
        return "adapter"
    if "lora_" in name:
        return "lora"
    return "other"


def trainable_report(model: CoTIRTransformer, **others: nn.Module | None) -> TrainableReport:
    """Report trainable parameter names and counts of ``model`` and named extra modules.

    Groups: ``adapter`` (``cot_adapter.*``), ``lora`` (``*lora_*``) and ``other`` (any
    other trainable parameter, which should be none after :func:`apply_lora`). Extra
    modules (``vae=...``, ``text_encoder=...``) are listed under their keyword.
    """
    report = TrainableReport()
    named = list(model.named_parameters())
    for label, module in others.items():
        if module is not None:
            named.extend((f"{label}.{name}", p) for name, p in module.named_parameters())
    for name, parameter in named:
        if parameter.requires_grad:
            report.names.append(name)
            group = _group(name)
            report.counts[group] = report.counts.get(group, 0) + parameter.numel()
            report.trainable += parameter.numel()
        else:
            report.frozen += parameter.numel()
    return report
