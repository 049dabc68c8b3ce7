"""Scoring outputs into rows and regenerating the paper's tables from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cotir_pipeline.evaluation import tables
from cotir_pipeline.evaluation.bench_sets import BenchRecord, BenchSample, write_bench_set
from cotir_pipeline.evaluation.metrics import WeightLocations
from cotir_pipeline.evaluation.restorers import IdentityRestorer, run_restorer
from cotir_pipeline.evaluation.scoring import (
    RuntimeRow,
    ScoreRow,
    evaluate_outputs,
    read_score_rows,
    runtime_rows,
    write_rows,
)

PROVENANCE = {
    "code_version": "0.1.0",
    "git_commit": "abc123",
    "packages": {"pyiqa": "0.1.16", "torch": "2.14.1"},
    "seed": 7,
    "checkpoint_hashes": {"CoTIR-demo": "sha256:feed"},
}


def row(metric: str, value: float | None, **changes: object) -> ScoreRow:
    fields: dict[str, object] = {
        "method": "CoTIR-demo",
        "prompt_kind": "precise",
        "bench": "bench",
        "sample_id": "s0",
        "deg_type": "noise",
        "subset": "DN",
        "task": "DN",
        "metric": metric,
        "value": value,
        "reason": None if value is not None else f"{metric}: weights missing in /x/",
    }
    fields.update(changes)
    return ScoreRow(**fields)  # type: ignore[arg-type]


def test_table_ii_formats_decimals_reported_rows_and_na_footnotes(tmp_path: Path) -> None:
    rows = [
        row("psnr", 21.0, sample_id="s0"),
        row("psnr", 22.456, sample_id="s1"),
        row("ssim", 0.81234, sample_id="s0"),
        row("ssim", 0.81234, sample_id="s1"),
        row("lpips", None, sample_id="s0"),
        row("lpips", None, sample_id="s1"),
    ]
    table = tables.table_ii_overall(rows, PROVENANCE, metrics=("psnr", "ssim", "lpips"))
    ours = table.rows[0]
    assert ours.source == tables.OURS
    assert table.cell(ours, table.columns[0]) == "21.73"
    assert table.cell(ours, table.columns[1]) == "0.8123"
    assert table.cell(ours, table.columns[2]) == "n/a [1]"
    assert table.footnotes() == ["lpips: weights missing in /x/"]
    reported = [r for r in table.rows if r.source == tables.REPORTED]
    assert [r.labels["method"] for r in reported] == [
        "PromptIR",
        "OneRestore",
        "DA-CLIP",
        "HYPIR",
        "CoTIR-4B",
        "CoTIR-9B",
    ]
    assert table.cell(reported[0], table.columns[0]) == "22.78"
    assert table.cell(reported[-1], table.columns[2]) == "0.1023"
    markdown = tables.render_markdown(table)
    assert "| CoTIR-demo | precise | ours | 21.73 | 0.8123 | n/a [1] |" in markdown
    assert "| CoTIR-4B | precise | reported (paper) | 25.19 | 0.8454 | 0.1128 |" in markdown
    assert "[1] n/a: lpips: weights missing in /x/" in markdown
    assert "PSNR ↑" in markdown
    assert "LPIPS ↓" in markdown
    assert "seed 7" in markdown
    page = tables.render_html(table)
    assert "<td>n/a [1]</td>" in page
    assert 'class="reported"' in page
    paths = tables.write_table(table, tmp_path)
    assert sorted(path.name for path in paths.values()) == [
        "table_ii.html",
        "table_ii.md",
        "table_ii.parquet",
    ]
    records = pq.read_table(paths["parquet"]).to_pylist()
    first = records[0]
    assert first["psnr"] == pytest.approx(21.728)
    assert first["lpips"] is None
    assert json.loads(first["na_reasons"]) == {"lpips": "lpips: weights missing in /x/"}
    assert first["code_version"] == "0.1.0"
    assert first["seed"] == 7
    assert first["checkpoint_hash"] == "sha256:feed"
    assert json.loads(first["metric_versions"])["pyiqa"] == "0.1.16"
    assert json.loads(first["metric_settings"])["psnr"]["options"] == {"test_y_channel": False}
    assert records[1]["source"] == tables.REPORTED
    assert "Table II" in records[1]["provenance_source"]


def test_a_partial_set_is_never_averaged() -> None:
    rows = [row("psnr", 20.0, sample_id="s0"), row("psnr", None, sample_id="s1")]
    table = tables.table_ii_overall(rows, PROVENANCE, metrics=("psnr",), include_reported=False)
    assert table.rows[0].values["psnr"] is None
    assert table.footnotes() == ["1 of 2 images: psnr: weights missing in /x/"]


def test_table_v_averages_per_combination_then_per_group() -> None:
    rows = [
        row("psnr", 10.0, sample_id=f"a{i}", deg_type="rain+haze", subset="A") for i in range(3)
    ]
    rows.append(row("psnr", 40.0, sample_id="b0", deg_type="noise+jpeg", subset="A"))
    rows.append(row("psnr", 30.0, sample_id="c0", deg_type="haze+noise", subset="B"))
    rows.append(row("psnr", 99.0, sample_id="x", deg_type="rain+haze", subset="A-exploration"))
    table = tables.table_v_agenticir(rows, PROVENANCE)
    by_group = {r.labels["group"]: r.values["psnr"] for r in table.rows if r.source == tables.OURS}
    assert by_group["A"] == pytest.approx(25.0)  # (10 + 40) / 2, not (30 + 40) / 4
    assert by_group["B"] == pytest.approx(30.0)
    assert by_group["C"] is None
    assert by_group[tables.ALL] == pytest.approx((10.0 + 40.0 + 30.0) / 3)
    reported = [r for r in table.rows if r.source == tables.REPORTED]
    musiq = next(c for c in table.columns if c.key == "musiq")
    assert table.cell(reported[0], musiq) == "54.79"


def test_tables_iii_iv_vi_viii() -> None:
    rows = [
        row("psnr", 20.0, task="DN"),
        row("psnr", 30.0, sample_id="s1", task="DH"),
        row("lpips", 0.2),
        row("lpips", 0.4, sample_id="s1"),
    ]
    per_task = tables.table_iii_per_task(rows, PROVENANCE, metrics=("psnr",))
    assert [r.labels["task"] for r in per_task.rows] == ["DH", "DN", tables.ALL]
    assert per_task.rows[-1].values["psnr"] == pytest.approx(25.0)
    runtimes = [
        RuntimeRow("CoTIR-demo", "precise", "bench", "s0", 1.0),
        RuntimeRow("CoTIR-demo", "precise", "bench", "s1", 3.0),
    ]
    seven_d = tables.table_iv_seven_d(rows, runtimes, PROVENANCE)
    assert seven_d.rows[0].values[tables.RUNTIME.key] == pytest.approx(2.0)
    assert seven_d.cell(seven_d.rows[0], seven_d.columns[-1]) == "2.00"
    autodir = next(r for r in seven_d.rows if r.labels["method"] == "AutoDIR")
    assert seven_d.cell(autodir, seven_d.columns[-1]) == "327"
    with pytest.raises(ValueError, match="no ground truth"):
        tables.table_vi_real_world(rows, PROVENANCE, metrics=("psnr",))
    real = tables.table_vi_real_world(
        [row("clipiqa", 0.5, subset="RTTS"), row("clipiqa", 0.7, sample_id="s1", subset="UE")],
        PROVENANCE,
        metrics=("clipiqa",),
    )
    assert [r.labels["subset"] for r in real.rows] == ["RTTS", "UE", tables.ALL]
    runtime = tables.table_viii_runtime(
        [tables.MethodInfo("CoTIR-demo", parameters=12_500_000, steps=4)], runtimes, PROVENANCE
    )
    ours = runtime.rows[0]
    assert runtime.cell(ours, tables.PARAMETERS) == "0.01"
    assert runtime.cell(ours, tables.STEPS) == "4"
    assert runtime.cell(ours, tables.RUNTIME) == "2.00"
    cotir_12b = next(r for r in runtime.rows if r.labels["method"] == "CoTIR-12B")
    assert [runtime.cell(cotir_12b, c) for c in runtime.columns] == ["13.47", "20", "7.95"]
    with pytest.raises(ValueError, match="provenance lacks"):
        tables.table_ii_overall(rows, {"seed": 1})
    with pytest.raises(ValueError, match="one bench set"):
        tables.table_ii_overall([*rows, row("psnr", 1.0, bench="other")], PROVENANCE)


def test_outputs_to_rows_to_tables_and_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny bench end to end: run, score (lpips n/a offline), tabulate, draw."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rng = np.random.default_rng(1)
    samples = []
    for index in range(3):
        clean = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        noisy = np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).astype(np.uint8)
        record = BenchRecord(f"s{index}", f"lq/s{index}.png", "noise", "Fix.", "Denoise.", "DN")
        samples.append(BenchSample(record, noisy, clean))
    bench = write_bench_set(tmp_path / "bench", "bench", samples)
    run_restorer(IdentityRestorer(), bench, tmp_path / "out", "precise")  # type: ignore[arg-type]
    (tmp_path / "out" / "precise" / "s2.png").unlink()
    locations = WeightLocations(tmp_path / "torch" / "hub", tmp_path / "hf")
    rows = evaluate_outputs(
        bench,
        tmp_path / "out" / "precise",
        ["psnr", "lpips"],
        method="identity",
        prompt_kind="precise",
        locations=locations,
    )
    psnr = [r for r in rows if r.metric == "psnr"]
    assert [r.value is not None for r in psnr] == [True, True, False]
    assert psnr[2].reason.startswith("output missing")
    assert all(r.value is None and "not found in" in r.reason for r in rows if r.metric == "lpips")
    assert read_score_rows(write_rows(rows, tmp_path / "scores.parquet")) == rows
    times = runtime_rows(tmp_path / "out", method="identity", bench="bench", prompt_kind="precise")
    assert len(times) == 3  # the log keeps the runtime even though s2.png was removed since
    table = tables.table_iv_seven_d(rows, times, PROVENANCE, include_reported=False)
    assert table.rows[0].values["psnr"] is None  # one output is missing: no partial mean
    grid = tables.image_grid(
        bench, {"identity": tmp_path / "out" / "precise"}, tmp_path / "grid.png", tile=32
    )
    with Image.open(grid) as picture:
        assert picture.width == 3 * (32 + 4) + 4
    chart = tables.bar_chart(table, "runtime_s", tmp_path / "chart.png")
    assert chart is None or chart.is_file()


def test_grid_column_titles_are_wrapped_whole_not_cut() -> None:
    """A checkpoint's vague and precise columns differ only at the end of their titles;
    the grid keeps every character, on lines no wider than a tile."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    title = "cotir-demo-paper-r716bfff7ac-s600 (precise)"
    lines = tables._wrap_to_width(title, font, 128)
    assert len(lines) > 1
    assert all(font.getlength(line) <= 128 for line in lines)
    assert "".join(lines).replace(" ", "") == title.replace(" ", "")
    assert lines[-1].endswith("(precise)")
    assert tables._wrap_to_width("LQ", font, 128) == ["LQ"]
