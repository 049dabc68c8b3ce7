"""Restorers: classical baselines on real photo patches, the tool chain, folders, the runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cotir_pipeline import demo_photos
from cotir_pipeline.degradations import get_operator
from cotir_pipeline.degradations.recipes import AGENTICIR_SAMPLERS, step_rng
from cotir_pipeline.evaluation._io import float_to_rgb8
from cotir_pipeline.evaluation.bench_sets import BenchRecord, BenchSample, write_bench_set
from cotir_pipeline.evaluation.metrics import match_reference_size
from cotir_pipeline.evaluation.restorers import (
    CLASSICAL_TOOLS,
    FolderRestorer,
    IdentityRestorer,
    MissingOutputError,
    Restorer,
    SequentialToolChain,
    Tool,
    ToolRestorer,
    estimate_noise_sigma,
    read_runtime_log,
    run_restorer,
    runtime_log_path,
)


@pytest.fixture(scope="module")
def patches() -> list[np.ndarray]:
    """Eight 96 px patches of the demo bench photos (real photographs), spread over each."""
    result = []
    for photo in demo_photos.DEMO_PHOTOS:
        if photo.split != "bench":
            continue
        image = demo_photos.load_photo(photo)
        kept, _ = demo_photos.cut_patches(photo, image, 96, 96)
        result += [demo_photos.crop(image, patch) for patch in kept[:: max(1, len(kept) // 3)][:3]]
    return result[:8]


def _psnr(reference: np.ndarray, image: np.ndarray) -> float:
    image = match_reference_size(image, reference.shape[:2])
    error = np.mean((reference.astype(np.float64) - image.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / error))


def _degrade(op: str, clean: np.ndarray, seed: int) -> np.ndarray:
    rng = step_rng(seed, 0)
    params = dict(AGENTICIR_SAMPLERS[op](rng))
    out, _ = get_operator(op)(clean.astype(np.float32) / 255, rng, **params)
    return float_to_rgb8(out)


def _gains(op: str, patches: list[np.ndarray]) -> list[float]:
    gains = []
    for seed, clean in enumerate(patches):
        lq = _degrade(op, clean, seed)
        gains.append(_psnr(clean, CLASSICAL_TOOLS[op](lq)) - _psnr(clean, lq))
    return gains


# Measured on 47 patches of 128 px (docs/EVALUATION.md): noise +8.1 dB, haze +7.7,
# low light +6.5, rain +5.3, defocus +0.8, JPEG +0.25. The thresholds are loose.
@pytest.mark.parametrize(
    ("op", "minimum_mean_gain"),
    [
        ("noise", 3.0),
        ("haze", 2.0),
        ("low_light", 2.0),
        ("rain", 1.0),
        ("defocus_blur", 0.2),
        ("jpeg", 0.05),
    ],
)
def test_classical_tool_improves_psnr_on_its_degradation(
    op: str, minimum_mean_gain: float, patches: list[np.ndarray]
) -> None:
    gains = _gains(op, patches)
    assert np.mean(gains) > minimum_mean_gain, gains
    assert np.mean(np.asarray(gains) > 0) >= 0.75, gains


def test_tools_without_a_fair_psnr_expectation(patches: list[np.ndarray]) -> None:
    """Motion blur: blind unsharp masking cannot undo a one-sided kernel's shift (about 0 dB).
    Low resolution: bicubic x4 is what the scorer does to a small LQ anyway (exactly 0 dB).
    Lost colour: no classical tool (identity)."""
    assert np.mean(_gains("motion_blur", patches)) > -0.5
    small = _degrade("low_resolution", patches[0], 0)
    assert small.shape[:2] == (24, 24)
    upsampled = CLASSICAL_TOOLS["low_resolution"](small)
    assert upsampled.shape[:2] == (96, 96)
    assert _psnr(patches[0], upsampled) == pytest.approx(_psnr(patches[0], small))
    assert np.array_equal(CLASSICAL_TOOLS["lost_color"](patches[0]), patches[0])


def test_noise_estimate_tracks_the_added_noise(patches: list[np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    clean = patches[0].astype(np.float64) / 255
    noisy = clean + rng.normal(0, 25 / 255, clean.shape)
    assert estimate_noise_sigma(noisy) * 255 == pytest.approx(25, rel=0.25)


def _recording_tools(calls: list[str]) -> dict[str, Tool]:
    def make(name: str) -> Tool:
        def run(image: np.ndarray) -> np.ndarray:
            calls.append(name)
            return image

        return Tool(name, run, "records its call")

    return {deg: make(deg) for deg in ("noise", "jpeg", "haze", "rain")}


def test_tool_chain_follows_the_label_and_times_each_step() -> None:
    lq = np.zeros((8, 8, 3), dtype=np.uint8)
    calls: list[str] = []
    chain = SequentialToolChain(tools=_recording_tools(calls))
    chain.restore(lq, "ignored", "rain+haze+noise+jpeg")
    assert calls == ["rain", "haze", "noise", "jpeg"]
    assert [step.degradation for step in chain.last_trace] == ["rain", "haze", "noise", "jpeg"]
    assert all(step.seconds >= 0 for step in chain.last_trace)
    calls.clear()
    SequentialToolChain(tools=_recording_tools(calls), order="reverse").restore(
        lq, "", "noise+jpeg"
    )
    assert calls == ["jpeg", "noise"]
    calls.clear()
    out = chain.restore(lq, "", "snow+noise")
    assert calls == ["noise"]
    assert chain.last_trace[0].tool == "none"
    assert "passed through" in chain.last_trace[0].note
    assert out is not lq
    calls.clear()
    chain.restore(lq, "", "Haze And Rain")  # another set's spelling of haze+rain
    assert calls == ["haze", "rain"]
    chain.restore(lq, "", "sepia")  # not a degradation in any spelling
    assert chain.last_trace[0].tool == "none"
    assert chain.last_trace[0].note == "not a known degradation label: passed through"
    with pytest.raises(ValueError, match="order must be"):
        SequentialToolChain(order="random")  # type: ignore[arg-type]


def test_tool_chain_upsamples_with_its_factor() -> None:
    lq = np.full((8, 10, 3), 128, dtype=np.uint8)
    assert SequentialToolChain().restore(lq, "", "low_resolution").shape == (32, 40, 3)
    assert SequentialToolChain(sr_factor=1).restore(lq, "", "low_resolution").shape == (8, 10, 3)
    assert isinstance(SequentialToolChain(), Restorer)
    assert isinstance(ToolRestorer(CLASSICAL_TOOLS["noise"]), Restorer)


def _bench(root: Path, count: int = 3) -> object:
    samples = []
    for index in range(count):
        pixels = np.full((16, 16, 3), 40 * index, dtype=np.uint8)
        record = BenchRecord(
            f"s{index}", f"lq/s{index}.png", "noise", "Fix it.", "Remove the noise.", "DN"
        )
        samples.append(BenchSample(record, pixels, pixels))
    return write_bench_set(root, "tiny", samples)


def test_run_restorer_writes_outputs_and_resumes(tmp_path: Path) -> None:
    bench = _bench(tmp_path / "bench")
    calls: list[str] = []

    class Counting(IdentityRestorer):
        def restore(self, lq: np.ndarray, prompt: str, degradation: str) -> np.ndarray:
            calls.append(prompt)
            return super().restore(lq, prompt, degradation)

    first = run_restorer(Counting(), bench, tmp_path / "out", "precise")  # type: ignore[arg-type]
    assert (first.written, first.skipped, first.failed) == (3, 0, ())
    assert calls == ["Remove the noise."] * 3
    assert sorted(p.name for p in (tmp_path / "out" / "precise").iterdir()) == [
        "s0.png",
        "s1.png",
        "s2.png",
    ]
    (tmp_path / "out" / "precise" / "s1.png").unlink()
    second = run_restorer(Counting(), bench, tmp_path / "out", "precise")  # type: ignore[arg-type]
    assert (second.written, second.skipped) == (1, 2)
    log = read_runtime_log(runtime_log_path(tmp_path / "out", "precise"))
    assert sorted(entry["id"] for entry in log) == ["s0", "s1", "s2"]
    assert all(entry["status"] == "ok" and entry["seconds"] >= 0 for entry in log)
    vague = run_restorer(IdentityRestorer(), bench, tmp_path / "out", "vague")  # type: ignore[arg-type]
    assert vague.written == 3
    with pytest.raises(ValueError, match="prompt_kind"):
        run_restorer(IdentityRestorer(), bench, tmp_path / "out", "clear")  # type: ignore[arg-type]


def test_failures_are_logged_and_skipped(tmp_path: Path) -> None:
    bench = _bench(tmp_path / "bench")

    class Broken(IdentityRestorer):
        def restore(self, lq: np.ndarray, prompt: str, degradation: str) -> np.ndarray:
            return lq.astype(np.float32)

    summary = run_restorer(Broken(), bench, tmp_path / "out")  # type: ignore[arg-type]
    assert summary.written == 0
    assert len(summary.failed) == 3
    assert "RGB uint8 array is required" in summary.failed[0][1]
    with pytest.raises(TypeError, match="RGB uint8"):
        run_restorer(Broken(), bench, tmp_path / "out2", strict=True)  # type: ignore[arg-type]


def test_folder_restorer_matches_by_file_name(tmp_path: Path) -> None:
    bench = _bench(tmp_path / "bench")
    release = tmp_path / "other-method" / "precise"
    release.mkdir(parents=True)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(release / "s0.png")
    Image.new("RGB", (64, 64), (7, 7, 7)).save(release / "s1.jpg")
    folder = FolderRestorer.for_release(tmp_path / "other-method", "precise", "OtherMethod")
    assert folder.output_path("s1.png").name == "s1.jpg"
    with pytest.raises(MissingOutputError, match=r"no output for s2\.png in .*other-method"):
        folder.output_path("s2.png")
    with pytest.raises(TypeError, match="matches outputs by file name"):
        folder.restore(np.zeros((4, 4, 3), np.uint8), "", "noise")
    summary = run_restorer(folder, bench, tmp_path / "out", "precise")
    assert summary.written == 2
    assert summary.failed[0][0] == "s2"
    assert "MissingOutputError" in summary.failed[0][1]
    copied = np.asarray(Image.open(tmp_path / "out" / "precise" / "s0.png"))
    assert copied.shape == (64, 64, 3)
    assert copied[0, 0].tolist() == [9, 9, 9]
    with pytest.raises(FileNotFoundError, match="output folder not found"):
        FolderRestorer(tmp_path / "nowhere", "Nobody")


def test_restoration_rows_record_each_output_or_why_it_is_missing(tmp_path: Path) -> None:
    """One row per sample and prompt kind: the output's digest and runtime, or the
    logged reason it is missing; lineage ids from the set, written as Parquet."""
    import pyarrow.parquet as pq

    from cotir_pipeline.digests import file_sha256
    from cotir_pipeline.evaluation.bench_sets import bench_lineage_ids
    from cotir_pipeline.evaluation.scoring import restoration_rows, write_restoration_rows

    bench = _bench(tmp_path / "bench")
    release = tmp_path / "other-method" / "precise"
    release.mkdir(parents=True)
    for name in ("s0", "s1"):
        Image.new("RGB", (16, 16), (9, 9, 9)).save(release / f"{name}.png")
    folder = FolderRestorer.for_release(tmp_path / "other-method", "precise", "OtherMethod")
    run_restorer(folder, bench, tmp_path / "out", "precise")
    run_restorer(IdentityRestorer(), bench, tmp_path / "out", "vague")  # type: ignore[arg-type]

    rows = restoration_rows(bench, tmp_path / "out", method="other", checkpoint=None)  # type: ignore[arg-type]
    assert len(rows) == 2 * 3
    by_key = {(row["record_id"], row["prompt_kind"]): row for row in rows}
    ok = by_key[("s0", "precise")]
    assert ok["status"] == "ok"
    assert ok["output_sha256"] == file_sha256(tmp_path / "out" / "precise" / "s0.png")
    assert ok["runtime_s"] is not None
    assert ok["runtime_s"] >= 0
    missing = by_key[("s2", "precise")]
    assert missing["status"] == "failed"
    assert missing["output_sha256"] is None
    assert "MissingOutputError" in missing["reason"]
    ids = bench_lineage_ids(bench)  # type: ignore[arg-type]
    assert {row["sample_id"] for row in rows} == set(ids.values())
    table = pq.read_table(write_restoration_rows(rows, tmp_path / "samples.parquet"))
    assert table.num_rows == 6
    assert table.column("status").to_pylist().count("failed") == 1
