"""Shard format and manifest: what the public loader and webdataset rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset

from cotir_pipeline.shards import (
    MANIFEST_SCHEMA,
    ShardSample,
    decode_png,
    encode_png,
    manifest_bytes,
    read_manifest,
    read_shard,
    sample_id,
    write_shard,
)


def _samples(count: int) -> list[ShardSample]:
    generator = np.random.default_rng(0)
    samples = []
    for index in range(count):
        hq = generator.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
        lq = (hq // 2).astype(np.uint8)
        samples.append(
            ShardSample(
                key=f"s{index:04d}",
                hq_png=encode_png(hq),
                lq_png=encode_png(lq),
                meta={"deg": "noise", "index": index},
            )
        )
    return samples


def test_png_round_trip_is_lossless() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(31, 17, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(image)), image)
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_png(image.astype(np.float32))


def test_shard_round_trip_and_deterministic_bytes(tmp_path: Path) -> None:
    samples = _samples(5)
    first = write_shard(samples, tmp_path / "a.tar")
    write_shard(samples, tmp_path / "b.tar")
    assert first.samples == 5
    assert first.size_bytes == (tmp_path / "a.tar").stat().st_size
    same = (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert same, "the same samples must give byte-identical shards"
    read = list(read_shard(tmp_path / "a.tar"))
    assert [sample.key for sample in read] == [sample.key for sample in samples]
    assert read[3].meta == {"deg": "noise", "index": 3}
    assert read[3].hq_png == samples[3].hq_png


def test_shards_are_readable_by_webdataset(tmp_path: Path) -> None:
    write_shard(_samples(3), tmp_path / "000000.tar")
    dataset = webdataset.WebDataset(str(tmp_path / "000000.tar"), shardshuffle=False)
    records = list(dataset)
    assert [record["__key__"] for record in records] == ["s0000", "s0001", "s0002"]
    assert set(records[0]) >= {"hq.png", "lq.png", "meta.json"}
    assert json.loads(records[1]["meta.json"])["index"] == 1


@pytest.mark.parametrize("bad_key", ["", "a.b", "a/b"])
def test_keys_that_break_webdataset_are_rejected(tmp_path: Path, bad_key: str) -> None:
    sample = _samples(1)[0]
    with pytest.raises(ValueError, match="shard key"):
        write_shard([ShardSample(bad_key, sample.hq_png, sample.lq_png, {})], tmp_path / "x.tar")


def test_sample_id_is_a_stable_content_hash() -> None:
    base = sample_id("rain13k", "train/1.png", ["aa", "bb"], "", None)
    assert base == sample_id("rain13k", "train/1.png", ["aa", "bb"], "", None)
    assert len(base) == 32
    variants = {
        sample_id("rain13k", "train/2.png", ["aa", "bb"], "", None),
        sample_id("rain13k", "train/1.png", ["aa", "bc"], "", None),
        sample_id("rain13k", "train/1.png", ["aa", "bb"], "[]", None),
        sample_id("rain13k", "train/1.png", ["aa", "bb"], "", 7),
        sample_id("other", "train/1.png", ["aa", "bb"], "", None),
    }
    assert base not in variants
    assert len(variants) == 5


def test_manifest_round_trip_sorted_by_sample_id() -> None:
    rows = [
        {
            "sample_id": "b",
            "source": "s",
            "item_key": "2",
            "split": "train",
            "degradation": "noise",
            "task": "DN",
            "status": "ok",
        },
        {
            "sample_id": "a",
            "source": "s",
            "item_key": "1",
            "split": "train",
            "degradation": "noise",
            "task": "DN",
            "status": "dropped",
            "reason": "corrupt",
        },
    ]
    table = read_manifest(manifest_bytes(rows))
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert table.column("sample_id").to_pylist() == ["a", "b"]
    assert table.column("reason").to_pylist() == ["corrupt", None]
    with pytest.raises(ValueError, match="unknown fields"):
        manifest_bytes([{**rows[0], "colour": "red"}])
