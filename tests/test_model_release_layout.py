"""The release's ``lora.pt`` at real sizes: every key of CoTIR-12B, 4B and 9B maps with its shape.

The release's key names and shapes are written out here from its model code (commit
a482c71): LoRA on every Linear of the single-stream blocks and of the final layer
(``cotir/model.py``, ``lora_model``), rank 96 capped at min(in, out) per Linear
(``cotir/flux/modules/lora.py``, ``LinearLora``), a bias on B. FLUX.1 single blocks hold
``linear1`` (h -> 3h + mlp), ``linear2`` (h + mlp -> h) and ``modulation.lin`` (h -> 3h)
(``cotir/flux/modules/layers.py``, ``SingleStreamBlock``); FLUX.2's hold ``linear1``
(h -> 3h + 2 mlp) and ``linear2`` (``cotir/flux2/model.py``). The final layer is
``linear`` (h -> 64 for FLUX.1 Kontext, 128 for klein) and ``adaLN_modulation.1``
(h -> 2h). The models are built on the meta device: no memory, no weights.
"""

from __future__ import annotations

import pytest
import torch

from models.backbones import CoTIRTransformer, build_transformer
from models.checkpoint_io import _infer_lora, convert_release_lora
from models.kinds import BackboneKind
from models.lora import apply_lora
from models.variants import get_variant

RELEASE_RANK = 96
#: (backbone, hidden size, MLP width, single-stream blocks, final-layer outputs).
RELEASE_SIZES = {
    "cotir-12b": (BackboneKind.FLUX1_KONTEXT, 3072, 12288, 38, 64),
    "cotir-4b": (BackboneKind.FLUX2_KLEIN, 3072, 9216, 20, 128),
    "cotir-9b": (BackboneKind.FLUX2_KLEIN, 4096, 12288, 24, 128),
}


def release_lora_shapes(variant: str, rank: int = RELEASE_RANK) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the release's ``lora.pt`` for ``variant`` (without ``module.``)."""
    kind, h, mlp, singles, out = RELEASE_SIZES[variant]
    layers = {"final_layer.linear": (h, out), "final_layer.adaLN_modulation.1": (h, 2 * h)}
    for i in range(singles):
        if kind is BackboneKind.FLUX1_KONTEXT:
            layers[f"single_blocks.{i}.linear1"] = (h, 3 * h + mlp)
            layers[f"single_blocks.{i}.modulation.lin"] = (h, 3 * h)
        else:
            layers[f"single_blocks.{i}.linear1"] = (h, 3 * h + 2 * mlp)
        layers[f"single_blocks.{i}.linear2"] = (h + mlp, h)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, (fan_in, fan_out) in layers.items():
        r = min(rank, fan_in, fan_out)
        shapes[f"{name}.lora_A.weight"] = (r, fan_in)
        shapes[f"{name}.lora_B.weight"] = (fan_out, r)
        shapes[f"{name}.lora_B.bias"] = (fan_out,)
    return shapes


def _meta_model(variant_name: str) -> CoTIRTransformer:
    variant = get_variant(variant_name)
    transformer = build_transformer(
        variant.backbone, dict(variant.transformer_config), device="meta"
    )
    with torch.device("meta"):
        model = CoTIRTransformer.with_new_adapter(
            transformer, text_dim=variant.text_dim, adapter_depth=variant.adapter_depth
        )
        apply_lora(model, variant.lora_rank)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    return model


@pytest.mark.parametrize("variant_name", sorted(RELEASE_SIZES))
def test_every_release_lora_key_maps_onto_our_lora_with_its_shape(variant_name: str) -> None:
    kind, h, mlp, _, _ = RELEASE_SIZES[variant_name]
    release = {
        f"module.{name}": torch.empty(shape, device="meta")
        for name, shape in release_lora_shapes(variant_name).items()
    }
    converted = convert_release_lora(
        release,
        kind,
        hidden_size=h,
        mlp_hidden_dim=mlp if kind is BackboneKind.FLUX1_KONTEXT else None,
    )
    assert _infer_lora(converted) == (RELEASE_RANK, True)

    model = _meta_model(variant_name)
    ours = {
        name.replace(".default.", "."): tuple(parameter.shape)
        for name, parameter in model.transformer.named_parameters()
        if "lora_" in name
    }
    mapped = {name: tuple(tensor.shape) for name, tensor in converted.items()}
    assert sorted(set(ours) - set(mapped)) == [], "our LoRA keys the release file lacks"
    assert sorted(set(mapped) - set(ours)) == [], "release keys with no LoRA of ours"
    wrong = {name: (mapped[name], ours[name]) for name in ours if mapped[name] != ours[name]}
    assert wrong == {}


def test_the_12b_final_layer_is_rank_64_in_the_release_and_in_our_training() -> None:
    """CoTIR-12B's ``final_layer.linear`` is 3072 -> 64: the release stores rank 64 there."""
    shapes = release_lora_shapes("cotir-12b")
    assert shapes["final_layer.linear.lora_A.weight"] == (64, 3072)
    assert shapes["final_layer.adaLN_modulation.1.lora_A.weight"] == (96, 3072)
    model = _meta_model("cotir-12b")
    named = dict(model.transformer.named_parameters())
    assert tuple(named["proj_out.lora_A.default.weight"].shape) == (64, 3072)
    assert tuple(named["single_transformer_blocks.0.proj_out.lora_A.default.weight"].shape) == (
        96,
        15360,
    )
    # Every module keeps the release's scale of 1.0 (alpha equals each module's rank).
    scalings = {
        name: module.scaling["default"]
        for name, module in model.transformer.named_modules()
        if hasattr(module, "scaling") and "default" in getattr(module, "scaling", {})
    }
    assert set(scalings.values()) == {1.0}
