"""The shard checks catch what they promise: missing samples, stray samples, duplicates."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from cotir_pipeline.pair_stage import plan_demo_pairs, recipe_refs, write_pair_shards
from cotir_pipeline.shard_checks import preview_grid_png, verify_source_shards
from cotir_pipeline.shards import manifest_bytes, read_manifest, read_shard, write_shard
from cotir_pipeline.store import LocalObjectStore

PREFIX = "pair_shards/demo"


@pytest.fixture
def sharded(tmp_path: Path) -> LocalObjectStore:
    plan = plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=0
    )
    store = LocalObjectStore(tmp_path / "store")
    write_pair_shards(store, [p for p in plan if p.status == "ok"][:20], size=48, shard_size=4)
    return store


def test_a_clean_source_passes_with_a_preview(sharded: LocalObjectStore) -> None:
    result = verify_source_shards(sharded, PREFIX)
    assert result.manifest_matches_shards
    assert result.duplicate_ids == []
    assert result.rows_without_reason == []
    assert result.shards_checked == result.shards_total > 0
    assert sum(result.by_task.values()) == 20
    with Image.open(io.BytesIO(preview_grid_png(result.preview_samples, tile=32))) as grid:
        assert grid.size == (68, 32 * len(result.preview_samples))


def test_a_sample_missing_from_its_shard_is_reported(
    sharded: LocalObjectStore, tmp_path: Path
) -> None:
    key = next(i.key for i in sharded.list(PREFIX + "/") if i.key.endswith(".tar"))
    local = tmp_path / "shard.tar"
    sharded.download_file(key, local)
    samples = list(read_shard(local))
    write_shard(samples[1:], local)
    sharded.put_file(key, local)
    result = verify_source_shards(sharded, PREFIX)
    assert not result.manifest_matches_shards
    assert "1 manifest rows without a sample" in result.mismatches[0]


def test_duplicates_and_silent_drops_are_reported(sharded: LocalObjectStore) -> None:
    rows = read_manifest(sharded.get_bytes(PREFIX + "/manifest.parquet")).to_pylist()
    rows.append(dict(rows[0]))
    rows[1] = {**rows[1], "status": "dropped", "reason": None}
    sharded.put_bytes(PREFIX + "/manifest.parquet", manifest_bytes(rows))
    result = verify_source_shards(sharded, PREFIX)
    assert result.duplicate_ids == [rows[0]["sample_id"]]
    assert result.rows_without_reason == [rows[1]["sample_id"]]
