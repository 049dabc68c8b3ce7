"""The public release's checkpoint layout: converted LoRA reproduces the original-layout model.

FLUX.2: a random checkpoint in the original FLUX.2 layout is turned into a diffusers model
by diffusers' own converter; the release LoRA merged into the original weights (W + BA,
b + bias_B), converted the same way, is the reference. FLUX.1: diffusers' FLUX.1
converter is fixed to width 3072, so the reference is the original single-stream block
and final layer written out from the fused ``linear1`` / ``(shift, scale)`` semantics.
Both compare whole-model outputs, not key names.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from diffusers import Flux2Transformer2DModel
from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
from diffusers.models.embeddings import apply_rotary_emb

from cotir_pipeline.weights import MissingWeightsError
from models.backbones import CoTIRTransformer, build_transformer
from models.checkpoint_io import (
    CheckpointError,
    convert_release_adapter,
    convert_release_lora,
    load_adapter_weights,
    load_release_checkpoint,
)
from models.kinds import BackboneKind
from models.testing import TINY_CONFIGS, TINY_TEXT_DIM, randomize_gates, tiny_inputs, tiny_model

RANK = 3


#: A rank above the tiny final layer's smaller side (32 -> 16): that module is capped at 16.
CAPPED_RANK = 24


def _lora_for(
    layers: dict[str, tuple[int, int]], seed: int, rank: int = RANK
) -> dict[str, torch.Tensor]:
    """Release-style LoRA (``module.``-prefixed, as saved from DDP): A (r, in), B (out, r), bias.

    Each layer's rank is min(rank, in, out), as the release's LoRA layer caps it.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (fan_in, fan_out) in layers.items():
        r = min(rank, fan_in, fan_out)
        out[f"module.{name}.lora_A.weight"] = torch.randn(r, fan_in, generator=g) * 0.2
        out[f"module.{name}.lora_B.weight"] = torch.randn(fan_out, r, generator=g) * 0.2
        out[f"module.{name}.lora_B.bias"] = torch.randn(fan_out, generator=g) * 0.2
    return out


def _release_adapter(model: CoTIRTransformer, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"module.cot_adapter.{name}": torch.randn(p.shape, generator=g) * 0.2
        for name, p in model.cot_adapter.state_dict().items()
    }


def _save(tmp_path: Path, adapter: dict, lora: dict) -> tuple[Path, Path]:
    torch.save(adapter, tmp_path / "cot_adapter.pt")
    torch.save(lora, tmp_path / "lora.pt")
    return tmp_path / "cot_adapter.pt", tmp_path / "lora.pt"


