"""The Dagster code location: it loads, validates, and the demo job materializes the DAG."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq
import pytest
import requests
from click.testing import CliRunner
from dagster._core.instance.ref import InstanceRef

from assets.definitions import (
    LINEAGE_JOB_NAME,
    build_definitions,
    code_location_run_tags,
    defs,
)
from assets.profiles import training_resource
from assets.training.resource import TrainingResource
from cotir_pipeline.cli import cli
from cotir_pipeline.lineage.details import checkpoint_summary
from cotir_pipeline.settings import CotirSettings, Profile
from cotir_pipeline.store import LocalObjectStore
from cotir_test_support import REPO_ROOT, DagsterDevServer, default_stop_signals, free_port


@pytest.fixture
def settings(tmp_path: Path) -> CotirSettings:
    return CotirSettings(home=tmp_path / "home", store=(tmp_path / "store").as_uri())


def test_definitions_load_through_the_lazy_entry_point(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COTIR_STORE", (tmp_path / "s").as_uri())
    definitions = defs()
    assert isinstance(definitions, dg.Definitions)
    keys = {key.to_user_string() for key in definitions.resolve_asset_graph().get_all_asset_keys()}
    assert "pipeline_environment" in keys
    assert definitions.resolve_job_def("demo") is not None


def test_a_bad_setting_fails_the_code_location_load_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COTIR_PROFILE", "nightly")
    with pytest.raises(Exception, match="COTIR_PROFILE: input should be 'demo' or 'full'"):
        defs()


def test_dagster_definitions_validate_passes(tmp_path: Path) -> None:
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path), "COTIR_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").symlink_to(REPO_ROOT / "dagster.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def _bare_environment() -> dict[str, str]:
    """This process's environment without DAGSTER_HOME or any COTIR_ setting."""
    return {
        name: value
        for name, value in os.environ.items()
        if name != "DAGSTER_HOME" and not name.startswith("COTIR_")
    }


def test_plain_dagster_definitions_validate_works_with_no_environment() -> None:
    """What a Dagster user types first, in the repo root, with nothing set."""
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate"],
        cwd=REPO_ROOT,
        env=_bare_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_plain_dagster_dev_serves_the_code_location_with_no_environment() -> None:
    port = free_port()
    before = set(REPO_ROOT.glob(".tmp_dagster_home_*"))
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        env=_bare_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # SIGTERM as the default action even when this test runs as a background job
        # (which inherits it ignored): the test stops the server with it.
        preexec_fn=default_stop_signals,
    )
    query = {
        "query": "{ workspaceOrError { ... on Workspace { locationEntries { name "
        "locationOrLoadError { __typename } } } } }"
    }
    entries: list[dict] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and server.poll() is None:
            try:
                response = requests.post(f"http://127.0.0.1:{port}/graphql", json=query, timeout=5)
                entries = response.json()["data"]["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"] is not None:
                    break
            except (requests.RequestException, KeyError, TypeError, ValueError):
                pass
            time.sleep(1)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    assert entries, f"the webserver never answered:\n{output[-3000:]}"
    assert entries[0]["name"] == "cotir"
    assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", output[-3000:]
    assert set(REPO_ROOT.glob(".tmp_dagster_home_*")) == before, "the temporary home is removed"


def test_every_asset_has_an_owner_and_a_code_reference() -> None:
    repository = defs().get_repository_def()
    for key in repository.asset_graph.get_all_asset_keys():
        node = repository.asset_graph.get(key)
        assert node.owners == ["team:cotir-pipeline"], key
        references = node.metadata["dagster/code_references"].code_references
        assert references, key
        assert Path(references[0].file_path).is_relative_to(REPO_ROOT), key


def test_the_demo_profile_offers_only_the_partitions_it_can_build(tmp_path: Path) -> None:
    """ "Materialize all" in the demo profile must not backfill sources that need downloads."""
    demo = build_definitions(CotirSettings(home=tmp_path, store=(tmp_path / "s").as_uri()))
    full = build_definitions(
        CotirSettings(
            home=tmp_path,
            store=(tmp_path / "s").as_uri(),
            profile=Profile.FULL,
            annotation_backend="template",
        )
    )
    for name in ("raw_pairs", "pair_shards", "cot_annotations", "filtered_annotations"):
        keys = demo.resolve_assets_def(name).partitions_def.get_partition_keys()  # type: ignore[union-attr]
        assert keys == ["demo"], name
        everything = full.resolve_assets_def(name).partitions_def.get_partition_keys()  # type: ignore[union-attr]
        assert len(everything) > 60
        assert "demo" in everything


