"""A user's walk through the Dagster UI: graph, launch the demo partition, read the results,
look up a sample's chain, read Table III and the grid once the sensors have evaluated the
trained checkpoints."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cotir_test_support import dismiss_first_visit_dialog

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The demo job's runs only: the checkpoint sensor may queue evaluation runs while the demo
# run is still going (its checkpoints are written mid-run), and they would crowd it out of
# a plain "latest runs" list.
RUN_STATUS_QUERY = """
query { runsOrError(filter: {pipelineName: "demo"}, limit: 5) {
  ... on Runs { results { runId status tags { key value } } } } }
"""


def _runs(base_url: str) -> list[dict]:
    request = urllib.request.Request(
        f"{base_url}/graphql",
        data=json.dumps({"query": RUN_STATUS_QUERY}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]["runsOrError"]["results"]


def test_launch_the_demo_partition_from_the_ui_and_inspect_it(
    dagster_ui: str, browser: object, artifacts_dir: Path
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def shot(name: str) -> None:
        page.screenshot(path=str(artifacts_dir / f"walkthrough-{stamp}-{name}.png"))

    try:
        _see_the_asset_graph(page, dagster_ui, shot)
        _launch_the_demo_partition(page, dagster_ui, shot)
        _inspect_the_shard_asset(page, dagster_ui, shot)
        _look_up_a_sample(page, dagster_ui, shot)
        _see_the_trained_rows_in_table_iii(page, dagster_ui, shot)
        _see_the_grid(page, dagster_ui, shot)
    finally:
        page.close()


def _see_the_asset_graph(page: Any, dagster_ui: str, shot: Callable[[str], None]) -> None:
    """The asset graph loads."""
    # 1. The asset graph.
    page.goto(f"{dagster_ui}/asset-groups", wait_until="domcontentloaded")
    dismiss_first_visit_dialog(page)
    page.get_by_text("data", exact=True).first.wait_for(timeout=60_000)
    shot("1-asset-graph")


def _launch_the_demo_partition(page: Any, dagster_ui: str, shot: Callable[[str], None]) -> None:
    """Launch the demo job for the partition "demo" and wait for its success."""
    # 2. Launch the demo job for the partition "demo".
    page.goto(f"{dagster_ui}/locations/cotir/jobs/demo", wait_until="domcontentloaded")
    page.get_by_role("button", name="Materialize all…").click(timeout=60_000)
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Select a partition or create one").click()
    page.keyboard.type("demo")
    page.get_by_role("menuitem", name="demo").filter(has_not_text="Select all").click()
    shot("2-launch-dialog")
    dialog.get_by_role("button", name="Launch 1 run").click()
    page.get_by_text("Launched run").wait_for(timeout=30_000)

    # 3. Wait for the run to succeed (the UI's own GraphQL API).
    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline:
        runs = [
            run
            for run in _runs(dagster_ui)
            if {"key": "dagster/partition", "value": "demo"} in run["tags"]
        ]
        status = runs[0]["status"] if runs else None
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    page.goto(f"{dagster_ui}/runs", wait_until="domcontentloaded")
    page.get_by_text("Success").first.wait_for(timeout=30_000)
    shot("3-runs")
    assert status == "SUCCESS"


def _inspect_the_shard_asset(page: Any, dagster_ui: str, shot: Callable[[str], None]) -> None:
    """The shard asset's page: counts, the manifest table and the preview image."""
    # 4. The shard asset's page: counts, the manifest table and the preview image.
    page.goto(
        f"{dagster_ui}/assets/pair_shards?view=events&partition=demo",
        wait_until="domcontentloaded",
    )
    page.get_by_text("samples_ok").wait_for(timeout=60_000)
    page.get_by_text("manifest_preview").wait_for()
    assert page.get_by_text("612", exact=True).count() >= 1
    shot("4-asset-metadata")
    page.get_by_text("[Show Markdown]").first.click()
    image = page.get_by_role("dialog").locator("img")
    image.wait_for(timeout=30_000)
    assert image.evaluate("img => img.naturalWidth") > 0, "the preview image did not load"
    shot("5-preview-image")


def _look_up_a_sample(page: Any, dagster_ui: str, shot: Callable[[str], None]) -> None:
    """A sample's chain, looked up in the UI's Launchpad."""
    # 6. A sample's chain, looked up in the UI in two steps: open the look-up job's
    # Launchpad (it opens with a placeholder id), put the id in, Launch Run.
    lineage_run = _launch(dagster_ui, "lineage")  # the index (make demo runs it too)
    assert _wait_for_run(dagster_ui, lineage_run) == "SUCCESS"
    sample_id = _a_demo_sample_id(dagster_ui)
    page.goto(
        f"{dagster_ui}/locations/cotir/jobs/lineage_lookup/playground",
        wait_until="domcontentloaded",
    )
    editor = page.locator(".CodeMirror").first
    editor.wait_for(timeout=60_000)
    page.get_by_text("paste-a-sample-id-here").first.wait_for(timeout=30_000)
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(f"ops:\n  look_up_sample:\n    config:\n      sample_id: {sample_id}\n")
    shot("6-lookup-launchpad")
    page.get_by_role("button", name="Launch Run").click(timeout=30_000)
    page.wait_for_url("**/runs/**", timeout=60_000)
    run_id = page.url.split("/runs/")[1].split("?")[0].split("/")[0]
    assert _wait_for_run(dagster_ui, run_id) == "SUCCESS"
    page.get_by_text("pair_shards").first.wait_for(timeout=60_000)
    assert page.get_by_text(sample_id).count() >= 1
    shot("7-lookup-chain")


