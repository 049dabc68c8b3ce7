"""From planned pairs to shards: planning, bad inputs, resume and idempotence."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cotir_pipeline import demo_photos
from cotir_pipeline.pair_stage import (
    PlannedPair,
    load_plan,
    plan_demo_pairs,
    plan_fetched_pairs,
    recipe_refs,
    save_plan,
    write_pair_shards,
)
from cotir_pipeline.shards import read_manifest, read_shard
from cotir_pipeline.sources.spec import SplitRule
from cotir_pipeline.store import LocalObjectStore, ObjectStore
from cotir_pipeline.tasks import parse_degradation_label


@pytest.fixture(scope="module")
def demo_plan() -> list[PlannedPair]:
    return plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=0
    )


def test_demo_plan_meets_the_demo_contract(demo_plan: list[PlannedPair]) -> None:
    ok = [pair for pair in demo_plan if pair.status == "ok"]
    assert len(ok) >= 500
    labels = Counter(pair.degradation for pair in ok)
    atoms = {part for label in labels for part in parse_degradation_label(label)}
    assert len(atoms) >= 8
    assert any("+" in label for label in labels), "the demo needs composite degradations"
    # Train and bench never share a photograph.
    photos_by_split: dict[str, set[str]] = {"train": set(), "bench": set()}
    group_of = {photo.photo_id: photo.group for photo in demo_photos.DEMO_PHOTOS}
    for pair in ok:
        photos_by_split[pair.split].add(group_of[pair.item_key.split("/")[0]])
    assert photos_by_split["bench"]
    assert photos_by_split["train"].isdisjoint(photos_by_split["bench"])
    # Each patch gets distinct recipes; skipped patches are kept with their reason.
    per_patch = Counter((pair.item_key, pair.recipe) for pair in ok)
    assert max(per_patch.values()) == 1
    assert all(pair.reason for pair in demo_plan if pair.status != "ok")


def test_demo_plan_is_deterministic_and_seeded(demo_plan: list[PlannedPair]) -> None:
    again = plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=0
    )
    assert again == demo_plan
    other = plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=1
    )
    assert [p.recipe for p in other] != [p.recipe for p in demo_plan]


def test_plan_round_trips_through_the_store(tmp_path: Path, demo_plan: list[PlannedPair]) -> None:
    store = LocalObjectStore(tmp_path)
    save_plan(store, "demo", demo_plan)
    assert load_plan(store, "demo") == demo_plan


def _write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3))
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture
def fetched_source(tmp_path: Path) -> tuple[Path, list[SplitRule]]:
    """A tiny extracted dataset: 3 LQ per HQ, an SR pair, a corrupt file, an orphan."""
    root = tmp_path / "extracted"
    for index in range(3):
        _write_image(root / "train" / "gt" / f"{index}.png", (96, 80), seed=index)
        for variant in range(3):
            _write_image(root / "train" / "rain" / f"{index}_{variant}.png", (96, 80), seed=9)
    (root / "train" / "rain" / "2_2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _write_image(root / "train" / "rain" / "7_0.png", (96, 80), seed=3)  # no HQ with key 7
    _write_image(root / "test" / "hr" / "a.png", (64, 64), seed=4)
    _write_image(root / "test" / "lr" / "a.png", (16, 16), seed=5)  # x4 super-resolution
    rules = [
        SplitRule(
            name="train",
            lq_glob="train/rain/*.png",
            hq_glob="train/gt/*.png",
            lq_key=r"^(?P<key>\d+)_\d+$",
        ),
        SplitRule(
            name="test",
            lq_glob="test/lr/*.png",
            hq_glob="test/hr/*.png",
            degradation="low_resolution",
        ),
    ]
    return root, rules


def test_fetched_pairs_record_every_file(fetched_source: tuple[Path, list[SplitRule]]) -> None:
    root, rules = fetched_source
    plan = plan_fetched_pairs("toy", root, rules, "rain")
    ok = [pair for pair in plan if pair.status == "ok"]
    assert len(ok) == 9 + 1
    assert {pair.degradation for pair in ok} == {"rain", "low_resolution"}
    dropped = [pair for pair in plan if pair.status == "dropped"]
    assert [pair.item_key for pair in dropped] == ["train/train/rain/7_0.png"]
    assert "unpaired" in (dropped[0].reason or "")


def _shard_all(store: ObjectStore, plan: list[PlannedPair], root: Path | None):  # type: ignore[no-untyped-def]
    return write_pair_shards(store, plan, size=32, shard_size=4, fetched_root=root)


def test_bad_inputs_are_dropped_with_a_reason_and_shards_are_readable(
    tmp_path: Path, fetched_source: tuple[Path, list[SplitRule]]
) -> None:
    root, rules = fetched_source
    plan = plan_fetched_pairs("toy", root, rules, "rain")
    store = LocalObjectStore(tmp_path / "store")
    report = _shard_all(store, plan, root)
    assert report.samples_ok == 9  # 10 planned pairs, one with a truncated LQ file
    assert report.samples_dropped == 2  # the truncated file and the orphan
    assert report.samples_failed == 0
    manifest = read_manifest(store.get_bytes("pair_shards/toy/manifest.parquet")).to_pylist()
    assert len(manifest) == len(plan)
    truncated = [row for row in manifest if row["item_key"].endswith("2_2.png")]
    assert truncated[0]["status"] == "dropped"
    assert "corrupt or truncated image" in truncated[0]["reason"]
    sizes = json.loads(store.get_text("pair_shards/toy/rain/sizes.json"))
    assert sum(sizes.values()) == 8
    assert store.exists("pair_shards/toy/_SUCCESS.json")
    # The encoder of the shards is part of the stage's provenance.
    assert json.loads(store.get_text("pair_shards/toy/report.json"))["png_encoder"].startswith(
        "fpng "
    )
    # Every ok row points at a real sample of its shard, at the stored size.
    by_key = {row["shard_key"]: row for row in manifest if row["status"] == "ok"}
    tars = [info.key for info in store.list("pair_shards/toy/") if info.key.endswith(".tar")]
    seen = 0
    for key in tars:
        local = tmp_path / "check.tar"
        store.download_file(key, local)
        for sample in read_shard(local):
            row = by_key[sample.key]
            assert row["shard_uri"] == store.uri(key)
            assert sample.meta["deg"] == row["degradation"]
            with Image.open(io.BytesIO(sample.lq_png)) as image:
                assert image.size == (32, 32)
            seen += 1
    assert seen == 9


def test_rerun_writes_nothing_and_resume_rebuilds_only_missing_shards(
    tmp_path: Path, fetched_source: tuple[Path, list[SplitRule]]
) -> None:
    root, rules = fetched_source
    plan = plan_fetched_pairs("toy", root, rules, "rain")
    store = LocalObjectStore(tmp_path / "store")
    first = _shard_all(store, plan, root)
    tar_keys = sorted(i.key for i in store.list("pair_shards/toy/") if i.key.endswith(".tar"))
    before = {key: (store.root / key).stat().st_mtime_ns for key in tar_keys}

    again = _shard_all(store, plan, root)
    assert (again.shards_written, again.shards_skipped) == (0, first.shards_total)
    assert {key: (store.root / key).stat().st_mtime_ns for key in tar_keys} == before
    assert again.samples_ok == first.samples_ok

    # A crash after the tar but before its manifest: only that shard is redone.
    victim = tar_keys[0]
    store.delete(victim.removesuffix(".tar") + ".parquet")
    resumed = _shard_all(store, plan, root)
    assert (resumed.shards_written, resumed.shards_skipped) == (1, first.shards_total - 1)
    assert resumed.samples_ok == first.samples_ok


def test_unexpected_errors_are_failures_that_the_next_run_retries(
    tmp_path: Path, fetched_source: tuple[Path, list[SplitRule]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cotir_pipeline.pair_stage as pair_stage

    root, rules = fetched_source
    plan = plan_fetched_pairs("toy", root, rules, "rain")
    store = LocalObjectStore(tmp_path / "store")
    original = pair_stage.square_to_size

    def flaky(image: np.ndarray, size: int) -> tuple[np.ndarray, list[int]]:
        if image.shape[0] == 64:  # the test split's HR image: fail like a full disk would
            raise OSError("No space left on device")
        return original(image, size)

    monkeypatch.setattr(pair_stage, "square_to_size", flaky)
    broken = _shard_all(store, plan, root)
    assert broken.samples_failed == 1
    assert not store.exists("pair_shards/toy/_SUCCESS.json")
    manifest = read_manifest(store.get_bytes("pair_shards/toy/manifest.parquet")).to_pylist()
    failed = [row for row in manifest if row["status"] == "failed"]
    assert "No space left on device" in failed[0]["reason"]

    monkeypatch.setattr(pair_stage, "square_to_size", original)
    fixed = _shard_all(store, plan, root)
    assert fixed.samples_failed == 0
    assert fixed.shards_written == 1  # only the shard that held the failure
    assert store.exists("pair_shards/toy/_SUCCESS.json")
    # One sample-id rule for every status: the retried failure kept its id.
    manifest = read_manifest(store.get_bytes("pair_shards/toy/manifest.parquet")).to_pylist()
    retried = next(row for row in manifest if row["item_key"] == failed[0]["item_key"])
    assert retried["status"] == "ok"
    assert retried["sample_id"] == failed[0]["sample_id"]


def test_a_synthetic_pair_that_failed_keeps_its_id_when_retried(
    tmp_path: Path, demo_plan: list[PlannedPair], monkeypatch: pytest.MonkeyPatch
) -> None:
    # materialize_pair imports apply_recipe from the package when it runs.
    import cotir_pipeline.degradations as degradations

    plan = [pair for pair in demo_plan if pair.status == "ok"][:3]
    store = LocalObjectStore(tmp_path / "store")

    real = degradations.apply_recipe

    def failing(*args: object, **kwargs: object) -> object:
        raise MemoryError("out of memory while degrading")

    monkeypatch.setattr(degradations, "apply_recipe", failing)
    broken = write_pair_shards(store, plan, size=64, shard_size=8)
    assert broken.samples_failed == 3
    before = read_manifest(store.get_bytes("pair_shards/demo/manifest.parquet")).to_pylist()
    monkeypatch.setattr(degradations, "apply_recipe", real)
    fixed = write_pair_shards(store, plan, size=64, shard_size=8)
    assert fixed.samples_ok == 3
    after = read_manifest(store.get_bytes("pair_shards/demo/manifest.parquet")).to_pylist()
    assert {row["status"] for row in before} == {"failed"}
    assert {row["status"] for row in after} == {"ok"}
    assert sorted(row["sample_id"] for row in before) == sorted(row["sample_id"] for row in after)


def test_demo_shards_are_identical_on_every_store(
    store: ObjectStore, demo_plan: list[PlannedPair], tmp_path: Path
) -> None:
    """A slice of the demo source gives the same samples on a folder, on S3, and twice."""
    subset = [pair for pair in demo_plan if pair.status == "ok"][:12]
    reference = LocalObjectStore(tmp_path / "reference")

    def digests(target: ObjectStore) -> list[tuple[str, str, str]]:
        report = write_pair_shards(target, subset, size=64, shard_size=5)
        assert report.samples_ok == 12
        rows = read_manifest(target.get_bytes("pair_shards/demo/manifest.parquet")).to_pylist()
        return sorted((row["sample_id"], row["lq_sha256"], row["hq_sha256"]) for row in rows)

    on_store = digests(store)
    assert len({sample for sample, _, _ in on_store}) == 12
    assert on_store == digests(reference)


def test_mismatched_and_unusual_inputs(tmp_path: Path) -> None:
    root = tmp_path / "extracted"
    _write_image(root / "hq" / "wide.png", (96, 64), seed=1)
    _write_image(root / "lq" / "wide.png", (40, 80), seed=2)  # other aspect ratio
    _write_image(root / "hq" / "grey.png", (64, 64), seed=3)
    Image.new("L", (64, 64), 90).save(root / "lq" / "grey.png")
    _write_image(root / "hq" / "empty.png", (64, 64), seed=4)
    (root / "lq" / "empty.png").write_bytes(b"")
    rules = [SplitRule(name="train", lq_glob="lq/*.png", hq_glob="hq/*.png")]
    plan = plan_fetched_pairs("odd", root, rules, "noise")
    store = LocalObjectStore(tmp_path / "store")
    report = write_pair_shards(store, plan, size=32, shard_size=10, fetched_root=root)
    assert (report.samples_ok, report.samples_dropped, report.samples_failed) == (1, 2, 0)
    rows = {
        row["item_key"].rsplit("/", 1)[-1]: row
        for row in read_manifest(store.get_bytes("pair_shards/odd/manifest.parquet")).to_pylist()
    }
    assert "differ in aspect ratio" in rows["wide.png"]["reason"]
    assert "empty file" in rows["empty.png"]["reason"]
    assert rows["grey.png"]["status"] == "ok"
    assert "lq: L: grayscale replicated to RGB" in rows["grey.png"]["notes"]
    assert rows["grey.png"]["crop_box"] == [0, 0, 64, 64]
