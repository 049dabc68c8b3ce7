"""Tiny configurations and random inputs for tests and examples (built in code, no weights).

Both backbones at a few thousand parameters, shaped like the real ones (double and
single blocks, rotary axes, guidance embedding for Kontext), the way diffusers' own
tests build their models. Nothing here runs at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.backbones import CoTIRTransformer, noisy_and_reference_ids, text_ids
from models.kinds import BackboneKind

TINY_TEXT_DIM = 24

TINY_CONFIGS: dict[BackboneKind, dict[str, Any]] = {
    BackboneKind.FLUX1_KONTEXT: {
        "patch_size": 1,
        "in_channels": 16,
        "num_layers": 2,
        "num_single_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": TINY_TEXT_DIM,
        "pooled_projection_dim": TINY_TEXT_DIM,
        "guidance_embeds": True,
        "axes_dims_rope": (4, 6, 6),
    },
    BackboneKind.FLUX2_KLEIN: {
        "patch_size": 1,
        "in_channels": 16,
        "num_layers": 2,
        "num_single_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": TINY_TEXT_DIM,
        "timestep_guidance_channels": 32,
        "mlp_ratio": 3.0,
        "axes_dims_rope": (4, 4, 4, 4),
        "rope_theta": 2000,
        "guidance_embeds": False,
    },
}


def tiny_model(
    kind: BackboneKind, *, seed: int = 0, adapter_depth: int = 2, text_dim: int = TINY_TEXT_DIM
) -> CoTIRTransformer:
    """A tiny randomly initialised backbone with a fresh adapter (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CoTIRTransformer.from_config(
            kind, TINY_CONFIGS[kind], text_dim=text_dim, adapter_depth=adapter_depth
        )


def randomize_gates(model: CoTIRTransformer, value: float = 0.5) -> None:
    """Open the three injection gates so the adapter changes the output."""
    with torch.no_grad():
        for gate in (
            model.cot_adapter.scale_sharpness,
            model.cot_adapter.scale_degradation,
            model.cot_adapter.scale_planning,
        ):
            gate.fill_(value)


@dataclass
class TinyInputs:
    """Keyword arguments for one forward of a tiny model (noisy + reference tokens)."""

    kwargs: dict[str, Any]
    n_text: int
    n_noisy: int
    n_reference: int

    def base_kwargs(self) -> dict[str, Any]:
        """The same inputs for the bare diffusers transformer."""
        out = {k: v for k, v in self.kwargs.items() if v is not None}
        out["return_dict"] = False
        return out


def tiny_inputs(
    model: CoTIRTransformer | nn.Module,
    *,
    batch: int = 2,
    n_text: int = 5,
    grid: tuple[int, int] = (2, 3),
    seed: int = 1,
) -> TinyInputs:
    """Random inputs: noisy grid tokens followed by LQ reference tokens, with proper ids."""
    transformer = model.transformer if isinstance(model, CoTIRTransformer) else model
    from models.backbones import backbone_kind_of

    kind = backbone_kind_of(transformer)
    config = transformer.config
    generator = torch.Generator().manual_seed(seed)
    gh, gw = grid
    n = gh * gw
    hidden = torch.randn(batch, 2 * n, config.in_channels, generator=generator)
    text = torch.randn(batch, n_text, config.joint_attention_dim, generator=generator)
    ids = noisy_and_reference_ids(kind, gh, gw)
    kwargs: dict[str, Any] = {
        "hidden_states": hidden,
        "encoder_hidden_states": text,
        "timestep": torch.rand(batch, generator=generator),
        "img_ids": ids,
        "txt_ids": text_ids(kind, n_text),
        "pooled_projections": None,
        "guidance": None,
    }
    if kind is BackboneKind.FLUX1_KONTEXT:
        kwargs["pooled_projections"] = torch.randn(
            batch, config.pooled_projection_dim, generator=generator
        )
        kwargs["guidance"] = torch.full((batch,), 2.5)
    return TinyInputs(kwargs=kwargs, n_text=n_text, n_noisy=n, n_reference=n)


#: A chat template of the shape Qwen's has (role and content between markers).
WORD_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def word_level_tokenizer(words: list[str], max_length: int, *, chat: bool = False) -> Any:
    """A word-level stand-in tokenizer over ``words`` (the first three are the pad, unknown
    and end tokens), with :data:`WORD_CHAT_TEMPLATE` when ``chat``: the real tokenizers
    are not needed to test or time the text encoders."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pad, unknown, end = words[:3]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=unknown))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        unk_token=unknown,
        eos_token=end,
        model_max_length=max_length,
        chat_template=WORD_CHAT_TEMPLATE if chat else None,
    )