def _see_the_trained_rows_in_table_iii(
    page: Any, dagster_ui: str, shot: Callable[[str], None]
) -> None:
    """Table III holds the demo run's trained rows (the sensors evaluate it)."""
    # 8. The tables. No one launches evaluation here: the checkpoint sensor requests it
    # for the demo run's final checkpoints, and the reporting sensor then rebuilds
    # benchmark_tables, as after `make dev` on a trained run.
    methods = _wait_for_tabled_method(dagster_ui, "cotir-demo-paper-", timeout_s=900)
    assert any(m.startswith("cotir-demo-paper-") for m in methods), methods
    page.goto(f"{dagster_ui}/assets/benchmark_tables?view=events", wait_until="domcontentloaded")
    page.get_by_text("table_iii", exact=True).first.wait_for(timeout=60_000)
    _show_markdown(page, "table_iii")
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Table III").first.wait_for(timeout=30_000)
    # The trained model's rows, beside the paper's reported ones.
    assert dialog.get_by_text(re.compile(r"^cotir-demo-paper-r\w+-s8$")).count() >= 1
    dialog.get_by_text("Table III").first.scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # the dialog's opening animation, for the screenshot
    shot("8-table-iii")
    dialog.get_by_role("button", name="Close").click()


def _see_the_grid(page: Any, dagster_ui: str, shot: Callable[[str], None]) -> None:
    """The demo bench's grid loads and names the checkpoint in its columns."""
    # 9. The demo bench's grid: the image loads, and its columns name the checkpoint.
    _show_markdown(page, "grid_demo_bench")
    dialog = page.get_by_role("dialog")
    grid = dialog.locator("img")
    grid.wait_for(timeout=30_000)
    assert grid.evaluate("img => img.naturalWidth") > 0, "the grid did not load"
    columns = grid.get_attribute("alt") or ""
    assert re.search(r"\| cotir-demo-paper-r\w+-s8 \(precise\) \|", columns), columns
    page.wait_for_timeout(500)
    shot("9-grid")


# Launched with a high queue priority: the checkpoint sensor's evaluation runs may be
# queued already, and the test need not wait for them.
LAUNCH_MUTATION = """
mutation ($job: String!) {
  launchPipelineExecution(executionParams: {selector: {pipelineName: $job,
      repositoryName: "__repository__", repositoryLocationName: "cotir"},
      executionMetadata: {tags: [{key: "dagster/priority", value: "10"}]}}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""

RUN_QUERY = """
query ($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }
"""


def _graphql(base_url: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"{base_url}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def _launch(base_url: str, job: str) -> str:
    """Launch an unpartitioned job the way the UI's button does; return the run id."""
    launched = _graphql(base_url, LAUNCH_MUTATION, {"job": job})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _wait_for_run(base_url: str, run_id: str, timeout_s: float = 400) -> str | None:
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = _graphql(base_url, RUN_QUERY, {"id": run_id})["runOrError"].get("status")
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(2)
    return status


def _show_markdown(page: object, label: str) -> None:
    """Open the Markdown dialog of the metadata entry ``label`` on an asset's event page."""
    row = page.locator("tr").filter(  # type: ignore[attr-defined]
        has=page.get_by_text(label, exact=True)  # type: ignore[attr-defined]
    )
    row.get_by_text("[Show Markdown]").first.click(timeout=30_000)


TABLED_METHODS_QUERY = """
query { assetOrError(assetKey: {path: ["benchmark_tables"]}) {
  ... on Asset { assetMaterializations(limit: 1) { metadataEntries {
    label ... on JsonMetadataEntry { jsonString } } } } } }
"""


def _wait_for_tabled_method(base_url: str, prefix: str, timeout_s: float) -> list[str]:
    """The methods in benchmark_tables' newest materialization, once one starts with
    ``prefix`` (what there is at the deadline otherwise)."""
    deadline = time.monotonic() + timeout_s
    methods: list[str] = []
    while time.monotonic() < deadline:
        data = _graphql(base_url, TABLED_METHODS_QUERY, {})["assetOrError"]
        for materialization in data.get("assetMaterializations") or []:
            for entry in materialization["metadataEntries"]:
                if entry["label"] == "methods":
                    methods = json.loads(entry["jsonString"])
        if any(method.startswith(prefix) for method in methods):
            return methods
        time.sleep(5)
    return methods


def _a_demo_sample_id(base_url: str) -> str:
    """A sample id from the demo's pair manifest (any manifest row would do)."""
    query = """
    query { assetOrError(assetKey: {path: ["pair_shards"]}) {
      ... on Asset { assetMaterializations(limit: 1) { metadataEntries {
        label ... on TableMetadataEntry { table { records } } } } } } }
    """
    data = _graphql(base_url, query, {})
    [materialization] = data["assetOrError"]["assetMaterializations"]
    entries = materialization["metadataEntries"]
    preview = next(entry for entry in entries if entry["label"] == "manifest_preview")
    return json.loads(preview["table"]["records"][0])["sample_id"]
