"""Bench sets: the public test format round trip, ingest as is, and the seeded builders."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cotir_pipeline.evaluation.bench_builders import (
    CleanImage,
    build_agenticir_set,
    build_demo_agenticir_set,
    build_demo_bench,
    build_seven_d_subset,
    clean_images_from_arrays,
    clean_images_from_folder,
)
from cotir_pipeline.evaluation.bench_sets import (
    MANIFEST_NAME,
    PUBLIC_FIELDS,
    BenchFormatError,
    BenchPrompts,
    BenchRecord,
    BenchSample,
    read_bench_set,
    read_real_world_set,
    record_task,
    write_bench_set,
)


def synthetic_clean(count: int, size: int) -> list[CleanImage]:
    """Smooth coloured patterns with a little texture: fast stand-ins for clean photos."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size] / size
    images = {}
    for index in range(count):
        base = np.stack([np.sin(6 * x + index), np.cos(5 * y + 0.3 * index), x * y], axis=-1)
        pixels = (0.5 + 0.35 * base) * 255 + rng.normal(0, 6, base.shape)
        images[f"img{index:03d}"] = np.clip(pixels, 0, 255).astype(np.uint8)
    return clean_images_from_arrays(images)


def _record(sample_id: str, **changes: object) -> BenchRecord:
    fields = {
        "id": sample_id,
        "lq_path": f"lq/{sample_id}.png",
        "deg_type": "low_light+noise",
        "gen_prompt": "Please restore this image.",
        "spe_prompt": "Please brighten it, then remove the noise.",
        "subset": "MDR",
        "meta": {"seed": 3},
    }
    fields.update(changes)
    return BenchRecord(**fields)  # type: ignore[arg-type]


def test_write_read_round_trip(tmp_path: Path) -> None:
    pixels = np.full((8, 12, 3), 100, dtype=np.uint8)
    samples = [BenchSample(_record(f"s{i}"), pixels + i, pixels) for i in range(3)]
    written = write_bench_set(tmp_path / "b", "tiny", samples, info={"seed": 3})
    again = read_bench_set(tmp_path / "b")
    assert again.records == written.records
    assert [r.id for r in again.records] == ["s0", "s1", "s2"]
    assert again.name == "tiny"
    assert again.info["seed"] == 3
    assert again.has_reference
    line = json.loads((tmp_path / "b" / MANIFEST_NAME).read_text().splitlines()[0])
    assert list(line)[:6] == list(PUBLIC_FIELDS)
    record = again.records[1]
    assert np.array_equal(np.asarray(Image.open(again.lq_file(record))), pixels + 1)
    assert again.hq_file(record) == tmp_path / "b" / "hq" / "s1.png"
    assert record.prompt("precise").startswith("Please brighten")
    assert record_task(record) == "MDR"
    with pytest.raises(BenchFormatError, match="duplicate sample id"):
        write_bench_set(tmp_path / "c", "dup", [samples[0], samples[0]])


