"""The CoT adapter: S CoTIRBlocks plus three reasoning heads between the FLUX streams.

It sits between the last double-stream and the first single-stream block of a FLUX
transformer (the CoTIR paper and its public release). It reads the text and image
streams, refines the text tokens with S single-stream-style parallel blocks (image
tokens are only attended to, never changed), derives scene / degradation / plan features
from the refined text, and adds them to the *incoming* text stream through three scalar
gates that start at zero, so a freshly built adapter leaves the backbone's output
exactly unchanged. The same features, decoded per token to the text encoder's width D,
are the CoT predictions trained against the encoded answer parts
(:mod:`models.text_targets`).

Module and parameter names follow the public release's ``cot_adapter.pt`` layout
so its state dict loads after stripping the prefix only:
``decoder.{i}.linear1``, ``decoder.{i}.linear2``, ``decoder.{i}.norm.query_norm.scale``,
``decoder.{i}.modulation.lin``, ``sharpness_layer`` (the scene head), ...,
``final_planning_layer.adaLN_modulation.1``, ``scale_sharpness``, ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

#: Rotary embedding as diffusers' FLUX models pass it to their blocks: (cos, sin), each
#: (sequence, head_dim), over the joint [text ; image] ids.
RotaryEmbedding = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class CoTAdapterConfig:
    """Sizes of a CoT adapter.

    ``hidden_size`` and ``num_heads`` must match the backbone (the adapter reuses the
    backbone's rotary embedding, so ``hidden_size / num_heads`` is the backbone's head
    dim); ``text_dim`` is D, the width of the text encoder features the predictions
    regress to; ``depth`` is S (6 in every released config).
    """

    hidden_size: int
    num_heads: int
    text_dim: int
    depth: int = 6
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.hidden_size <= 0 or self.num_heads <= 0 or self.text_dim <= 0:
            raise ValueError(f"sizes must be positive, got {self}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1, got {self.depth}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        """Width m of the parallel MLP (4h in every released config)."""
        return int(self.hidden_size * self.mlp_ratio)


@dataclass
class CoTAdapterOutput:
    """What the adapter returns: the new text stream and the three per-token predictions.

    ``scene``, ``degradation`` and ``plan`` are c_hat_s, c_hat_d, c_hat_p of the paper,
    each (batch, text tokens, D).
    """

    text: torch.Tensor
    scene: torch.Tensor
    degradation: torch.Tensor
    plan: torch.Tensor


class RMSNorm(nn.Module):
    """RMS norm over the last axis with a learned ``scale`` (FLUX's spelling), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` to unit RMS and multiply by ``scale``."""
        dtype = x.dtype
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(dtype) * self.scale.to(dtype)


class QKNorm(nn.Module):
    """RMS norms of queries and keys, per head (``query_norm``/``key_norm``)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return normalised (q, k) in v's dtype."""
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


class Modulation(nn.Module):
    """adaLN modulation of one parallel block: ``lin`` maps SiLU(vec) to (shift, scale, gate)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, 3 * dim, bias=True)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return shift, scale and gate, each (batch, 1, dim)."""
        out = self.lin(F.silu(vec))[:, None, :]
        shift, scale, gate = out.chunk(3, dim=-1)
        return shift, scale, gate


class CoTIRBlock(nn.Module):
    """One FLUX single-stream-style parallel block that updates only the text tokens.

    Over [text ; image]: non-affine LayerNorm, adaLN (shift, scale) from ``vec``, fused
    ``linear1`` (h -> 3h + m: q, k, v, MLP-in), QK RMSNorm, RoPE over the joint ids,
    attention, ``linear2`` (h + m -> h) over [attention, GELU-tanh(MLP)], and
    ``text + gate * out`` for the text positions. Because the image outputs are thrown
    away, queries and the MLP are computed for the text tokens only and the image tokens
    contribute keys and values: the result is identical to running the full block and
    keeping the text rows, at a fraction of the cost.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by {num_heads} heads")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(self.head_dim)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size)

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        vec: torch.Tensor,
        rotary: RotaryEmbedding,
    ) -> torch.Tensor:
        """Return the updated text tokens (batch, text tokens, h); ``image`` is read only."""
        batch, n_text, _ = text.shape
        h = self.hidden_size
        shift, scale, gate = self.modulation(vec)
        text_mod = (1 + scale) * self.pre_norm(text) + shift
        image_mod = (1 + scale) * self.pre_norm(image) + shift

        # Text rows: q, k, v and MLP-in; image rows: k and v only (rows h..3h of linear1).
        text_proj = self.linear1(text_mod)
        qkv_text, mlp = text_proj.split([3 * h, self.mlp_hidden_dim], dim=-1)
        kv_image = F.linear(image_mod, self.linear1.weight[h : 3 * h], self.linear1.bias[h : 3 * h])
        q, k_text, v_text = qkv_text.unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(2)
        k_image, v_image = kv_image.unflatten(-1, (2, self.num_heads, self.head_dim)).unbind(2)
        k = torch.cat([k_text, k_image], dim=1)
        v = torch.cat([v_text, v_image], dim=1)
        q, k = self.norm(q, k, v)

        cos, sin = rotary
        if cos.shape[0] != k.shape[1]:
            raise ValueError(
                f"rotary embedding covers {cos.shape[0]} positions, but the adapter sees "
                f"{n_text} text + {image.shape[1]} image tokens"
            )
        q = apply_rotary_emb(q, (cos[:n_text], sin[:n_text]), sequence_dim=1)
        k = apply_rotary_emb(k, (cos, sin), sequence_dim=1)

        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        attn = attn.transpose(1, 2).reshape(batch, n_text, h)
        out = self.linear2(torch.cat([attn, self.mlp_act(mlp)], dim=-1))
        return text + gate * out


class FinalLayer(nn.Module):
    """adaLN-modulated output layer (FLUX's LastLayer): LayerNorm, (1 + scale) x + shift, Linear."""

    def __init__(self, hidden_size: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True)
        )

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """Map (batch, tokens, h) to (batch, tokens, out_dim), modulated by ``vec``."""
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=-1)
        x = (1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :]
        return self.linear(x)


