"""``cotir catalog list``: the source catalog as a table or JSON, filtered by task."""

from __future__ import annotations

import json

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