def test_ingest_a_public_folder_as_it_is(tmp_path: Path) -> None:
    """The release's test folder: lq_path relative to the manifest, extra fields kept."""
    root = tmp_path / "CoTIR-Bench" / "test"
    (root / "lq").mkdir(parents=True)
    (root / "hq").mkdir()
    for name in ("000001.png", "000002.png"):
        Image.new("RGB", (16, 16), (10, 20, 30)).save(root / "lq" / name)
    Image.new("RGB", (16, 16)).save(root / "hq" / "000001.png")
    rows = [
        {
            "id": "000001",
            "lq_path": "lq/000001.png",
            "deg_type": "haze",
            "gen_prompt": "Fix.",
            "spe_prompt": "Remove the haze.",
            "subset": "DH",
            "source": "RESIDE",
        },
        {
            "id": "000002",
            "lq_path": "./lq/000002.png",
            "deg_type": "Haze And Rain",
            "gen_prompt": "Fix.",
            "spe_prompt": "Remove haze and rain.",
            "subset": "MDR",
        },
    ]
    (root / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = read_bench_set(root)
    assert bench.name == "test"
    assert [r.id for r in bench.records] == ["000001", "000002"]
    assert bench.records[0].meta == {"source": "RESIDE"}
    assert bench.hq_file(bench.records[1]) is None
    assert not bench.has_reference
    assert [record_task(r) for r in bench.records] == ["DH", "MDR"]
    (root / "lq" / "000002.png").unlink()
    with pytest.raises(BenchFormatError, match="1 LQ image"):
        read_bench_set(root)
    (root / MANIFEST_NAME).write_text(json.dumps({"id": "x", "lq_path": "lq/000001.png"}) + "\n")
    with pytest.raises(BenchFormatError, match="line 1 has no 'gen_prompt'"):
        read_bench_set(root)
    with pytest.raises(BenchFormatError, match=r"no test\.jsonl"):
        read_bench_set(tmp_path)


def test_real_world_reader_has_no_reference(tmp_path: Path) -> None:
    for subset in ("RTTS", "Snow100K"):
        (tmp_path / subset).mkdir()
        Image.new("RGB", (20, 10)).save(tmp_path / subset / f"{subset.lower()}_1.jpg")
    bench = read_real_world_set(tmp_path, degradation_of_subset={"RTTS": "haze"})
    assert len(bench) == 2
    assert not bench.has_reference
    assert {r.subset: r.deg_type for r in bench.records} == {"RTTS": "haze", "Snow100K": "unknown"}
    assert bench.get("RTTS__rtts_1").spe_prompt == "Please remove the haze."
    Image.new("RGB", (20, 10)).save(tmp_path / "Snow100K" / "rtts_1.png")
    with pytest.raises(BenchFormatError, match="repeated output file name"):
        read_real_world_set(tmp_path)


def test_agenticir_counts_and_small_low_resolution_lq(tmp_path: Path) -> None:
    bench = build_agenticir_set(synthetic_clean(100, 32), tmp_path / "agenticir", seed=1)
    assert Counter(r.subset for r in bench.records) == {"A": 640, "B": 400, "C": 400}
    assert len({r.deg_type for r in bench.records}) == 16
    per_combination = Counter((r.subset, r.deg_type) for r in bench.records)
    assert set(per_combination.values()) == {80, 100}
    for record in bench.records:
        clean_names = record.meta["clean"]
        assert isinstance(clean_names, str)
        lq_size = tuple(record.meta["lq_size"])
        assert lq_size == ((8, 8) if "low_resolution" in record.deg_type else (32, 32))
    lr = next(r for r in bench.records if r.deg_type == "haze+motion_blur+low_resolution")
    assert Image.open(bench.lq_file(lr)).size == (8, 8)
    assert Image.open(bench.hq_file(lr)).size == (32, 32)
    for combination in {r.deg_type for r in bench.records}:
        cleans = [r.meta["clean"] for r in bench.records if r.deg_type == combination]
        assert len(cleans) == len(set(cleans)), combination
    assert bench.info["counts"] == {"A": 640, "B": 400, "C": 400}
    with pytest.raises(ValueError, match="at least 100 clean images"):
        build_agenticir_set(synthetic_clean(99, 16), tmp_path / "few")


def test_agenticir_is_seeded_and_can_be_reduced(tmp_path: Path) -> None:
    clean = synthetic_clean(100, 16)
    first = build_agenticir_set(clean, tmp_path / "a", seed=5, per_combination=2)
    second = build_agenticir_set(clean, tmp_path / "b", seed=5, per_combination=2)
    assert len(first) == 32
    assert [r.id for r in first.records] == [r.id for r in second.records]
    assert (tmp_path / "a" / first.records[3].lq_path).read_bytes() == (
        tmp_path / "b" / second.records[3].lq_path
    ).read_bytes()
    other = build_agenticir_set(clean, tmp_path / "c", seed=6, per_combination=2)
    assert [r.id for r in other.records] != [r.id for r in first.records]
    assert "2 per combination" in first.info["variant"]


def test_demo_agenticir_uses_crops_of_the_bench_photos(tmp_path: Path) -> None:
    bench = build_demo_agenticir_set(tmp_path / "demo", size=64, per_combination=1)
    assert len(bench) == 16
    assert "demo-crops" in bench.info["variant"]
    assert all(
        r.meta["clean"].split("-")[0] in {"kodak_i19", "coffee", "chelsea"} for r in bench.records
    )


def test_seven_d_subset_balances_recipes(tmp_path: Path) -> None:
    bench = build_seven_d_subset(synthetic_clean(40, 16), tmp_path / "7d", count=30)
    counts = Counter(r.deg_type for r in bench.records)
    assert len(counts) == 15
    assert set(counts.values()) == {2}
    assert {r.subset for r in bench.records} == {"7D"}
    assert all(r.meta["lq_size"] == [16, 16] for r in bench.records)  # LR upsampled back


def test_demo_bench_uses_bench_photos_only(tmp_path: Path) -> None:
    bench = build_demo_bench(tmp_path / "demo", recipes=("noise", "low_light+noise"), per_recipe=3)
    assert len(bench) == 6
    assert {r.meta["photo"] for r in bench.records} <= {"kodak_i19", "coffee", "chelsea"}
    assert Counter(r.subset for r in bench.records) == {"DN": 3, "MDR": 3}
    noisy = bench.get(bench.records[0].id)
    assert noisy.spe_prompt == "Please remove the noise."


def test_prompts_from_a_release_folder(tmp_path: Path) -> None:
    (tmp_path / "spe_prompt").mkdir()
    (tmp_path / "gen_prompt.txt").write_text("Make it better.\n\n")
    (tmp_path / "spe_prompt" / "haze.txt").write_text("Dehaze this photo.\n")
    prompts = BenchPrompts.from_folder(tmp_path)
    rng = np.random.default_rng(0)
    assert prompts.vague_prompt(rng) == "Make it better."
    assert prompts.precise_prompt("haze", rng) == "Dehaze this photo."
    assert prompts.precise_prompt("rain+haze", rng) == "Please correct rain and haze issues."


def test_clean_images_from_folder_pairs_depth_maps(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "depth").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "b.png")
    np.save(tmp_path / "depth" / "a.npy", np.ones((8, 8)))
    images = clean_images_from_folder(tmp_path / "img", depth_folder=tmp_path / "depth")
    assert [image.name for image in images] == ["a", "b"]
    assert images[0].load_depth is not None
    assert images[1].load_depth is None
    assert images[0].load()[0, 0].tolist() == [1, 2, 3]