def test_evaluation_is_downstream_of_training_in_the_graph() -> None:
    """A checkpoint is a method: restorations depends on the checkpoint assets."""
    graph = defs().get_repository_def().asset_graph
    parents = {key.to_user_string() for key in graph.get(dg.AssetKey("restorations")).parent_keys}
    assert {"bench_sets", "cotir_checkpoint"} <= parents
    assert "base_model" not in parents


def test_benchmark_tables_have_a_freshness_policy_under_the_nightly_schedule() -> None:
    graph = defs().get_repository_def().asset_graph
    policy = graph.get(dg.AssetKey("benchmark_tables")).freshness_policy
    assert policy is not None
    assert policy.fail_window.to_timedelta().total_seconds() == 30 * 3600  # type: ignore[union-attr]


def _outside_code_spans(markdown: str) -> str:
    """The text of a Markdown description with its `code spans` removed."""
    return re.sub(r"`[^`]*`", "", markdown)


def test_descriptions_render_in_the_ui_without_losing_angle_bracket_text() -> None:
    """The UI renders descriptions as Markdown, where <name> outside a code span is an
    HTML tag and disappears."""
    repository = defs().get_repository_def()
    described = {
        f"asset {key.to_user_string()}": repository.asset_graph.get(key).description
        for key in repository.asset_graph.get_all_asset_keys()
    }
    described.update({f"job {job.name}": job.description for job in repository.get_all_jobs()})
    for instigator in [*repository.schedule_defs, *repository.sensor_defs]:
        described[f"{type(instigator).__name__} {instigator.name}"] = instigator.description
    assert len(described) > 20
    lost = {
        name: re.findall(r"<[A-Za-z][^>]*>", _outside_code_spans(text))
        for name, text in described.items()
        if text and re.search(r"<[A-Za-z][^>]*>", _outside_code_spans(text))
    }
    assert not lost, f"put these in `code spans`: {lost}"


JOB_RUNS_QUERY = """
query ($job: String!) {
  pipelineOrError(params: {pipelineName: $job, repositoryName: "__repository__",
                           repositoryLocationName: "cotir"}) {
    ... on Pipeline { runs { runId } }
  }
}
"""


