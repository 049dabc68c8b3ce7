"""Training data: round-robin order, resampling, bad-record skips, splits, resumable position."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from PIL import Image

from cotir_pipeline.store import S3ObjectStore
from models.data import (
    DataPosition,
    DegradationStream,
    NoTrainingDataError,
    SkipCounter,
    TrainingStream,
    decode_record,
    discover_shards,
    image_to_tensor,
    make_loader,
    read_shard_records,
    resolve_shard_source,
)
from models.train_config import TrainConfig, config_for_variant
from training_shards_support import (
    DEGRADATIONS,
    make_sample,
    members_of,
    write_raw_tar,
    write_shards,
)


@pytest.fixture(scope="module")
def config() -> TrainConfig:
    return config_for_variant("tiny")


def _keys(batch_list: list) -> list[str]:  # type: ignore[type-arg]
    return [key for batch in batch_list for key in batch.keys]


def test_discover_shards(shard_root: Path, tmp_path: Path) -> None:
    found = discover_shards(shard_root)
    assert sorted(found) == sorted(DEGRADATIONS)
    assert all(len(paths) == 1 and paths[0].endswith(".tar") for paths in found.values())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_shards(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="holds no"):
        discover_shards(tmp_path)


def test_strict_round_robin_with_reshuffled_order(shard_root: Path, config: TrainConfig) -> None:
    stream = TrainingStream(discover_shards(shard_root), config, seed=0)
    rounds = []
    for _ in range(12):
        order = [stream.next_sample(0, 16)[0].degradation for _ in DEGRADATIONS]
        assert sorted(order) == sorted(DEGRADATIONS)  # every type once per round
        rounds.append(tuple(order))
    assert len(set(rounds)) > 3  # the order is reshuffled between rounds
    assert stream.rounds == 12


def test_batches_follow_the_stages(shard_root: Path, config: TrainConfig) -> None:
    stream = TrainingStream(discover_shards(shard_root), config, seed=0)
    for step, (patch, size) in {0: (16, 4), 8: (32, 3), 16: (48, 2), 40: (64, 2)}.items():
        batch = stream.next_batch(step)
        assert batch.lq.shape == (size, 3, patch, patch)
        assert batch.hq.shape == (size, 3, patch, patch)
        assert batch.lq.dtype == torch.float32
        assert float(batch.hq.min()) >= -1.0
        assert float(batch.hq.max()) <= 1.0
        assert len(batch.prompts) == len(batch.answers) == size
        assert all(answer.startswith("scene description:") for answer in batch.answers)


def test_resampling_never_ends(tmp_path: Path) -> None:
    root = write_shards(tmp_path, ["haze"], samples_per_shard=2, shards_per_degradation=2)
    shards = discover_shards(root)["haze"]
    stream = DegradationStream(
        "haze", shards, seed=1, split_index=0, split_count=1, skips=SkipCounter()
    )
    keys = [next(stream)["__key__"] for _ in range(40)]  # ten times the four records
    assert Counter(keys).keys() == {"hazex0x0", "hazex0x1", "hazex1x0", "hazex1x1"}
    assert stream.draws == 20
    # Shards are drawn with replacement: some shard comes twice in a row.
    shard_of = [key.split("x")[1] for key in keys[::2]]
    assert any(a == b for a, b in itertools.pairwise(shard_of))


def _bad_shard(path: Path) -> list[str]:
    """A shard with one good record and one record per kind of damage."""
    good = make_sample("good", "haze")
    mismatch = make_sample("mismatch", "haze", size=32)
    small = make_sample("small", "haze", size=16)
    bad_cot = make_sample("badcot", "haze")
    bad_cot_meta = {"cot": {"questions": ["a", "b"], "answers": "no prefixes here"}}
    members = members_of(good)
    members += [("broken.hq.png", b"not a png"), ("broken.lq.png", b"nope")]
    members += [("broken.meta.json", json.dumps(dict(good.meta)).encode())]
    members += [("nometa.hq.png", good.hq_png), ("nometa.lq.png", good.lq_png)]
    members += [
        ("badjson.hq.png", good.hq_png),
        ("badjson.lq.png", good.lq_png),
        ("badjson.meta.json", b"{not json"),
    ]
    members += [(name, data) for name, data in members_of(bad_cot) if "meta" not in name]
    members += [("badcot.meta.json", json.dumps(bad_cot_meta).encode())]
    members += [
        ("mismatch.hq.png", mismatch.hq_png),
        ("mismatch.lq.png", small.lq_png),
        ("mismatch.meta.json", json.dumps(dict(mismatch.meta)).encode()),
    ]
    write_raw_tar(path, members)
    return ["good"]


def test_bad_records_are_skipped_and_counted(tmp_path: Path, config: TrainConfig) -> None:
    _bad_shard(tmp_path / "haze" / "haze-000000.tar")
    truncated = tmp_path / "noise" / "noise-000000.tar"
    write_shards(tmp_path, ["noise"], samples_per_shard=3)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2 + 100])  # cut inside the second record
    stream = TrainingStream(discover_shards(tmp_path), config, seed=0)
    samples = [stream.next_sample(0, 16)[0] for _ in range(20)]
    keys = {sample.key for sample in samples}
    assert "good" in keys
    assert keys <= {"good", "noisex0x0", "noisex0x1", "noisex0x2"}
    counts = stream.skips.counts
    assert counts["bad_image"] >= 1
    assert counts["missing_field"] >= 1
    assert counts["bad_meta"] >= 1
    assert counts["bad_cot"] >= 1
    assert counts["size_mismatch"] >= 1
    assert counts["tar_error"] >= 1
    assert stream.skips.examples  # messages kept for the run report
    # Each bad record is counted once per shard draw.
    draws = stream.streams["haze"].draws
    assert counts["size_mismatch"] in (draws, draws - 1)


def test_a_degradation_without_usable_records_is_dropped(
    tmp_path: Path, config: TrainConfig
) -> None:
    write_shards(tmp_path, ["rain"], samples_per_shard=2)
    write_raw_tar(tmp_path / "haze" / "haze-000000.tar", [("x.hq.png", b"junk")])
    stream = TrainingStream(discover_shards(tmp_path), config, seed=0)
    names = [stream.next_sample(0, 16)[0].degradation for _ in range(6)]
    assert set(names) == {"rain"}
    assert stream.streams["haze"].exhausted
    assert stream.skips.counts["exhausted"] == 1
    only_bad = tmp_path / "only_bad"
    write_raw_tar(only_bad / "haze" / "haze-000000.tar", [("x.hq.png", b"junk")])
    with pytest.raises(NoTrainingDataError, match="no degradation gives a usable sample"):
        TrainingStream(discover_shards(only_bad), config, seed=0).next_sample(0, 16)


def test_shared_shards_are_split_by_record(tmp_path: Path) -> None:
    """Fewer shards than splits: splits read disjoint records of the same shard draw."""
    root = write_shards(tmp_path, ["haze"], samples_per_shard=6)
    shards = discover_shards(root)["haze"]
    per_split = []
    for index in range(2):
        stream = DegradationStream(
            "haze", shards, seed=5, split_index=index, split_count=2, skips=SkipCounter()
        )
        per_split.append([next(stream)["__key__"] for _ in range(3)])  # the first draw
    assert set(per_split[0]).isdisjoint(per_split[1])
    assert set(per_split[0]) | set(per_split[1]) == {f"hazex0x{i}" for i in range(6)}


def test_many_shards_are_split_by_shard(tmp_path: Path) -> None:
    root = write_shards(tmp_path, ["haze"], samples_per_shard=2, shards_per_degradation=4)
    shards = discover_shards(root)["haze"]
    for index in range(2):
        stream = DegradationStream(
            "haze", shards, seed=5, split_index=index, split_count=2, skips=SkipCounter()
        )
        shard_ids = {next(stream)["__key__"].split("x")[1] for _ in range(20)}
        assert shard_ids == {str(index), str(index + 2)}


def test_ranks_see_different_samples(shard_root: Path, config: TrainConfig) -> None:
    shards = discover_shards(shard_root)
    seen = []
    for rank in range(2):
        stream = TrainingStream(shards, config, seed=0, rank=rank, world_size=2)
        seen.append([stream.next_sample(0, 16)[0].key for _ in range(4)])
    # One round each: the same four types, never the same record of a type.
    assert set(seen[0]).isdisjoint(seen[1])


def _resume_matches(
    shards: dict[str, list[str]], config: TrainConfig, make: Callable[..., TrainingStream]
) -> None:
    reference = make()
    batches = [reference.next_batch(step) for step in range(10)]
    restored = make()
    restored.load_state_dict(batches[4].state)
    for step in range(5, 10):
        again = restored.next_batch(step)
        assert again.keys == batches[step].keys
        assert again.prompts == batches[step].prompts
        assert torch.equal(again.lq, batches[step].lq)


def test_stream_position_resumes_exactly(tmp_path: Path, config: TrainConfig) -> None:
    root = write_shards(tmp_path, ["haze", "rain", "noise"], samples_per_shard=5)
    # A bad record too: skips must not be double-counted after a resume.
    _bad_shard(root / "lost_color" / "lost_color-000000.tar")
    shards = discover_shards(root)

    def make() -> TrainingStream:
        return TrainingStream(shards, config, seed=3, rank=1, world_size=2)

    _resume_matches(shards, config, make)
    reference = make()
    batches = [reference.next_batch(step) for step in range(10)]
    restored = make()
    restored.load_state_dict(batches[4].state)
    for step in range(5, 10):
        restored.next_batch(step)
    assert restored.skips.counts == reference.skips.counts
    assert restored.samples_per_degradation() == reference.samples_per_degradation()


def test_loader_with_workers_is_ordered_split_and_resumable(
    shard_root: Path, config: TrainConfig
) -> None:
    shards = discover_shards(shard_root)
    workers_config = config.with_overrides(num_workers=2)

    def batches(start: int, position: DataPosition) -> list:  # type: ignore[type-arg]
        loader = make_loader(
            shards,
            workers_config,
            seed=0,
            rank=0,
            world_size=1,
            start_step=start,
            stop_step=10,
            position=position,
        )
        out = []
        for batch in loader:
            position.update(batch)
            out.append(batch)
        return out

    position = DataPosition(2)
    full = batches(0, position)
    assert [b.step for b in full] == list(range(10))
    assert [b.stream for b in full] == [s % 2 for s in range(10)]
    # The two workers are two splits: disjoint records in their first rounds.
    first = {stream: set(full[stream].keys) for stream in (0, 1)}
    assert first[0].isdisjoint(first[1])

    # Resume after step 5 (streams 0 and 1 last produced steps 4 and 5).
    saved = DataPosition(2)
    for batch in full[:6]:
        saved.update(batch)
    restored = DataPosition(2)
    assert restored.load_state_dict(saved.state_dict())
    again = batches(6, restored)
    assert [b.step for b in again] == [6, 7, 8, 9]
    assert _keys(again) == _keys(full[6:])
    assert restored.samples_per_degradation() == position.samples_per_degradation()
    assert not DataPosition(1).load_state_dict(saved.state_dict())  # worker count changed


def test_resolve_local_sources(shard_root: Path, tmp_path: Path) -> None:
    assert resolve_shard_source(shard_root, tmp_path) == shard_root
    assert resolve_shard_source(shard_root.as_uri(), tmp_path) == shard_root.resolve()
    with pytest.raises(FileNotFoundError):
        resolve_shard_source(tmp_path / "missing", tmp_path)


@pytest.mark.s3
def test_shards_are_downloaded_from_the_store(
    shard_root: Path,
    tmp_path: Path,
    make_s3_store: Callable[..., S3ObjectStore],
    s3_credentials: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make_s3_store()
    for path in sorted(shard_root.rglob("*.tar")):
        store.put_file(f"training_shards/{path.parent.name}/{path.name}", path)
    store.put_text("training_shards/manifest.json", "{}")  # not a shard: ignored
    monkeypatch.setenv("COTIR_S3_ENDPOINT_URL", s3_credentials.endpoint_url)  # type: ignore[attr-defined]
    url = f"{store.url}/training_shards"
    cache = tmp_path / "cache"
    local = resolve_shard_source(url, cache)
    assert local == cache
    assert sorted(discover_shards(local)) == sorted(DEGRADATIONS)
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.tar")}
    resolve_shard_source(url, cache)  # same sizes: nothing downloaded again
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.tar")} == before
    records = list(
        read_shard_records(str(sorted(cache.rglob("*.tar"))[0]), SkipCounter().tar_handler)
    )
    assert len(records) == 3


def _noise_image(size: int = 512, sigma: float = 25.0) -> Image.Image:
    rng = np.random.default_rng(0)
    values = 128.0 + sigma * rng.standard_normal((size, size, 3))
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def test_patches_are_resized_without_antialiasing_like_the_release() -> None:
    """sigma-25 noise downsized 512 -> 128 keeps the amplitude the release trains on."""
    image = _noise_image()
    patch = image_to_tensor(image, 128)
    full = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    reference = F.interpolate(
        full.permute(2, 0, 1)[None], size=(128, 128), mode="bilinear", align_corners=False
    )[0]
    assert torch.equal(patch, reference)
    # Plain bilinear at 4x mixes 2 x 2 pixels: std 25 / 2; antialiasing low-passes to ~4.
    assert float(patch.std()) * 127.5 == pytest.approx(12.5, abs=0.3)
    smoothed = image_to_tensor(image, 128, antialias=True)
    assert float(smoothed.std()) * 127.5 == pytest.approx(4.1, abs=0.4)
    for variant in ("cotir-12b", "cotir-4b", "cotir-9b", "tiny"):
        assert config_for_variant(variant).resize_antialias is False


def test_the_stream_resizes_as_the_config_says(tmp_path: Path, config: TrainConfig) -> None:
    root = write_shards(tmp_path / "shards", ("noise",), samples_per_shard=2, size=64)
    record = next(iter(read_shard_records(discover_shards(root)["noise"][0], lambda _: True)))
    plain = decode_record(record, 16, "noise")
    smooth = decode_record(record, 16, "noise", antialias=True)
    assert not torch.allclose(plain.lq, smooth.lq)
    for antialias, expected in ((False, plain), (True, smooth)):
        stream = TrainingStream(
            discover_shards(root), config.with_overrides(resize_antialias=antialias), seed=0
        )
        sample = stream.next_sample(0, 16)[0]  # stage 1 of the toy: 16 px
        assert sample.key == expected.key
        assert torch.equal(sample.lq, expected.lq)
        assert torch.equal(sample.hq, expected.hq)


def test_the_stream_gives_jpeg_samples_their_jpeg_type_list(
    tmp_path: Path, config: TrainConfig
) -> None:
    sample = make_sample("jpegx0x0", "jpeg")
    meta = {**sample.meta, "jpeg_type": "q20"}
    members = members_of(sample)
    members[2] = (members[2][0], json.dumps(meta).encode())
    write_raw_tar(tmp_path / "shards" / "jpeg" / "jpeg-000000.tar", members)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "q20.txt").write_text("Remove the quality-20 artifacts.\n")
    curriculum = config.curriculum.model_copy(
        update={"jpeg_type_prompt_dir": str(tmp_path / "lists")}
    )
    stream = TrainingStream(
        discover_shards(tmp_path / "shards"),
        config.with_overrides(curriculum=curriculum),
        seed=0,
    )
    picked = [stream.next_sample(0, 16) for _ in range(300)]
    assert {decoded.jpeg_type for decoded, _ in picked} == {"q20"}
    by_source = Counter(prompt.source for _, prompt in picked)
    assert by_source["jpeg_type"] > 100  # 0.8 x 0.7 of 300 expected
    assert "template" not in by_source
    assert all(
        prompt.text == "Remove the quality-20 artifacts."
        for _, prompt in picked
        if prompt.source == "jpeg_type"
    )
