"""The CoT adapter: shapes, zero-gate identity, and its math against a FLUX-style reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxPosEmbed

from models.checkpoint_io import CheckpointError, convert_release_adapter, load_adapter_weights
from models.cot_adapter import CoTAdapter, CoTAdapterConfig
from models.kinds import BackboneKind
from models.testing import tiny_model

H, HEADS, D, S = 32, 2, 20, 2


def _inputs(batch: int = 2, n_text: int = 4, n_image: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, n_text, H, generator=g)
    image = torch.randn(batch, n_image, H, generator=g)
    vec = torch.randn(batch, H, generator=g)
    ids = torch.zeros(n_text + n_image, 3)
    ids[n_text:, 1] = torch.arange(n_image).float() // 3
    ids[n_text:, 2] = torch.arange(n_image).float() % 3
    rotary = FluxPosEmbed(theta=10000, axes_dim=[4, 6, 6])(ids)
    return text, image, vec, rotary


def _adapter(seed: int = 0) -> CoTAdapter:
    torch.manual_seed(seed)
    return CoTAdapter(CoTAdapterConfig(hidden_size=H, num_heads=HEADS, text_dim=D, depth=S)).eval()


def _randomize(adapter: CoTAdapter, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.3)


def test_predictions_are_per_token_with_text_encoder_width() -> None:
    adapter = _adapter()
    text, image, vec, rotary = _inputs(batch=3, n_text=4)
    out = adapter(text, image, vec, rotary)
    assert out.text.shape == (3, 4, H)
    for prediction in (out.scene, out.degradation, out.plan):
        assert prediction.shape == (3, 4, D)


def test_zero_gates_return_the_incoming_text_exactly_and_open_gates_do_not() -> None:
    adapter = _adapter()
    text, image, vec, rotary = _inputs()
    assert torch.equal(adapter(text, image, vec, rotary).text, text)
    with torch.no_grad():
        adapter.scale_planning.fill_(0.1)
    assert not torch.allclose(adapter(text, image, vec, rotary).text, text)


def test_rotary_must_cover_text_and_image_tokens() -> None:
    adapter = _adapter()
    text, image, vec, rotary = _inputs()
    short = (rotary[0][:-1], rotary[1][:-1])
    with pytest.raises(ValueError, match="rotary embedding covers"):
        adapter(text, image, vec, short)


def test_config_rejects_a_width_not_divisible_by_the_heads() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        CoTAdapterConfig(hidden_size=30, num_heads=4, text_dim=8)


# -- a functional reference written from the FLUX single-stream block and LastLayer ---------


def _rms(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale


def _reference_block(sd: dict[str, torch.Tensor], p: str, text, image, vec, rotary):
    """The whole parallel block over [text ; image] (every token), keeping the text rows."""
    n_text = text.shape[1]
    x = torch.cat([text, image], dim=1)
    shift, scale, gate = F.linear(
        F.silu(vec), sd[p + "modulation.lin.weight"], sd[p + "modulation.lin.bias"]
    )[:, None].chunk(3, dim=-1)
    x_mod = (1 + scale) * F.layer_norm(x, (H,), eps=1e-6) + shift
    qkv, mlp = F.linear(x_mod, sd[p + "linear1.weight"], sd[p + "linear1.bias"]).split(
        [3 * H, 4 * H], dim=-1
    )
    b, length, _ = qkv.shape
    q, k, v = qkv.view(b, length, 3, HEADS, H // HEADS).permute(2, 0, 3, 1, 4)  # K B H L D
    q = _rms(q, sd[p + "norm.query_norm.scale"])
    k = _rms(k, sd[p + "norm.key_norm.scale"])
    q = apply_rotary_emb(q, rotary, sequence_dim=2)
    k = apply_rotary_emb(k, rotary, sequence_dim=2)
    attn = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3).reshape(b, length, H)
    out = F.linear(
        torch.cat([attn, F.gelu(mlp, approximate="tanh")], -1),
        sd[p + "linear2.weight"],
        sd[p + "linear2.bias"],
    )
    return (x + gate * out)[:, :n_text]


def _reference_final(sd, p, x, vec):
    shift, scale = F.linear(
        F.silu(vec), sd[p + "adaLN_modulation.1.weight"], sd[p + "adaLN_modulation.1.bias"]
    ).chunk(2, dim=-1)
    x = (1 + scale[:, None]) * F.layer_norm(x, (H,), eps=1e-6) + shift[:, None]
    return F.linear(x, sd[p + "linear.weight"], sd[p + "linear.bias"])


def _reference_adapter(sd, text, image, vec, rotary):
    c = "cot_adapter."
    refined = text
    for i in range(S):
        refined = _reference_block(sd, f"{c}decoder.{i}.", refined, image, vec, rotary)
    scene = F.linear(refined, sd[c + "sharpness_layer.weight"], sd[c + "sharpness_layer.bias"])
    deg = F.linear(refined, sd[c + "degradation_layer.weight"], sd[c + "degradation_layer.bias"])
    plan = F.linear(
        torch.cat([deg, scene], -1), sd[c + "planning_layer.weight"], sd[c + "planning_layer.bias"]
    )
    new_text = (
        text
        + sd[c + "scale_sharpness"] * scene
        + sd[c + "scale_degradation"] * deg
        + sd[c + "scale_planning"] * plan
    )
    act = lambda y: F.gelu(y, approximate="tanh")  # noqa: E731
    return (
        new_text,
        _reference_final(sd, c + "final_sharpness_layer.", act(scene), vec),
        _reference_final(sd, c + "final_degradation_layer.", act(deg), vec),
        _reference_final(sd, c + "final_planning_layer.", act(plan), vec),
    )


def _release_state_dict(seed: int = 7) -> dict[str, torch.Tensor]:
    """A synthetic ``cot_adapter.pt`` as DDP saves it: every key ``module.cot_adapter.*``."""
    g = torch.Generator().manual_seed(seed)
    shapes = {}
    for i in range(S):
        p = f"cot_adapter.decoder.{i}."
        shapes |= {
            p + "linear1.weight": (3 * H + 4 * H, H),
            p + "linear1.bias": (3 * H + 4 * H,),
            p + "linear2.weight": (H, H + 4 * H),
            p + "linear2.bias": (H,),
            p + "norm.query_norm.scale": (H // HEADS,),
            p + "norm.key_norm.scale": (H // HEADS,),
            p + "modulation.lin.weight": (3 * H, H),
            p + "modulation.lin.bias": (3 * H,),
        }
    for head in ("sharpness", "degradation"):
        shapes[f"cot_adapter.{head}_layer.weight"] = (H, H)
        shapes[f"cot_adapter.{head}_layer.bias"] = (H,)
    shapes["cot_adapter.planning_layer.weight"] = (H, 2 * H)
    shapes["cot_adapter.planning_layer.bias"] = (H,)
    for head in ("sharpness", "degradation", "planning"):
        p = f"cot_adapter.final_{head}_layer."
        shapes |= {
            p + "linear.weight": (D, H),
            p + "linear.bias": (D,),
            p + "adaLN_modulation.1.weight": (2 * H, H),
            p + "adaLN_modulation.1.bias": (2 * H,),
        }
        shapes[f"cot_adapter.scale_{head}"] = (1,)
    return {"module." + k: torch.randn(s, generator=g) * 0.3 for k, s in shapes.items()}


def test_release_adapter_layout_loads_and_matches_the_reference_math() -> None:
    release = _release_state_dict()
    adapter = _adapter()
    model_like = type("M", (), {"cot_adapter": adapter})()
    load_adapter_weights(model_like, convert_release_adapter(release))
    raw = {k.removeprefix("module."): v for k, v in release.items()}
    text, image, vec, rotary = _inputs(seed=5)
    with torch.no_grad():
        out = adapter(text, image, vec, rotary)
        expected = _reference_adapter(raw, text, image, vec, rotary)
    for got, want in zip((out.text, out.scene, out.degradation, out.plan), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_text_only_block_equals_the_full_block_restricted_to_text() -> None:
    adapter = _adapter()
    _randomize(adapter)
    sd = {"cot_adapter." + k: v for k, v in adapter.state_dict().items()}
    text, image, vec, rotary = _inputs(seed=9)
    with torch.no_grad():
        got = adapter.decoder[0](text, image, vec, rotary)
        want = _reference_block(sd, "cot_adapter.decoder.0.", text, image, vec, rotary)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_release_adapter_with_a_missing_or_foreign_key_is_refused() -> None:
    release = _release_state_dict()
    adapter = _adapter()
    model_like = type("M", (), {"cot_adapter": adapter})()
    incomplete = dict(release)
    incomplete.pop("module.cot_adapter.scale_planning")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_adapter_weights(model_like, convert_release_adapter(incomplete))
    with pytest.raises(CheckpointError, match="unexpected keys"):
        convert_release_adapter({**release, "module.lora.x": torch.zeros(1)})


@pytest.mark.parametrize("kind", list(BackboneKind))
def test_adapter_parameter_names_are_the_release_names(kind: BackboneKind) -> None:
    model = tiny_model(kind, adapter_depth=S)
    names = {k for k in model.state_dict() if k.startswith("cot_adapter.")}
    assert "cot_adapter.decoder.1.norm.query_norm.scale" in names
    assert "cot_adapter.final_planning_layer.adaLN_modulation.1.weight" in names
    assert {
        "cot_adapter.scale_sharpness",
        "cot_adapter.scale_degradation",
        "cot_adapter.scale_planning",
    } <= names