def _merged(lora: dict[str, torch.Tensor], layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    a = lora[f"module.{layer}.lora_A.weight"]
    b = lora[f"module.{layer}.lora_B.weight"]
    return b @ a, lora[f"module.{layer}.lora_B.bias"]


# -- FLUX.2: diffusers' own converter is the reference ----------------------------------------


def _flux2_original_checkpoint(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights named and shaped as the original FLUX.2 (BFL) checkpoint."""
    h = config["num_attention_heads"] * config["attention_head_dim"]
    hd = config["attention_head_dim"]
    mlp = int(h * config["mlp_ratio"])
    shapes = {
        "img_in.weight": (h, config["in_channels"]),
        "txt_in.weight": (h, config["joint_attention_dim"]),
        "time_in.in_layer.weight": (h, config["timestep_guidance_channels"]),
        "time_in.out_layer.weight": (h, h),
        "double_stream_modulation_img.lin.weight": (6 * h, h),
        "double_stream_modulation_txt.lin.weight": (6 * h, h),
        "single_stream_modulation.lin.weight": (3 * h, h),
        "final_layer.linear.weight": (config["in_channels"], h),
        "final_layer.adaLN_modulation.1.weight": (2 * h, h),
    }
    for i in range(config["num_layers"]):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}_"
            shapes |= {
                p + "attn.qkv.weight": (3 * h, h),
                p + "attn.norm.query_norm.scale": (hd,),
                p + "attn.norm.key_norm.scale": (hd,),
                p + "attn.proj.weight": (h, h),
                p + "mlp.0.weight": (2 * mlp, h),
                p + "mlp.2.weight": (h, mlp),
            }
    for i in range(config["num_single_layers"]):
        p = f"single_blocks.{i}."
        shapes |= {
            p + "linear1.weight": (3 * h + 2 * mlp, h),
            p + "linear2.weight": (h, h + mlp),
            p + "norm.query_norm.scale": (hd,),
            p + "norm.key_norm.scale": (hd,),
        }
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}


def _diffusers_from_original(config: dict, original: dict) -> Flux2Transformer2DModel:
    model = build_transformer(BackboneKind.FLUX2_KLEIN, config)
    converted = convert_flux2_transformer_checkpoint_to_diffusers(dict(original))
    model.load_state_dict(converted, strict=True)
    return model


@pytest.mark.parametrize("rank", [RANK, CAPPED_RANK], ids=["uniform", "capped"])
def test_flux2_release_lora_reproduces_the_merged_original_model(tmp_path: Path, rank: int) -> None:
    config = dict(TINY_CONFIGS[BackboneKind.FLUX2_KLEIN])
    h = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = int(h * config["mlp_ratio"])
    original = _flux2_original_checkpoint(config)
    layers = {
        "final_layer.linear": (h, config["in_channels"]),
        "final_layer.adaLN_modulation.1": (h, 2 * h),
    }
    for i in range(config["num_single_layers"]):
        layers[f"single_blocks.{i}.linear1"] = (h, 3 * h + 2 * mlp)
        layers[f"single_blocks.{i}.linear2"] = (h + mlp, h)
    lora = _lora_for(layers, seed=1, rank=rank)
    if rank == CAPPED_RANK:
        assert lora["module.final_layer.linear.lora_A.weight"].shape[0] == 16

    model = CoTIRTransformer.with_new_adapter(
        _diffusers_from_original(config, original), text_dim=TINY_TEXT_DIM, adapter_depth=2
    )
    adapter = _release_adapter(model, seed=2)
    load_release_checkpoint(model, *_save(tmp_path, adapter, lora))

    # Reference: merge in the original layout, convert with diffusers' converter. FLUX.2's
    # base Linears have no bias, so the LoRA biases go through the converter as 1-D
    # "weights" (same renaming and half swap) and are attached as new biases.
    merged = dict(original)
    bias_as_weight = {}
    for layer in layers:
        delta, bias = _merged(lora, layer)
        merged[f"{layer}.weight"] = merged[f"{layer}.weight"] + delta
        bias_as_weight[f"{layer}.weight"] = bias
    reference_base = _diffusers_from_original(config, merged)
    for name, bias in convert_flux2_transformer_checkpoint_to_diffusers(bias_as_weight).items():
        module = reference_base.get_submodule(name.removesuffix(".weight"))
        assert module.bias is None
        module.bias = torch.nn.Parameter(bias)
    reference = CoTIRTransformer.with_new_adapter(
        reference_base, text_dim=TINY_TEXT_DIM, adapter_depth=2
    )
    load_adapter_weights(reference, convert_release_adapter(adapter))

    inputs = tiny_inputs(model)
    with torch.no_grad():
        ours = model(**inputs.kwargs)
        want = reference(**inputs.kwargs)
        plain = CoTIRTransformer.with_new_adapter(
            _diffusers_from_original(config, original), text_dim=TINY_TEXT_DIM, adapter_depth=2
        )
        load_adapter_weights(plain, convert_release_adapter(adapter))
        without_lora = plain(**inputs.kwargs).sample
    assert not torch.allclose(ours.sample, without_lora, atol=1e-4)
    torch.testing.assert_close(ours.sample, want.sample, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.plan, want.plan, rtol=1e-4, atol=1e-5)


# -- FLUX.1: the original single-stream block and final layer, written out ----------------------


def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _flux1_reference_tail(base: dict, lora: dict, text, image, vec, rotary, config) -> torch.Tensor:
    """Single-stream blocks + final layer in the original layout, LoRA applied unmerged."""
    heads, hd = config["num_attention_heads"], config["attention_head_dim"]
    h = heads * hd

    def lin(x, layer, weight, bias):
        a = lora[f"module.{layer}.lora_A.weight"]
        b = lora[f"module.{layer}.lora_B.weight"]
        bb = lora[f"module.{layer}.lora_B.bias"]
        return F.linear(x, weight, bias) + F.linear(F.linear(x, a), b, bb)

    def rms(x, scale):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale

    n_text = text.shape[1]
    x = torch.cat([text, image], dim=1)
    for i in range(config["num_single_layers"]):
        d = f"single_transformer_blocks.{i}."
        o = f"single_blocks.{i}."
        shift, scale, gate = lin(
            F.silu(vec),
            o + "modulation.lin",
            base[d + "norm.linear.weight"],
            base[d + "norm.linear.bias"],
        )[:, None].chunk(3, dim=-1)
        x_mod = (1 + scale) * F.layer_norm(x, (h,), eps=1e-6) + shift
        fused_w = torch.cat(
            [base[d + n + ".weight"] for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
        )
        fused_b = torch.cat(
            [base[d + n + ".bias"] for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
        )
        qkv, mlp = lin(x_mod, o + "linear1", fused_w, fused_b).split([3 * h, 4 * h], dim=-1)
        bsz, length, _ = qkv.shape
        q, k, v = qkv.view(bsz, length, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q = apply_rotary_emb(rms(q, base[d + "attn.norm_q.weight"]), rotary, sequence_dim=2)
        k = apply_rotary_emb(rms(k, base[d + "attn.norm_k.weight"]), rotary, sequence_dim=2)
        attn = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3).reshape(bsz, length, h)
        out = lin(
            torch.cat([attn, F.gelu(mlp, approximate="tanh")], -1),
            o + "linear2",
            base[d + "proj_out.weight"],
            base[d + "proj_out.bias"],
        )
        x = x + gate * out
    img = x[:, n_text:]
    # Original final layer: adaLN gives (shift, scale); diffusers stores (scale, shift).
    shift, scale = lin(
        F.silu(vec),
        "final_layer.adaLN_modulation.1",
        _swap(base["norm_out.linear.weight"]),
        _swap(base["norm_out.linear.bias"]),
    ).chunk(2, dim=-1)
    img = (1 + scale[:, None]) * F.layer_norm(img, (h,), eps=1e-6) + shift[:, None]
    return lin(img, "final_layer.linear", base["proj_out.weight"], base["proj_out.bias"])


@pytest.mark.parametrize("rank", [RANK, CAPPED_RANK], ids=["uniform", "capped"])
def test_flux1_release_lora_reproduces_the_original_layout_math(tmp_path: Path, rank: int) -> None:
    kind = BackboneKind.FLUX1_KONTEXT
    config = TINY_CONFIGS[kind]
    h = config["num_attention_heads"] * config["attention_head_dim"]
    layers = {
        "final_layer.linear": (h, config["in_channels"]),
        "final_layer.adaLN_modulation.1": (h, 2 * h),
    }
    for i in range(config["num_single_layers"]):
        layers[f"single_blocks.{i}.linear1"] = (h, 7 * h)
        layers[f"single_blocks.{i}.linear2"] = (5 * h, h)
        layers[f"single_blocks.{i}.modulation.lin"] = (h, 3 * h)
    lora = _lora_for(layers, seed=3, rank=rank)

    model = tiny_model(kind)
    base = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    adapter = _release_adapter(model, seed=4)
    load_release_checkpoint(model, *_save(tmp_path, adapter, lora))
    randomize_gates(model, 0.3)

    captured = {}
    model.transformer.transformer_blocks[-1].register_forward_hook(
        lambda _m, _a, out: captured.update(streams=out)
    )
    model.transformer.time_text_embed.register_forward_hook(
        lambda _m, _a, out: captured.update(vec=out)
    )
    inputs = tiny_inputs(model)
    with torch.no_grad():
        ours = model(**inputs.kwargs).sample
        ids = torch.cat([inputs.kwargs["txt_ids"], inputs.kwargs["img_ids"]])
        rotary = model.transformer.pos_embed(ids)
        text, image = captured["streams"]
        want = _flux1_reference_tail(base, lora, text, image, captured["vec"], rotary, config)
        model.transformer.disable_adapters()  # peft: the same model without its LoRA
        without_lora = model(**inputs.kwargs).sample
    assert not torch.allclose(ours, without_lora, atol=1e-4)
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-5)


# -- errors -----------------------------------------------------------------------------------


def test_unknown_release_lora_keys_are_refused() -> None:
    with pytest.raises(CheckpointError, match="unexpected key"):
        convert_release_lora(
            {"double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(2, 4)},
            BackboneKind.FLUX1_KONTEXT,
            hidden_size=4,
        )
    with pytest.raises(CheckpointError, match="no own modulation"):
        convert_release_lora(
            {"single_blocks.0.modulation.lin.lora_A.weight": torch.zeros(2, 4)},
            BackboneKind.FLUX2_KLEIN,
            hidden_size=4,
        )
    with pytest.raises(CheckpointError, match="rows"):
        convert_release_lora(
            {"single_blocks.0.linear1.lora_B.weight": torch.zeros(27, 2)},
            BackboneKind.FLUX1_KONTEXT,
            hidden_size=4,
        )


def test_fused_linear1_split_shares_a_and_slices_b() -> None:
    h, r = 4, 2
    a = torch.randn(r, h)
    b = torch.randn(7 * h, r)
    bias = torch.randn(7 * h)
    out = convert_release_lora(
        {
            "module.single_blocks.0.linear1.lora_A.weight": a,
            "module.single_blocks.0.linear1.lora_B.weight": b,
            "module.single_blocks.0.linear1.lora_B.bias": bias,
        },
        BackboneKind.FLUX1_KONTEXT,
        hidden_size=h,
    )
    x = torch.randn(3, h)
    fused = F.linear(F.linear(x, a), b, bias)
    pieces = [
        F.linear(
            F.linear(x, out[f"single_transformer_blocks.0.{n}.lora_A.weight"]),
            out[f"single_transformer_blocks.0.{n}.lora_B.weight"],
            out[f"single_transformer_blocks.0.{n}.lora_B.bias"],
        )
        for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    ]
    torch.testing.assert_close(torch.cat(pieces, dim=-1), fused)


def test_missing_release_files_name_the_path(tmp_path: Path) -> None:
    model = tiny_model(BackboneKind.FLUX2_KLEIN)
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "cot_adapter.pt")):
        load_release_checkpoint(model, tmp_path / "cot_adapter.pt", tmp_path / "lora.pt")


# -- merging the LoRA into the base weights (float32 inference) --------------------------------


@pytest.mark.parametrize("kind", [BackboneKind.FLUX2_KLEIN, BackboneKind.FLUX1_KONTEXT])
def test_a_merged_lora_computes_what_peft_layers_compute(
    tmp_path: Path, kind: BackboneKind
) -> None:
    """Our checkpoint loaded with ``merge_lora`` gives the LoRA'd model's output (float
    rounding apart), adds biases where FLUX.2's Linears have none, and needs no peft
    layers."""
    from models.checkpoint_io import load_checkpoint, save_checkpoint
    from models.lora import apply_lora, has_lora

    trained = tiny_model(kind, seed=4)
    torch.manual_seed(5)
    apply_lora(trained, RANK, init_b="random")
    randomize_gates(trained, 0.3)
    save_checkpoint(trained, tmp_path / "ckpt", variant=_variant_of(kind))

    merged = tiny_model(kind, seed=4)
    load_checkpoint(merged, tmp_path / "ckpt", merge_lora=True)
    assert not has_lora(merged)
    inputs = tiny_inputs(trained)
    with torch.no_grad():
        want = trained(**inputs.kwargs)
        ours = merged(**inputs.kwargs)
        base = tiny_model(kind, seed=4)
        base.cot_adapter.load_state_dict(trained.cot_adapter.state_dict())
        without_lora = base(**inputs.kwargs).sample
    assert not torch.allclose(want.sample, without_lora, atol=1e-4)
    torch.testing.assert_close(ours.sample, want.sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.plan, want.plan, rtol=1e-5, atol=1e-5)
    if kind is BackboneKind.FLUX2_KLEIN:
        assert merged.transformer.proj_out.bias is not None  # B's bias, on a bias-less Linear


def test_merging_refuses_mismatched_keys_and_a_model_with_peft_layers() -> None:
    from models.checkpoint_io import lora_state_dict, merge_lora_weights
    from models.lora import apply_lora

    trained = tiny_model(BackboneKind.FLUX2_KLEIN)
    apply_lora(trained, RANK, init_b="random")
    state = lora_state_dict(trained)
    fresh = tiny_model(BackboneKind.FLUX2_KLEIN)
    dropped = dict(state)
    dropped.pop(next(iter(dropped)))
    with pytest.raises(CheckpointError, match="missing"):
        merge_lora_weights(fresh, dropped)
    wrong = {name: torch.zeros(7, 7) if "lora_A" in name else t for name, t in state.items()}
    with pytest.raises(CheckpointError, match="do not fit"):
        merge_lora_weights(fresh, wrong)
    with pytest.raises(CheckpointError, match="peft LoRA layers"):
        merge_lora_weights(trained, state)


def _variant_of(kind: BackboneKind) -> str:
    return "tiny" if kind is BackboneKind.FLUX2_KLEIN else "tiny-kontext"
