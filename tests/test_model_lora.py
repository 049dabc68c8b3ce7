"""LoRA wiring: targets, initialisation, trainable report, round trips through stock diffusers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, FluxKontextPipeline
from safetensors.torch import load_file

from models.backbones import CoTIRTransformer, build_transformer
from models.checkpoint_io import (
    ADAPTER_FILE,
    LORA_FILE,
    CheckpointError,
    load_checkpoint,
    lora_state_dict,
    read_checkpoint_meta,
    save_checkpoint,
)
from models.kinds import BackboneKind
from models.lora import (
    LORA_SCOPES,
    LORA_TARGETS,
    LoraScope,
    apply_lora,
    lora_scope_of,
    lora_target_names,
    trainable_report,
)
from models.testing import TINY_CONFIGS, TINY_TEXT_DIM, randomize_gates, tiny_inputs, tiny_model

KINDS = list(BackboneKind)

EXPECTED_SINGLE_TARGETS = {
    BackboneKind.FLUX1_KONTEXT: (
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "proj_mlp",
        "proj_out",
        "norm.linear",
    ),
    BackboneKind.FLUX2_KLEIN: ("attn.to_qkv_mlp_proj", "attn.to_out"),
}


def _expected_targets(kind: BackboneKind) -> set[str]:
    n_single = TINY_CONFIGS[kind]["num_single_layers"]
    names = {
        f"single_transformer_blocks.{i}.{layer}"
        for i in range(n_single)
        for layer in EXPECTED_SINGLE_TARGETS[kind]
    }
    return names | {"proj_out", "norm_out.linear"}


@pytest.mark.parametrize("kind", KINDS)
def test_lora_sits_on_every_single_stream_linear_and_the_final_layer_only(
    kind: BackboneKind,
) -> None:
    model = tiny_model(kind)
    single_linears = {
        f"single_transformer_blocks.{name}"
        for name, module in model.transformer.single_transformer_blocks.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    apply_lora(model, 4)
    targets = set(lora_target_names(model))
    assert targets == _expected_targets(kind)
    assert single_linears <= targets  # every Linear of the single-stream blocks
    assert not any(name.startswith("transformer_blocks.") for name in lora_target_names(model))


@pytest.mark.parametrize("kind", KINDS)
def test_zero_b_keeps_the_base_output_and_random_b_does_not(kind: BackboneKind) -> None:
    reference = tiny_model(kind)
    inputs = tiny_inputs(reference)
    with torch.no_grad():
        base = reference(**inputs.kwargs).sample
    zero = tiny_model(kind)
    apply_lora(zero, 4)
    with torch.no_grad():
        assert torch.equal(zero(**inputs.kwargs).sample, base)
    random = tiny_model(kind)
    apply_lora(random, 4, init_b="random")
    with torch.no_grad():
        assert not torch.allclose(random(**inputs.kwargs).sample, base, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_trainable_report_counts_adapter_and_lora_only(kind: BackboneKind) -> None:
    model = tiny_model(kind)
    rank = 4
    apply_lora(model, rank)
    report = trainable_report(model)
    assert set(report.counts) == {"adapter", "lora"}
    assert report.counts["adapter"] == sum(p.numel() for p in model.cot_adapter.parameters())
    modules = dict(model.transformer.named_modules())
    expected_lora = 0
    for name in lora_target_names(model):
        base = modules[name].base_layer
        expected_lora += rank * (base.in_features + base.out_features) + base.out_features
    assert report.counts["lora"] == expected_lora
    assert report.trainable == report.counts["adapter"] + expected_lora
    assert all(name.startswith("cot_adapter.") or "lora_" in name for name in report.names)
    assert "adapter" in report.format()


def test_lora_config_validates_its_arguments() -> None:
    model = tiny_model(BackboneKind.FLUX2_KLEIN)
    with pytest.raises(ValueError, match="rank"):
        apply_lora(model, 0)
    with pytest.raises(ValueError, match="init_b"):
        apply_lora(model, 4, init_b="gaussian")  # type: ignore[arg-type]
    apply_lora(model, 4)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, 4)


def test_target_regexes_do_not_match_double_stream_modules() -> None:
    for kind, pattern in LORA_TARGETS.items():
        assert not re.fullmatch(pattern, "transformer_blocks.0.attn.to_out.0"), kind
        assert not re.fullmatch(pattern, "transformer_blocks.0.ff.net.2"), kind
        assert re.fullmatch(pattern, "proj_out"), kind


# -- save / load ---------------------------------------------------------------------------


def _stock_pipeline(kind: BackboneKind, transformer: torch.nn.Module):
    scheduler = FlowMatchEulerDiscreteScheduler()
    if kind is BackboneKind.FLUX1_KONTEXT:
        return FluxKontextPipeline(
            scheduler=scheduler,
            vae=None,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=transformer,
        )
    return Flux2KleinPipeline(
        scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=transformer
    )


def _trained_like(
    kind: BackboneKind, rank: int = 4, scope: LoraScope = "paper"
) -> CoTIRTransformer:
    model = tiny_model(kind)
    torch.manual_seed(5)
    apply_lora(model, rank, init_b="random", scope=scope)
    return model


@pytest.mark.filterwarnings("ignore:.*lora_bias=True.*has no bias")  # FLUX.2: expected
@pytest.mark.parametrize(
    ("rank", "scope"),
    [(4, "paper"), (24, "paper"), (4, "text_path")],
    ids=["uncapped", "final-layer-capped", "text-path"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_saved_lora_loads_into_a_stock_diffusers_pipeline(
    kind: BackboneKind, rank: int, scope: LoraScope, tmp_path: Path
) -> None:
    """Also with per-module ranks: at 24 the tiny final ``proj_out`` (32 -> 16) is rank 16.
    The text-path scope's extra Linears load through diffusers' own loader too."""
    model = _trained_like(kind, rank, scope)  # gates stay at zero: the sample is base + LoRA
    save_checkpoint(model, tmp_path / "ckpt", variant="test")
    saved = load_file(str(tmp_path / "ckpt" / LORA_FILE))
    assert all(key.startswith("transformer.") for key in saved)
    assert any(key.endswith("lora_B.bias") for key in saved)
    assert saved["transformer.proj_out.lora_A.weight"].shape[0] == min(rank, 16)
    assert saved["transformer.norm_out.linear.lora_A.weight"].shape[0] == rank

    torch.manual_seed(0)
    stock = build_transformer(kind, TINY_CONFIGS[kind])
    stock.load_state_dict(tiny_model(kind).transformer.state_dict())
    inputs = tiny_inputs(model)
    with torch.no_grad():
        base = stock(**inputs.base_kwargs())[0]
        pipe = _stock_pipeline(kind, stock)
        pipe.load_lora_weights(str(tmp_path / "ckpt"))
        stock_out = pipe.transformer(**inputs.base_kwargs())[0]
        ours = model(**inputs.kwargs).sample
    assert not torch.allclose(ours, base, atol=1e-6)
    torch.testing.assert_close(stock_out, ours, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scope", LORA_SCOPES)
@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip_restores_adapter_and_lora(
    kind: BackboneKind, scope: LoraScope, tmp_path: Path
) -> None:
    model = _trained_like(kind, scope=scope)
    randomize_gates(model, 0.3)
    with torch.no_grad():
        for parameter in model.cot_adapter.parameters():
            parameter.add_(0.01)
    folder = save_checkpoint(model, tmp_path / "ckpt", variant="test", include_base=True)
    meta = read_checkpoint_meta(folder)
    assert meta["lora"] == {"rank": 4, "alpha": 4.0, "bias": True, "capped": {}, "scope": scope}
    assert (folder / ADAPTER_FILE).is_file()

    fresh = CoTIRTransformer.from_pretrained_base(
        kind, folder / "transformer", text_dim=TINY_TEXT_DIM, adapter_depth=2
    )
    load_checkpoint(fresh, folder)
    assert lora_scope_of(fresh) == scope
    inputs = tiny_inputs(model)
    with torch.no_grad():
        a, b = model(**inputs.kwargs), fresh(**inputs.kwargs)
    for x, y in ((a.sample, b.sample), (a.scene, b.scene), (a.plan, b.plan)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert lora_state_dict(fresh).keys() == lora_state_dict(model).keys()

    merged = CoTIRTransformer.from_pretrained_base(
        kind, folder / "transformer", text_dim=TINY_TEXT_DIM, adapter_depth=2
    )
    load_checkpoint(merged, folder, merge_lora=True)  # the inference path: LoRA in the weights
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs.kwargs).sample, a.sample, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_text_path_scope_adds_the_prompt_projection_and_the_text_stream_only(
    kind: BackboneKind,
) -> None:
    """The text path: ``context_embedder`` and every Linear of the double-stream blocks'
    text stream; the image stream, the embedders of image and time and the modulations
    stay without LoRA, and every paper target keeps its LoRA."""
    paper, text_path = tiny_model(kind), tiny_model(kind)
    apply_lora(paper, 4)
    apply_lora(text_path, 4, scope="text_path")
    added = set(lora_target_names(text_path)) - set(lora_target_names(paper))
    assert set(lora_target_names(paper)) <= set(lora_target_names(text_path))
    text_stream = {
        f"transformer_blocks.{index}.{name}"
        for index, block in enumerate(text_path.transformer.transformer_blocks)
        for name, module in block.named_modules()
        if isinstance(module, torch.nn.Linear)
        and "lora_" not in name
        and (".add_" in f".{name}" or "to_add_out" in name or "ff_context" in name)
    }
    text_stream = {name.replace(".base_layer", "") for name in text_stream}
    assert text_stream, "the tiny double-stream blocks have a text stream"
    assert added == {"context_embedder"} | text_stream
    assert lora_scope_of(paper) == "paper"
    assert lora_scope_of(text_path) == "text_path"
    with pytest.raises(ValueError, match="scope"):
        apply_lora(tiny_model(kind), 4, scope="everything")  # type: ignore[arg-type]


def test_a_checkpoint_of_another_lora_scope_is_refused_and_an_old_one_reads_as_paper(
    tmp_path: Path,
) -> None:
    kind = BackboneKind.FLUX2_KLEIN
    folder = save_checkpoint(_trained_like(kind, scope="text_path"), tmp_path / "text")
    paper_model = tiny_model(kind)
    apply_lora(paper_model, 4)
    with pytest.raises(CheckpointError, match="scope"):
        load_checkpoint(paper_model, folder)

    old = save_checkpoint(_trained_like(kind), tmp_path / "old")
    meta_file = old / "cotir.json"
    meta = json.loads(meta_file.read_text())
    del meta["lora"]["scope"]  # written before scopes existed
    meta_file.write_text(json.dumps(meta))
    fresh = tiny_model(kind)
    load_checkpoint(fresh, old)
    assert lora_scope_of(fresh) == "paper"


def test_loading_into_a_model_of_another_rank_or_backbone_fails(tmp_path: Path) -> None:
    model = _trained_like(BackboneKind.FLUX2_KLEIN)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    other_rank = tiny_model(BackboneKind.FLUX2_KLEIN)
    apply_lora(other_rank, 8)
    with pytest.raises(CheckpointError, match="rank"):
        load_checkpoint(other_rank, folder)
    with pytest.raises(CheckpointError, match="flux2-klein checkpoint"):
        load_checkpoint(tiny_model(BackboneKind.FLUX1_KONTEXT), folder)