@pytest.mark.slow
def test_runs_started_by_make_demo_are_listed_under_their_job_in_the_ui(tmp_path: Path) -> None:
    """``make demo`` runs its jobs in process; the UI's job page must still list them."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").symlink_to(REPO_ROOT / "dagster.yaml")
    cotir = {"COTIR_HOME": str(tmp_path / "cotir"), "COTIR_PROFILE": "demo"}
    definitions = build_definitions(
        CotirSettings(home=tmp_path / "cotir", store=(tmp_path / "cotir" / "store").as_uri())
    )
    job = definitions.resolve_job_def(LINEAGE_JOB_NAME)  # quick: an empty store
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        tagged = job.execute_in_process(
            instance=instance, raise_on_error=False, tags=code_location_run_tags(definitions)
        )
        untagged = job.execute_in_process(instance=instance, raise_on_error=False)
    server = DagsterDevServer(home, tmp_path / "dagster-dev.log", cotir)
    url = server.start()
    try:
        response = requests.post(
            f"{url}/graphql",
            json={"query": JOB_RUNS_QUERY, "variables": {"job": LINEAGE_JOB_NAME}},
            timeout=60,
        )
        listed = {run["runId"] for run in response.json()["data"]["pipelineOrError"]["runs"]}
    finally:
        server.stop()
    assert tagged.run_id in listed
    assert untagged.run_id not in listed, "the tag is what files a run under its job"


#: The method x bench assets and the tables run in the evaluation and reporting jobs (an
#: asset job takes one partitions definition), the index and Table VII in jobs of their own;
#: the demo job runs everything else.
OWN_JOBS = {
    "evaluation": {"restorations", "metric_scores"},
    "reporting": {"benchmark_tables"},
    "lineage": {"sample_lineage"},
    "table_vii_ablation": {"table_vii"},
    "onnx_export": {"cotir_onnx_export"},
}


@dataclass
class DemoRuns:
    """The demo job run twice on one instance, then the lineage jobs (no assertions here)."""

    definitions: dg.Definitions
    store: LocalObjectStore
    first: dg.ExecuteInProcessResult
    second: dg.ExecuteInProcessResult
    shards_after_first: dict[str, int]
    provenance_after_first: list[str]
    lineage: dg.ExecuteInProcessResult
    lookup: dg.ExecuteInProcessResult
    looked_up_sample: str
    mistyped_lookup: dg.ExecuteInProcessResult
    placeholder_lookup: dg.ExecuteInProcessResult
    export: dg.ExecuteInProcessResult
    export_again: dg.ExecuteInProcessResult


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> DemoRuns:
    root = tmp_path_factory.mktemp("demo-job")
    settings = CotirSettings(home=root / "home", store=(root / "store").as_uri())
    # The demo's two fine-tunes, shortened to 8 steps each (the DAG is what is tested here).
    training = TrainingResource(**{**training_resource(settings).model_dump(), "steps": 8})
    definitions = build_definitions(settings, training=training)
    store = LocalObjectStore(Path(settings.store.removeprefix("file://")))
    job = definitions.resolve_job_def("demo")
    lookup_job = definitions.resolve_job_def("lineage_lookup")
    with dg.DagsterInstance.ephemeral() as instance:
        first = job.execute_in_process(instance=instance, partition_key="demo")
        shards = {info.key: info.size for info in store.list("pair_shards/demo/")}
        provenance = [info.key for info in store.list("provenance/")]
        second = job.execute_in_process(instance=instance, partition_key="demo")
        lineage = definitions.resolve_job_def("lineage").execute_in_process(instance=instance)
        export_job = definitions.resolve_job_def("onnx_export")
        export = export_job.execute_in_process(instance=instance, raise_on_error=False)
        export_again = export_job.execute_in_process(instance=instance, raise_on_error=False)
        run_keys = [i.key for i in store.list("training_runs/") if i.key.endswith(".parquet")]
        consumed = pq.read_table(io.BytesIO(store.get_bytes(run_keys[-1])))
        sample = consumed.column("sample_id")[0].as_py()

        def look_up(sample_id: str | None) -> dg.ExecuteInProcessResult:
            config = {"ops": {"look_up_sample": {"config": {"sample_id": sample_id}}}}
            return lookup_job.execute_in_process(
                instance=instance,
                run_config=config if sample_id else None,
                raise_on_error=False,
            )

        return DemoRuns(
            definitions=definitions,
            store=store,
            first=first,
            second=second,
            shards_after_first=shards,
            provenance_after_first=provenance,
            lineage=lineage,
            lookup=look_up(sample),
            looked_up_sample=sample,
            mistyped_lookup=look_up("0" * 32),
            placeholder_lookup=look_up(None),
            export=export,
            export_again=export_again,
        )


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    return dict(result.asset_materializations_for_node(asset)[0].metadata)


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    return " ".join(str(e.event_specific_data) for e in result.all_events if e.is_failure)


def test_each_job_runs_its_own_assets(demo_runs: DemoRuns) -> None:
    for name, assets in OWN_JOBS.items():
        job = demo_runs.definitions.resolve_job_def(name)
        assert set(job.asset_layer.executable_asset_keys) == {dg.AssetKey(a) for a in assets}


def test_the_demo_job_materializes_every_other_asset(demo_runs: DemoRuns) -> None:
    assert demo_runs.first.success
    every = demo_runs.definitions.resolve_asset_graph().get_all_asset_keys()
    elsewhere = {dg.AssetKey(asset) for assets in OWN_JOBS.values() for asset in assets}
    materialized = {e.asset_key for e in demo_runs.first.get_asset_materialization_events()}
    assert materialized == set(every) - elsewhere


def test_every_asset_check_passes(demo_runs: DemoRuns) -> None:
    by_name = {
        event.event_specific_data.check_name: event.event_specific_data  # type: ignore[union-attr]
        for event in demo_runs.first.all_events
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }
    assert by_name["stored_catalog_reads_back"].passed
    failed = sorted(name for name, check in by_name.items() if not check.passed)
    assert not failed, f"asset checks that did not pass: {failed}"
    # The shipped prior meets the copy target (docs/TRAINING.md); the check is a warning.
    assert by_name["prior_copy_fidelity"].severity == dg.AssetCheckSeverity.WARN
    assert by_name["prior_copy_fidelity"].passed


def test_the_main_row_is_exported_to_onnx_that_restores_like_torch(demo_runs: DemoRuns) -> None:
    """The export job writes the main row's ONNX export into its checkpoint folder, where
    `cotir restore --checkpoint` picks it up; it restores like the torch engine and a
    second run keeps it."""
    assert demo_runs.export.success, _failure_text(demo_runs.export)
    trained = _metadata(demo_runs.first, "cotir_checkpoint_lq_flow")
    metadata = _metadata(demo_runs.export, "cotir_onnx_export")
    checkpoint = Path(metadata["checkpoint"].value)
    assert checkpoint == Path(trained["checkpoint"].value)
    assert metadata["kept_current_export"].value is False
    assert (checkpoint / "onnx" / "manifest.json").is_file()
    assert metadata["size_mb"].value > 50  # the MiniLM text encoder is most of it
    (check,) = [
        event.event_specific_data
        for event in demo_runs.export.all_events
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    assert check.check_name == "engines_agree"  # type: ignore[union-attr]
    assert check.passed  # type: ignore[union-attr]
    assert demo_runs.export_again.success
    again = _metadata(demo_runs.export_again, "cotir_onnx_export")
    assert again["kept_current_export"].value is True


def test_the_environment_record_is_written_once(demo_runs: DemoRuns) -> None:
    metadata = _metadata(demo_runs.first, "pipeline_environment")
    assert metadata["newly_written"].value is True
    assert demo_runs.provenance_after_first == [metadata["key"].value]
    record = json.loads(demo_runs.store.get_text(demo_runs.provenance_after_first[0]))
    assert record["packages"]["dagster"] == dg.__version__
    assert record["settings"]["profile"] == "demo"
    again = _metadata(demo_runs.second, "pipeline_environment")
    assert again["newly_written"].value is False
    assert again["digest"].value == metadata["digest"].value
    stored = [info.key for info in demo_runs.store.list("provenance/")]
    assert stored == demo_runs.provenance_after_first


def test_parquet_outputs_show_their_columns_and_rows(demo_runs: DemoRuns) -> None:
    root = demo_runs.store.root
    shards = _metadata(demo_runs.first, "pair_shards")
    assert shards["samples_ok"].value >= 500
    assert shards["shards_written"].value == shards["shards"].value > 0
    assert shards["samples_failed"].value == 0
    columns = [column.name for column in shards["dagster/column_schema"].schema.columns]
    assert columns[:3] == ["sample_id", "source", "item_key"]
    assert shards["dagster/row_count"].value == (
        shards["samples_ok"].value + shards["samples_dropped"].value
    )
    # The same on the plan and the annotation stages, against the files they wrote.
    plan = _metadata(demo_runs.first, "raw_pairs")
    plan_rows = pq.read_table(root / "raw_pairs" / "demo" / "pairs.parquet")
    assert (
        plan["dagster/row_count"].value
        == plan_rows.num_rows
        == (plan["pairs_ok"].value + plan["pairs_dropped"].value)
    )
    assert [c.name for c in plan["dagster/column_schema"].schema.columns] == plan_rows.schema.names
    annotated = _metadata(demo_runs.first, "cot_annotations")
    assert annotated["dagster/row_count"].value == (
        annotated["annotated"].value + annotated["failed"].value
    )
    assert "sample_id" in [c.name for c in annotated["dagster/column_schema"].schema.columns]
    judged = _metadata(demo_runs.first, "filtered_annotations")
    decisions = pq.read_table(root / "filtered_annotations" / "demo" / "manifest.parquet")
    assert judged["dagster/row_count"].value == decisions.num_rows
    assert [c.name for c in judged["dagster/column_schema"].schema.columns] == (
        decisions.schema.names
    )


def test_a_second_run_writes_no_shard_again(demo_runs: DemoRuns) -> None:
    shards = _metadata(demo_runs.first, "pair_shards")
    again = _metadata(demo_runs.second, "pair_shards")
    assert again["shards_written"].value == 0
    assert again["shards_skipped"].value == shards["shards"].value
    assert again["samples_ok"].value == shards["samples_ok"].value
    stored = {info.key: info.size for info in demo_runs.store.list("pair_shards/demo/")}
    assert stored == demo_runs.shards_after_first


def test_the_lineage_index_holds_every_pair_and_bench_sample(demo_runs: DemoRuns) -> None:
    store = demo_runs.store
    [check] = demo_runs.lineage.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == ("index_answers_look_ups", True)
    bench_samples = sum(
        pq.read_metadata(io.BytesIO(store.get_bytes(info.key))).num_rows
        for info in store.list("bench_sets/")
        if info.key.endswith("/manifest.parquet")
    )
    assert bench_samples > 0
    shards = _metadata(demo_runs.first, "pair_shards")
    assert _metadata(demo_runs.lineage, "sample_lineage")["samples"].value == (
        shards["samples_ok"].value + shards["samples_dropped"].value + bench_samples
    )


def test_each_run_is_credited_with_the_samples_its_batches_held(demo_runs: DemoRuns) -> None:
    store = demo_runs.store
    shard_rows = pq.read_table(io.BytesIO(store.get_bytes("training_shards/manifest.parquet")))
    trained_on = set(shard_rows.column("sample_id").to_pylist())
    run_keys = [i.key for i in store.list("training_runs/") if i.key.endswith(".parquet")]
    assert run_keys
    for key in run_keys:
        consumed = pq.read_table(io.BytesIO(store.get_bytes(key)))
        assert 0 < consumed.num_rows <= shard_rows.num_rows
        assert set(consumed.column("sample_id").to_pylist()) <= trained_on
        assert min(consumed.column("first_step").to_pylist()) == 1
    # `cotir lineage --checkpoint RUN`: what trained it, per source and degradation.
    run = run_keys[-1].split("/")[1]
    summary = checkpoint_summary(store, run)
    assert summary["samples"] == consumed.num_rows
    by_source = summary["by_source_and_degradation"]
    assert sum(row["samples"] for row in by_source) == consumed.num_rows
    assert {row["source"] for row in by_source} == {"demo"}
    printed = CliRunner().invoke(
        cli,
        ["lineage", "--checkpoint", f"cotir-tiny-paper-{run}-s1"],
        env={"COTIR_STORE": str(store.root)},
    )
    assert printed.exit_code == 0, printed.output
    up_to_first = checkpoint_summary(store, f"x-{run}-s1")["samples"]
    assert f"up to step 1: {up_to_first} samples" in printed.output


def test_the_lookup_job_reports_a_chain_to_the_training_steps(demo_runs: DemoRuns) -> None:
    assert demo_runs.lookup.success
    assert demo_runs.lookup.output_for_node("look_up_sample") is None
    [event] = [e for e in demo_runs.lookup.all_events if e.event_type_value == "STEP_OUTPUT"]
    text = event.event_specific_data.metadata["chain"].value  # type: ignore[union-attr]
    assert demo_runs.looked_up_sample in text
    assert "training_shards" in text
    assert "training_runs" in text
    assert "trained on it" in text  # the steps at which the run trained on the sample


def test_the_lookup_job_says_what_is_wrong_with_its_input(demo_runs: DemoRuns) -> None:
    # A mistyped id is reported as not found, not as a missing index.
    assert not demo_runs.mistyped_lookup.success
    failure = _failure_text(demo_runs.mistyped_lookup)
    assert "is not in the lineage index" in failure
    assert "materialize sample_lineage first" not in failure
    # Launched with the Launchpad's placeholder unchanged: a clear instruction.
    assert not demo_runs.placeholder_lookup.success
    assert "replace the placeholder" in _failure_text(demo_runs.placeholder_lookup)


def test_an_unreachable_store_fails_the_run_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = CotirSettings(
        home=tmp_path, store="s3://cotir/demo", s3_endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    job = build_definitions(settings).resolve_job_def("demo")
    result = job.execute_in_process(raise_on_error=False, partition_key="demo")
    assert not result.success
    failures = [event for event in result.all_events if event.is_failure]
    messages = " ".join(str(event.event_specific_data) for event in failures)
    assert "COTIR_S3_ENDPOINT_URL: cannot reach" in messages


def test_the_catalog_check_fails_on_a_stored_catalog_that_differs(tmp_path: Path) -> None:
    from assets.data_stage.metadata import CATALOG_KEY, stored_catalog_check
    from cotir_pipeline.sources.catalog import load_catalog

    catalog = load_catalog()
    store = LocalObjectStore(tmp_path / "store")
    store.put_text(CATALOG_KEY, catalog.model_dump_json())
    assert stored_catalog_check(store, catalog).passed

    shorter = catalog.model_copy(update={"sources": catalog.sources[1:]})
    store.put_text(CATALOG_KEY, shorter.model_dump_json())
    check = stored_catalog_check(store, catalog)
    assert not check.passed
    assert check.metadata["sources_differing"].value == [catalog.sources[0].name]

    store.put_text(CATALOG_KEY, '{"sources": [')  # truncated
    check = stored_catalog_check(store, catalog)
    assert not check.passed
    assert "ValidationError" in check.metadata["error"].value
