"""Variants as data, and the meta-device parameter counts documented in docs/MODEL.md."""

from __future__ import annotations

import re

import pytest

from cotir_test_support import REPO_ROOT
from models.codecs import PixelUnshuffleCodec
from models.variants import (
    FULL_SIZE_VARIANTS,
    VARIANTS,
    count_parameters,
    format_parameter_table,
    get_variant,
)

ROW = re.compile(
    r"^\| (?P<name>cotir-\w+) \| (?P<backbone>[\d,]+) \| (?P<adapter>[\d,]+) \| (?P<lora>[\d,]+) "
    r"\| (?P<total>[\d,]+) \| (?P<trainable>[\d,]+) \|"
)


def _documented() -> dict[str, dict[str, int]]:
    text = (REPO_ROOT / "docs" / "MODEL.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            rows[match["name"]] = {
                key: int(match[key].replace(",", ""))
                for key in ("backbone", "adapter", "lora", "total", "trainable")
            }
    return rows


@pytest.mark.slow
def test_meta_device_counts_match_the_docs_table(capsys: pytest.CaptureFixture[str]) -> None:
    counts = [count_parameters(name) for name in FULL_SIZE_VARIANTS]
    with capsys.disabled():
        print("\n" + format_parameter_table(counts))
    documented = _documented()
    assert set(documented) == set(FULL_SIZE_VARIANTS)
    for row in counts:
        assert documented[row.variant] == {
            "backbone": row.backbone,
            "adapter": row.adapter,
            "lora": row.lora,
            "total": row.total,
            "trainable": row.trainable,
        }, row.variant
    by_name = {row.variant: row for row in counts}
    # The backbones are the sizes measured on the meta device; 4B and 9B totals are the paper's.
    assert round(by_name["cotir-12b"].backbone / 1e9, 2) == 11.90
    assert round(by_name["cotir-4b"].backbone / 1e9, 2) == 3.88
    assert round(by_name["cotir-9b"].backbone / 1e9, 2) == 9.08
    assert round(by_name["cotir-4b"].total / 1e9, 2) == 4.98
    assert round(by_name["cotir-9b"].total / 1e9, 2) == 11.05
    assert by_name["cotir-12b"].adapter == pytest.approx(1.0e9, rel=0.05)
    assert by_name["cotir-9b"].adapter == pytest.approx(1.8e9, rel=0.05)


def test_variants_are_consistent() -> None:
    for variant in VARIANTS.values():
        config = variant.transformer_config
        assert sum(config["axes_dims_rope"]) == config["attention_head_dim"], variant.name
        assert config["joint_attention_dim"] == variant.text_dim, variant.name
    assert get_variant("tiny").transformer_config["in_channels"] == (
        PixelUnshuffleCodec().token_channels
    )
    assert [get_variant(n).steps for n in FULL_SIZE_VARIANTS] == [20, 5, 5]
    assert all(get_variant(n).adapter_depth == 6 for n in FULL_SIZE_VARIANTS)
    assert all(get_variant(n).lora_rank == 96 for n in FULL_SIZE_VARIANTS)
    with pytest.raises(KeyError, match="known: cotir-12b"):
        get_variant("cotir-70b")


def test_kontext_gets_the_release_guidance_of_4() -> None:
    """CoTIR-12B (FLUX.1 Kontext) is fed guidance 4, as the release does; FLUX.2 none."""
    assert get_variant("cotir-12b").guidance == 4.0
    assert get_variant("cotir-4b").guidance is None
    assert get_variant("cotir-9b").guidance is None
    assert get_variant("tiny-kontext").guidance == 4.0  # the 12B path's toy mirrors it


def test_the_restorer_feeds_the_variant_guidance_to_kontext() -> None:
    import numpy as np
    import torch
    from PIL import Image

    from models.restore import CoTIRRestorer

    restorer = CoTIRRestorer.from_variant("tiny-kontext")
    seen: list[torch.Tensor] = []

    def capture(_module: object, _args: object, kwargs: dict[str, object]) -> None:
        seen.append(kwargs["guidance"])  # type: ignore[arg-type]

    handle = restorer.model.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        photo = Image.fromarray(np.full((32, 32, 3), 100, dtype=np.uint8))
        restorer.restore(photo, "Remove the haze.", steps=1)
    finally:
        handle.remove()
    assert seen
    assert all(torch.equal(value.float(), torch.tensor([4.0])) for value in seen)
