"""``cotir catalog list``: the source catalog as a table or JSON, filtered by task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cotir_pipeline.cli import cli
from cotir_pipeline.sources.catalog import catalog_table, load_catalog


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return catalog_table(load_catalog())


def test_catalog_list_prints_every_source(rows: list[dict]) -> None:
    result = CliRunner().invoke(cli, ["catalog", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["name", "tasks", "fetch"]
    assert {line.split()[0] for line in lines[1:-1]} == {row["name"] for row in rows}
    assert lines[-1].startswith(f"{len(rows)} sources")


def test_catalog_list_filters_by_task_in_any_case(rows: list[dict]) -> None:
    expected = [row for row in rows if "DR" in row["tasks"].split(", ")]
    assert expected, "the catalog has rain-removal sources"
    result = CliRunner().invoke(cli, ["catalog", "list", "--task", "dr", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == expected
    table = CliRunner().invoke(cli, ["catalog", "list", "--task", "DR"])
    assert table.output.splitlines()[-1].startswith(f"{len(expected)} sources")
    assert "(task DR)" in table.output


def test_catalog_list_rejects_an_unknown_task() -> None:
    result = CliRunner().invoke(cli, ["catalog", "list", "--task", "XYZ"])
    assert result.exit_code == 2
    assert "unknown task 'XYZ'" in result.output
    assert "LLE" in result.output


def test_catalog_help_shows_examples() -> None:
    result = CliRunner().invoke(cli, ["catalog", "list", "--help"])
    assert result.exit_code == 0
    assert "cotir catalog list --task DR" in result.output


def test_bench_restores_and_scores_a_bench_set(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cotir_pipeline.cli import cli
    from cotir_pipeline.evaluation.bench_builders import build_demo_bench

    bench = build_demo_bench(tmp_path / "bench", patch_size=64, per_recipe=1)
    runner = CliRunner()
    arguments = ["bench", str(tmp_path / "bench"), "--out", str(tmp_path / "out"), "--json"]
    identity = runner.invoke(cli, [*arguments, "--method", "identity", "--prompt", "precise"])
    assert identity.exit_code == 0, identity.output
    means = json.loads(identity.stdout.strip().splitlines()[-1])["mean"]["precise"]
    assert isinstance(means["psnr"], float)
    assert len(list((tmp_path / "out" / "precise").iterdir())) == len(bench.records)

    chain = runner.invoke(
        cli,
        [
            *arguments[:3],
            str(tmp_path / "chain"),
            "--json",
            "--method",
            "classical_chain",
            "--prompt",
            "precise",
            "--metrics",
            "psnr,musiq",
        ],
    )
    assert chain.exit_code == 0, chain.output
    chained = json.loads(chain.stdout.strip().splitlines()[-1])["mean"]["precise"]
    assert chained["psnr"] > means["psnr"], "the classical tools should beat the identity"
    assert str(chained["musiq"]).startswith("n/a ("), "a metric without weights is n/a"

    unknown = runner.invoke(cli, [*arguments, "--method", "magic"])
    assert unknown.exit_code != 0
    assert "unknown method 'magic'" in unknown.output
