"""The annotation stage over real pair shards: annotate, filter, final training shards."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import webdataset

from cotir_pipeline.annotation.clip_filter import ConsistencyFilter
from cotir_pipeline.annotation.template_backend import TemplateBackend
from cotir_pipeline.annotation_stage import (
    annotate_source,
    filter_source,
    write_training_shards,
)
from cotir_pipeline.pair_stage import plan_demo_pairs, recipe_refs, write_pair_shards
from cotir_pipeline.shards import read_manifest, read_shard
from cotir_pipeline.store import LocalObjectStore


@pytest.fixture(scope="module")
def sharded_store(tmp_path_factory: pytest.TempPathFactory) -> LocalObjectStore:
    plan = plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=0
    )
    ok = [pair for pair in plan if pair.status == "ok"]
    subset = [p for p in ok if p.split == "train"][:30] + [p for p in ok if p.split == "bench"][:6]
    store = LocalObjectStore(tmp_path_factory.mktemp("store"))
    write_pair_shards(store, subset, size=48, shard_size=8)
    return store


class CountingBackend(TemplateBackend):
    """The template backend, counting the samples it is asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def annotate(self, requests):  # type: ignore[no-untyped-def]
        self.asked += [request.sample_id for request in requests]
        return super().annotate(requests)


def test_the_stage_yields_release_format_training_shards(sharded_store: LocalObjectStore) -> None:
    backend = CountingBackend()
    annotated = annotate_source(sharded_store, "demo", backend)
    assert (annotated.ok, annotated.not_ok) == (36, 0)
    # A re-run asks nothing again.
    again = CountingBackend()
    rerun = annotate_source(sharded_store, "demo", again)
    assert again.asked == []
    assert rerun.shards_skipped == rerun.shards_total

    filtered = filter_source(sharded_store, "demo", ConsistencyFilter())
    assert filtered.ok + filtered.not_ok == 36
    report = write_training_shards(sharded_store, ["demo"], shard_size=10)
    # Bench photos never reach the training shards.
    assert report.samples == filtered.ok - 6

    tars = sorted(
        str(sharded_store.root / info.key)
        for info in sharded_store.list("training_shards/")
        if info.key.endswith(".tar")
    )
    records = list(webdataset.WebDataset(tars, shardshuffle=False))
    assert len(records) == report.samples
    meta = json.loads(records[0]["meta.json"])
    assert len(meta["cot"]["questions"]) == 2
    assert meta["cot"]["answers"].startswith("scene description:")
    assert " degradation description: " in meta["cot"]["answers"]
    assert " enhancement plan: " in meta["cot"]["answers"]
    assert " answer: " in meta["cot"]["answers"]
    assert meta["deg"] == records[0]["__url__"].split("/")[-2]

    # The asset's check agrees with what was written, and names what a damage breaks.
    from assets.annotation_stage import _training_shard_problems

    assert _training_shard_problems(sharded_store) == []
    first_tar = next(
        info.key for info in sharded_store.list("training_shards/") if info.key.endswith(".tar")
    )
    data = sharded_store.get_bytes(first_tar)
    sharded_store.delete(first_tar)
    problems = _training_shard_problems(sharded_store)
    assert problems == [f"missing shard {sharded_store.uri(first_tar)}"]
    sharded_store.put_bytes(first_tar, data)
    assert _training_shard_problems(sharded_store) == []


def test_training_images_are_the_pair_shard_bytes(sharded_store: LocalObjectStore) -> None:
    """Images are copied, never re-encoded."""
    manifest = read_manifest(sharded_store.get_bytes("training_shards/manifest.parquet"))
    row = manifest.to_pylist()[0]
    with tempfile.TemporaryDirectory() as work:
        pair_tar = Path(work) / "pair.tar"
        train_tar = Path(work) / "train.tar"
        sharded_store.download_file(
            row["pair_shard_uri"].removeprefix(sharded_store.url + "/"), pair_tar
        )
        sharded_store.download_file(
            row["shard_uri"].removeprefix(sharded_store.url + "/"), train_tar
        )
        pair = {s.key: s for s in read_shard(pair_tar)}[row["sample_id"]]
        train = {s.key: s for s in read_shard(train_tar)}[row["sample_id"]]
    assert train.hq_png == pair.hq_png
    assert train.lq_png == pair.lq_png


def test_a_rerun_with_the_same_decisions_writes_nothing(sharded_store: LocalObjectStore) -> None:
    shards = sorted(sharded_store.root.rglob("training_shards/*/*.tar"))
    before = {path: path.stat().st_mtime_ns for path in shards}
    report = write_training_shards(sharded_store, ["demo"], shard_size=10)
    assert report.shards_written == 0
    assert report.shards_skipped == report.shards_total
    assert {path: path.stat().st_mtime_ns for path in shards} == before


def test_missing_pair_shards_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no finished pair shards"):
        annotate_source(LocalObjectStore(tmp_path), "nowhere", TemplateBackend())