class CoTAdapter(nn.Module):
    """S CoTIRBlocks, the scene / degradation / plan heads, gated injection and decoders."""

    def __init__(self, config: CoTAdapterConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.decoder = nn.ModuleList(
            CoTIRBlock(h, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        # Heads (the release calls the scene head "sharpness").
        self.sharpness_layer = nn.Linear(h, h)
        self.degradation_layer = nn.Linear(h, h)
        self.planning_layer = nn.Linear(2 * h, h)
        self.head_act = nn.GELU(approximate="tanh")
        self.final_sharpness_layer = FinalLayer(h, config.text_dim)
        self.final_degradation_layer = FinalLayer(h, config.text_dim)
        self.final_planning_layer = FinalLayer(h, config.text_dim)
        # Zero-initialised scalar gates: at init the backbone's output is unchanged.
        self.scale_sharpness = nn.Parameter(torch.zeros(1))
        self.scale_degradation = nn.Parameter(torch.zeros(1))
        self.scale_planning = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        vec: torch.Tensor,
        rotary: RotaryEmbedding,
    ) -> CoTAdapterOutput:
        """Refine ``text`` over [text ; image], inject the gated heads, decode the predictions.

        ``text`` (B, T, h) and ``image`` (B, N, h) are the streams after the last
        double-stream block, ``vec`` (B, h) the backbone's timestep vector, ``rotary``
        the backbone's rotary embedding over the T + N joint ids.
        """
        if text.ndim != 3 or image.ndim != 3 or text.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"expected (B, T, {self.config.hidden_size}) text and image streams, "
                f"got {tuple(text.shape)} and {tuple(image.shape)}"
            )
        vec = vec.to(text.dtype)
        refined = text
        for block in self.decoder:
            refined = block(refined, image, vec, rotary)
        scene = self.sharpness_layer(refined)
        degradation = self.degradation_layer(refined)
        plan = self.planning_layer(torch.cat([degradation, scene], dim=-1))
        # The release's order of operations (bit-identical in bf16): the gated sum first,
        # degradation + scene + plan, then added to the text stream.
        residual = (
            degradation * self.scale_degradation.to(text.dtype)
            + scene * self.scale_sharpness.to(text.dtype)
            + plan * self.scale_planning.to(text.dtype)
        )
        injected = text + residual
        return CoTAdapterOutput(
            text=injected,
            scene=self.final_sharpness_layer(self.head_act(scene), vec),
            degradation=self.final_degradation_layer(self.head_act(degradation), vec),
            plan=self.final_planning_layer(self.head_act(plan), vec),
        )

    def gates(self) -> dict[str, float]:
        """Current values of the three injection gates (for logging)."""
        return {
            "scene": float(self.scale_sharpness.detach().float()),
            "degradation": float(self.scale_degradation.detach().float()),
            "plan": float(self.scale_planning.detach().float()),
        }
