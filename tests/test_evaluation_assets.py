"""The evaluation stage in Dagster: bench sets, method x bench runs, tables, schedule, sensors.

One module-scoped scenario materializes the demo bench sets, the built-in methods on the
demo bench, a tiny CoTIR checkpoint found by the sensor on the demo 7D subset, and the
tables, against a temporary store and a temporary Dagster instance; the tests read its results.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq
import pytest
from PIL import Image

from assets.definitions import build_definitions
from assets.evaluation.automation import (
    CHECKPOINT_SENSOR,
    EVALUATION_JOB,
    NIGHTLY_SCHEDULE,
    REPORTING_JOB,
    REPORTING_SENSOR,
    build_evaluation_definitions,
)
from assets.evaluation.resource import (
    METHODS_PARTITIONS,
    TABLED_CHECK,
    EvaluationResource,
    ensure_builtin_methods,
    evaluation_partition,
    split_evaluation_partition,
)
from assets.profiles import evaluation_resource
from assets.resources import ObjectStoreResource
from cotir_pipeline.checkpoint_layout import CHECKPOINT_MARKER, find_checkpoints, model_subfolder
from cotir_pipeline.evaluation.method_names import BUILTIN_METHODS, cotir_method
from cotir_pipeline.evaluation.reporting import write_tables
from cotir_pipeline.evaluation.scoring import ScoreRow
from cotir_pipeline.evaluation.stage import bench_specs
from cotir_pipeline.settings import CotirSettings, Profile
from cotir_pipeline.store import LocalObjectStore

# Dagster itself tags multi-partitioned runs with dagster/partition/<dimension>, which its
# own tag-key check calls non-compliant.
pytestmark = pytest.mark.filterwarnings("ignore:Non-compliant tag keys:DeprecationWarning")

DEMO_BENCHES = [spec.name for spec in bench_specs(Profile.DEMO)]
NIGHT = datetime.datetime(2026, 1, 2, 3, 0, tzinfo=datetime.UTC)


@dataclass
class Scenario:
    """Everything the module's scenario produced."""

    settings: CotirSettings
    definitions: dg.Definitions
    instance: dg.DagsterInstance
    store: LocalObjectStore
    results: dict[str, dg.ExecuteInProcessResult] = field(default_factory=dict)
    ticks: dict[str, Any] = field(default_factory=dict)
    checkpoint_method: str = ""


def _metadata(result: dg.ExecuteInProcessResult, node: str) -> dict[str, Any]:
    return {
        key: value.value
        for key, value in result.asset_materializations_for_node(node)[0].metadata.items()
    }


def _sensor_tick(scenario: Scenario, name: str, cursor: str | None) -> dg.SensorResult:
    sensor = scenario.definitions.resolve_sensor_def(name)
    with dg.build_sensor_context(
        instance=scenario.instance,
        instance_ref=scenario.instance.get_ref(),
        cursor=cursor,
        resources=scenario.definitions.resources,
        definitions=scenario.definitions,
    ) as context:
        return sensor.evaluate_tick(context)  # type: ignore[return-value]


def _schedule_tick(
    schedule: dg.ScheduleDefinition, definitions: dg.Definitions, instance: dg.DagsterInstance
) -> Any:
    """One tick of ``schedule`` at 03:00. The context is closed at once: an open one keeps
    the instance it opened as Dagster's current one, which breaks later tests."""
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=NIGHT,
        repository_def=definitions.get_repository_def(),
        resources=definitions.resources,
    ) as context:
        return schedule.evaluate_tick(context)  # type: ignore[return-value]


def _apply_partition_requests(instance: dg.DagsterInstance, tick: Any) -> None:
    """What the daemon does with a tick's dynamic partition requests."""
    for request in tick.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)


#: Where the training stage uploads a checkpoint: checkpoints/<variant>/<run>/step-N/.
CHECKPOINT_FOLDER = "checkpoints/tiny/run-1/step-0000010"


def _save_tiny_checkpoint(store: LocalObjectStore, folder: Path) -> None:
    """A tiny-variant checkpoint laid out like training's: ``model/`` + state, marker last."""
    from models.checkpoint_io import save_checkpoint
    from models.restore import CoTIRRestorer

    model = CoTIRRestorer.from_variant("tiny", seed=3).model
    save_checkpoint(model, folder / "model", variant="tiny", include_base=True)
    (folder / "training_state.pt").write_bytes(b"optimizer state, never downloaded")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        store.put_file(f"{CHECKPOINT_FOLDER}/{path.relative_to(folder).as_posix()}", path)
    marker = {"step": 10, "variant": "tiny"}
    store.put_text(f"{CHECKPOINT_FOLDER}/{CHECKPOINT_MARKER}", json.dumps(marker))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("evaluation")
    settings = CotirSettings(home=root / "home", store=(root / "store").as_uri())
    definitions = build_definitions(settings)
    with dg.instance_for_test() as instance:
        scenario = Scenario(settings, definitions, instance, LocalObjectStore(root / "store"))
        bench_sets = [definitions.resolve_assets_def("bench_sets")]
        for run in ("bench_sets", "bench_sets_again"):
            scenario.results[run] = dg.materialize(
                bench_sets, instance=instance, raise_on_error=False
            )

        # First sensor tick: the built-in methods become partitions; nothing to run yet.
        first = _sensor_tick(scenario, CHECKPOINT_SENSOR, None)
        scenario.ticks["first"] = first
        _apply_partition_requests(instance, first)

        evaluation = definitions.resolve_job_def(EVALUATION_JOB)
        for method in BUILTIN_METHODS:
            result = evaluation.execute_in_process(
                instance=instance, partition_key=evaluation_partition(method, "demo_bench")
            )
            scenario.results[method] = result
        scenario.results["identity_again"] = evaluation.execute_in_process(
            instance=instance, partition_key=evaluation_partition("identity", "demo_bench")
        )

        # A finished checkpoint appears: the sensor adds its method and requests its runs.
        _save_tiny_checkpoint(scenario.store, root / "checkpoint")
        second = _sensor_tick(scenario, CHECKPOINT_SENSOR, first.cursor)
        _apply_partition_requests(instance, second)
        scenario.ticks["second"] = second
        scenario.ticks["third"] = _sensor_tick(scenario, CHECKPOINT_SENSOR, second.cursor)
        request = next(
            r
            for r in second.run_requests or []
            if split_evaluation_partition(r.partition_key or "")[1] == "seven_d_demo"
        )
        scenario.checkpoint_method = split_evaluation_partition(request.partition_key or "")[0]
        scenario.results["cotir"] = evaluation.execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=request.tags
        )

        scenario.ticks["reporting_before"] = _sensor_tick(scenario, REPORTING_SENSOR, None)
        reporting = definitions.resolve_job_def(REPORTING_JOB)
        scenario.results["tables"] = reporting.execute_in_process(instance=instance)
        scenario.ticks["reporting_after"] = _sensor_tick(scenario, REPORTING_SENSOR, None)
        yield scenario


def test_bench_sets_are_built_in_the_public_format_with_counts(scenario: Scenario) -> None:
    store = scenario.store
    built = scenario.results["bench_sets"]
    assert built.success
    checks = {c.check_name: c.passed for c in built.get_asset_check_evaluations()}
    assert checks == {"samples_with_distinct_lineage_ids": True}
    for name in DEMO_BENCHES:
        keys = {info.key for info in store.list(f"bench_sets/{name}/")}
        assert {f"bench_sets/{name}/test.jsonl", f"bench_sets/{name}/bench.json"} <= keys
        records = [
            json.loads(line)
            for line in store.get_text(f"bench_sets/{name}/test.jsonl").splitlines()
        ]
        assert records
        assert all(f"bench_sets/{name}/{r['lq_path']}" in keys for r in records)
        assert all(f"bench_sets/{name}/hq/{Path(r['lq_path']).name}" in keys for r in records)
    metadata = _metadata(scenario.results["bench_sets"], "bench_sets")
    assert metadata["samples/demo_bench"] == 44
    assert metadata["samples/agenticir_demo"] == 32  # 16 combinations x 2
    assert metadata["samples/seven_d_demo"] == 30
    assert "| agenticir_demo | A | 16 |" in metadata["by_subset"]
    assert metadata["objects_uploaded"] > 0
    # The UI's columns and rows of the per-sample lineage manifests, as stored.
    stored = pq.read_table(store.root / "bench_sets" / "demo_bench" / "manifest.parquet")  # type: ignore[attr-defined]
    columns = [column.name for column in metadata["dagster/column_schema"].columns]
    assert columns == stored.schema.names
    assert metadata["dagster/row_count"] == 44 + 32 + 30


def test_bench_sets_rebuild_uploads_nothing_when_unchanged(scenario: Scenario) -> None:
    assert scenario.results["bench_sets_again"].success
    again = _metadata(scenario.results["bench_sets_again"], "bench_sets")
    assert again["objects_uploaded"] == 0
    assert again["objects_deleted"] == 0
    assert (
        again["objects_unchanged"]
        == _metadata(scenario.results["bench_sets"], "bench_sets")["objects_uploaded"]
    )


def test_builtin_methods_restore_and_score_the_demo_bench(scenario: Scenario) -> None:
    store = scenario.store
    for method in BUILTIN_METHODS:
        result = scenario.results[method]
        assert result.success
        restored = _metadata(result, "restorations")
        assert restored["written/vague"] == restored["written/precise"] == 44
        assert "data:image/png;base64," in restored["preview"]
        for kind in ("vague", "precise"):
            outputs = list(store.list(f"restorations/{method}/demo_bench/{kind}/"))
            assert len(outputs) == 44
            assert store.exists(f"restorations/{method}/demo_bench/runtime-{kind}.jsonl")
        scores = _metadata(result, "metric_scores")
        for kind in ("vague", "precise"):
            assert scores[f"psnr/{kind}"] > 10
            assert 0 < scores[f"ssim/{kind}"] <= 1
            assert "lpips/" + kind not in scores
            assert "weights missing" in scores["not_available"][f"lpips/{kind}"]
            assert "CUDA" in scores["not_available"][f"maclip/{kind}"]
        table = pq.read_table(
            store.root / "metric_scores" / method / "demo_bench.parquet"  # type: ignore[attr-defined]
        ).to_pylist()
        assert len(table) == 44 * 8 * 2
        assert {row["metric"] for row in table if row["value"] is not None} == {"psnr", "ssim"}
        assert all(row["reason"] for row in table if row["value"] is None)
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks["every_sample_scored_or_explained"] is True
        assert checks["every_sample_restored"] is True
        columns = [c.name for c in scores["dagster/column_schema"].columns]
        assert columns == [f.name for f in fields(ScoreRow)]
        assert scores["dagster/row_count"] == 44 * 8 * 2
    chain = _metadata(scenario.results["classical_chain"], "metric_scores")
    identity = _metadata(scenario.results["identity"], "metric_scores")
    assert chain["psnr/precise"] > identity["psnr/precise"]


def test_a_bench_sample_chain_ends_in_its_scores_per_method(scenario: Scenario) -> None:
    """bench_sets and metric_scores write per-sample rows; lineage joins them by sample id."""
    from cotir_pipeline.lineage.build import build_lineage, discover_stage_inputs, read_stage_rows
    from cotir_pipeline.lineage.details import chain_details
    from cotir_pipeline.lineage.read import lookup

    store = scenario.store
    bench_rows = pq.read_table(store.root / "bench_sets" / "demo_bench" / "manifest.parquet")
    assert bench_rows.num_rows == 44
    ids = bench_rows.column("sample_id").to_pylist()
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in ids)  # the one id rule
    assert len(set(ids)) == 44
    samples = pq.read_table(
        store.root / "metric_scores" / "identity" / "demo_bench.samples.parquet"
    ).to_pylist()
    assert len(samples) == 44 * 2  # one row per sample and prompt
    assert {row["sample_id"] for row in samples} == set(ids)
    assert all(row["output_sha256"] and row["score:psnr"] > 0 for row in samples)
    expected_rows = {f"demo_bench/identity/{row['prompt_kind']}" for row in samples}
    assert {row["evaluation_row"] for row in samples} == expected_rows

    found = discover_stage_inputs(store)
    assert "bench_sets" in found
    assert "evaluation" in found
    inputs = {
        stage: read_stage_rows(store, stage, found[stage]) for stage in ("bench_sets", "evaluation")
    }
    build_lineage(store, **inputs)  # type: ignore[arg-type]
    record = lookup(store, ids[0])
    assert record is not None
    assert record.stage == "evaluation"
    assert record.step("bench_sets").details["bench_sets"] == ["demo_bench"]
    rows = record.step("evaluation").details["evaluation_rows"]
    assert "demo_bench/identity/precise" in rows
    assert "demo_bench/classical_chain/vague" in rows
    details = "\n".join(chain_details(store, record))
    assert "bench demo_bench: record " in details
    assert "identity on demo_bench, precise: psnr " in details
    assert "classical_chain on demo_bench, vague: psnr " in details


def test_restorations_resume_instead_of_redoing(scenario: Scenario) -> None:
    again = _metadata(scenario.results["identity_again"], "restorations")
    assert again["written/vague"] == again["written/precise"] == 0
    assert again["skipped/vague"] == again["skipped/precise"] == 44
    assert again["objects_uploaded"] == 0


def test_checkpoint_sensor_adds_partitions_and_requests_each_checkpoint_once(
    scenario: Scenario,
) -> None:
    first = scenario.ticks["first"]
    assert not first.run_requests
    added = [key for r in first.dynamic_partitions_requests for key in r.partition_keys]
    assert added == list(BUILTIN_METHODS)

    second = scenario.ticks["second"]
    (ref,) = find_checkpoints(scenario.store)
    assert ref.folder == CHECKPOINT_FOLDER
    assert scenario.checkpoint_method == cotir_method(ref.hash) == f"cotir-{ref.hash[:12]}"
    added = [key for r in second.dynamic_partitions_requests for key in r.partition_keys]
    assert added == [scenario.checkpoint_method]
    assert sorted(split_evaluation_partition(r.partition_key) for r in second.run_requests) == [
        (scenario.checkpoint_method, bench) for bench in sorted(DEMO_BENCHES)
    ]
    assert scenario.instance.has_dynamic_partition(METHODS_PARTITIONS, scenario.checkpoint_method)

    third = scenario.ticks["third"]
    assert not third.run_requests
    assert not third.dynamic_partitions_requests


def test_a_cotir_checkpoint_is_restored_with_both_prompts_and_scored(scenario: Scenario) -> None:
    result = scenario.results["cotir"]
    assert result.success
    method = scenario.checkpoint_method
    restored = _metadata(result, "restorations")
    assert restored["written/vague"] == restored["written/precise"] == 30
    assert restored["checkpoint_hash"].startswith(method.removeprefix("cotir-"))
    cached = scenario.settings.cache_dir / "evaluation" / "checkpoints" / method[6:]  # type: ignore[operator]
    assert (cached / "model" / "cotir.json").is_file()
    assert not (cached / "training_state.pt").exists()
    record = json.loads(scenario.store.get_text(f"restorations/{method}/seven_d_demo/run.json"))
    assert record["parameters"] > 0
    assert record["steps"] == 4
    # The per-sample rows: every sample x prompt restored, with its checkpoint and digest.
    rows = pq.read_table(
        scenario.store.root / "restorations" / method / "seven_d_demo" / "samples.parquet"  # type: ignore[attr-defined]
    ).to_pylist()
    assert len(rows) == restored["dagster/row_count"] == 2 * 30
    assert {row["status"] for row in rows} == {"ok"}
    assert {row["checkpoint"] for row in rows} == {record["checkpoint_hash"]}
    assert all(len(row["output_sha256"]) == 64 for row in rows)
    scores = _metadata(result, "metric_scores")
    assert scores["psnr/vague"] > 0
    assert scores["psnr/precise"] > 0


def test_benchmark_tables_hold_our_rows_reported_rows_and_provenance(scenario: Scenario) -> None:
    result = scenario.results["tables"]
    assert result.success
    store = scenario.store
    files = {info.key.removeprefix("benchmark_tables/") for info in store.list("benchmark_tables/")}
    for key in ("ii", "iii", "iv", "v", "vi", "viii"):
        assert {f"table_{key}.parquet", f"table_{key}.md", f"table_{key}.html"} <= files
    assert {"grid_demo_bench.png", "grid_seven_d_demo.png", "index.md"} <= files

    metadata = _metadata(result, "benchmark_tables")
    assert "reported (paper)" in metadata["table_ii"]
    assert "| identity | precise | ours |" in metadata["table_ii"]
    # Every table, chart and grid is viewable on the asset page (images inline, scaled
    # to fit the metadata dialog).
    for key in ("ii", "iii", "iv", "v", "vi", "viii"):
        assert metadata[f"table_{key}"].startswith(f"### Table {key.upper()}:")
    for name in ("demo_bench", "seven_d_demo"):
        assert "data:image/jpeg;base64," in metadata[f"grid_{name}"]
        encoded = metadata[f"grid_{name}"].split("base64,")[1].rstrip(")")
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as grid:
            assert grid.width <= 900
    charts = [key for key in metadata if key.startswith("chart_")]
    assert charts
    assert all("data:image/jpeg;base64," in metadata[key] for key in charts)

    rows = pq.read_table(store.root / "benchmark_tables" / "table_ii.parquet").to_pylist()  # type: ignore[attr-defined]
    ours = [row for row in rows if row["source"] == "ours"]
    reported = [row for row in rows if row["source"] == "reported (paper)"]
    assert {row["method"] for row in ours} == set(BUILTIN_METHODS)
    assert reported
    assert all(row["provenance_source"] != "this run" for row in reported)
    for row in ours:
        assert row["psnr"] is not None
        assert row["lpips"] is None
        assert "lpips" in json.loads(row["na_reasons"])
        assert row["code_version"]
        assert row["seed"] == 0
        assert "psnr" in json.loads(row["metric_settings"])

    [check] = result.get_asset_check_evaluations()
    assert check.check_name == TABLED_CHECK
    assert check.passed, check.metadata

    seven_d = pq.read_table(store.root / "benchmark_tables" / "table_iv.parquet").to_pylist()  # type: ignore[attr-defined]
    cotir_rows = [row for row in seven_d if row["method"] == scenario.checkpoint_method]
    assert {row["prompt"] for row in cotir_rows} == {"vague", "precise"}
    assert all(
        row["checkpoint_hash"].startswith(scenario.checkpoint_method[6:]) for row in cotir_rows
    )
    assert all(row["runtime_s"] is not None for row in cotir_rows)


def test_the_tables_check_names_a_scored_method_a_table_left_out(
    scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cotir_pipeline.evaluation import tables

    build = tables.table_iii_per_task

    def without_identity(rows: list[Any], provenance: Any) -> Any:
        return build([row for row in rows if row.method != "identity"], provenance)

    monkeypatch.setattr(tables, "table_iii_per_task", without_identity)
    # A copy of what the tables read, so the scenario's own tables stay as they are.
    copy = LocalObjectStore(tmp_path / "store")
    for prefix in ("metric_scores", "restorations", "bench_sets"):
        shutil.copytree(scenario.store.root / prefix, copy.root / prefix)
    work = tmp_path / "work"
    work.mkdir()
    result = write_tables(
        copy,
        evaluation_resource(scenario.settings),
        bench_specs(Profile.DEMO),
        work,
        lambda message: None,
    )
    assert not result.passed
    assert result.missing_per_table == {"III": ["identity"]}


def test_reporting_sensor_runs_once_after_new_scores(scenario: Scenario) -> None:
    before = scenario.ticks["reporting_before"]
    assert len(before.run_requests) == 1
    after = scenario.ticks["reporting_after"]
    assert not after.run_requests  # the tables are newer than every score


def test_nightly_schedule_requests_every_method_on_every_bench(scenario: Scenario) -> None:
    schedule = scenario.definitions.resolve_schedule_def(NIGHTLY_SCHEDULE)
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    requests = _schedule_tick(schedule, scenario.definitions, scenario.instance).run_requests or []
    methods = [*BUILTIN_METHODS, scenario.checkpoint_method]
    assert sorted(split_evaluation_partition(r.partition_key or "") for r in requests) == sorted(
        (method, bench) for method in methods for bench in DEMO_BENCHES
    )


def test_schedule_skips_without_methods(tmp_path: Path) -> None:
    settings = CotirSettings(home=tmp_path, store=(tmp_path / "store").as_uri())
    definitions = build_definitions(settings)
    with dg.instance_for_test() as instance:
        # Resolved inside: Dagster resolves definitions against the current instance.
        schedule = definitions.resolve_schedule_def(NIGHTLY_SCHEDULE)
        tick = _schedule_tick(schedule, definitions, instance)
        assert not tick.run_requests
        assert tick.skip_message
        assert ensure_builtin_methods(instance) == list(BUILTIN_METHODS)
        assert ensure_builtin_methods(instance) == []
        tick = _schedule_tick(schedule, definitions, instance)
        assert len(tick.run_requests or []) == len(BUILTIN_METHODS) * len(DEMO_BENCHES)


def test_restorations_fail_clearly_without_bench_sets(tmp_path: Path) -> None:
    settings = CotirSettings(home=tmp_path, store=(tmp_path / "store").as_uri())
    with dg.instance_for_test() as instance:
        job = build_definitions(settings).resolve_job_def(EVALUATION_JOB)
        ensure_builtin_methods(instance)
        result = job.execute_in_process(
            instance=instance,
            partition_key=evaluation_partition("identity", "demo_bench"),
            raise_on_error=False,
        )
        assert not result.success
        failure = next(event for event in result.all_events if event.is_step_failure)
    assert "bench set 'demo_bench' is not in the store" in str(failure.event_specific_data)
    assert "materialize bench_sets first" in str(failure.event_specific_data)


def test_the_full_profile_reports_unconfigured_sets_as_not_available(tmp_path: Path) -> None:
    settings = CotirSettings(
        home=tmp_path,
        store=(tmp_path / "store").as_uri(),
        profile=Profile.FULL,
        annotation_backend="template",
    )
    definitions = build_definitions(settings)
    with dg.instance_for_test() as instance:
        result = dg.materialize([definitions.resolve_assets_def("bench_sets")], instance=instance)
        ensure_builtin_methods(instance)
        tick = _schedule_tick(
            definitions.resolve_schedule_def(NIGHTLY_SCHEDULE), definitions, instance
        )
        assert result.success
        metadata = _metadata(result, "bench_sets")
    assert not tick.run_requests
    assert "bench_sets built no set" in (tick.skip_message or "")
    assert "not configured: set evaluation.cotir_bench_dir" in metadata["sets"]
    assert "COTIR_MIRROR_DIR/mio100" in metadata["sets"]
    status = json.loads(LocalObjectStore(tmp_path / "store").get_text("bench_sets/index.json"))
    assert {entry["status"] for entry in status.values()} == {"n/a"}


def test_partition_keys_are_readable() -> None:
    key = evaluation_partition("cotir-0123456789ab", "demo_bench")
    assert key.keys_by_dimension == {"method": "cotir-0123456789ab", "bench": "demo_bench"}
    assert split_evaluation_partition(str(key)) == ("cotir-0123456789ab", "demo_bench")
    with pytest.raises(ValueError, match="lower-case hex"):
        cotir_method("not-a-hash")


def test_a_folder_of_another_methods_outputs_is_scored_as_it_is(
    scenario: Scenario, tmp_path: Path
) -> None:
    """``folder-<name>``: precomputed outputs (here: the identity's) scored like any method."""
    for kind in ("vague", "precise"):
        target = tmp_path / "other" / "demo_bench" / kind
        target.mkdir(parents=True)
        for info in scenario.store.list(f"restorations/identity/demo_bench/{kind}/"):
            scenario.store.download_file(info.key, target / info.key.rsplit("/", 1)[-1])
    definitions = _with_method_folders(scenario, {"other": str(tmp_path / "other")})
    with dg.instance_for_test() as instance:
        added = _add_methods_from_sensor(definitions, instance)
        assert "folder-other" in added
        result = definitions.resolve_job_def(EVALUATION_JOB).execute_in_process(
            instance=instance, partition_key=evaluation_partition("folder-other", "demo_bench")
        )
        assert result.success
        scores = _metadata(result, "metric_scores")
        version = _metadata(result, "restorations")["restorer_version"]
    identity = _metadata(scenario.results["identity"], "metric_scores")
    assert scores["psnr/precise"] == pytest.approx(identity["psnr/precise"])
    assert version.startswith("precomputed:")


def test_a_method_whose_every_sample_fails_fails_its_partition_with_a_reason(
    scenario: Scenario, tmp_path: Path
) -> None:
    """A folder method with no outputs at all: a failed step naming a sample and why, not
    an empty score table that looks like a result."""
    for kind in ("vague", "precise"):
        (tmp_path / "empty" / "demo_bench" / kind).mkdir(parents=True)
    definitions = _with_method_folders(scenario, {"empty": str(tmp_path / "empty")})
    with dg.instance_for_test() as instance:
        assert "folder-empty" in _add_methods_from_sensor(definitions, instance)
        result = definitions.resolve_job_def(EVALUATION_JOB).execute_in_process(
            instance=instance,
            partition_key=evaluation_partition("folder-empty", "demo_bench"),
            raise_on_error=False,
        )
    assert not result.success
    failures = [event for event in result.all_events if event.is_step_failure]
    assert [event.step_key for event in failures] == ["restorations"]
    message = str(failures[0].step_failure_data.error)
    assert "folder-empty on demo_bench: every sample failed" in message
    assert "MissingOutputError" in message


def _evaluation_definitions(
    settings: CotirSettings, evaluation: EvaluationResource
) -> dg.Definitions:
    """The evaluation stage's definitions with this ``evaluation`` resource and a store."""
    built = build_evaluation_definitions(settings, evaluation=evaluation)
    return dg.Definitions(
        assets=built.assets,
        jobs=built.jobs,
        sensors=built.sensors,
        resources={"store": ObjectStoreResource.from_settings(settings), **built.resources},
    )


def _with_method_folders(scenario: Scenario, folders: dict[str, str]) -> dg.Definitions:
    """The evaluation definitions with ``evaluation.method_folders`` set."""
    resource = evaluation_resource(scenario.settings)
    custom = EvaluationResource(**{**resource.model_dump(), "method_folders": folders})
    return _evaluation_definitions(scenario.settings, custom)


def _checkpoint_sensor_tick(definitions: dg.Definitions, instance: dg.DagsterInstance) -> Any:
    """One tick of the checkpoint sensor (its context closed at once, see _schedule_tick)."""
    with dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        resources=definitions.resources,
        definitions=definitions,
    ) as context:
        return definitions.resolve_sensor_def(CHECKPOINT_SENSOR).evaluate_tick(context)


def _add_methods_from_sensor(
    definitions: dg.Definitions, instance: dg.DagsterInstance
) -> list[str]:
    """One tick of the checkpoint sensor, its partition requests applied; the keys added."""
    tick = _checkpoint_sensor_tick(definitions, instance)
    _apply_partition_requests(instance, tick)
    return [key for r in tick.dynamic_partitions_requests for key in r.partition_keys]


def test_checkpoints_are_found_by_marker_with_their_declared_hash(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    store.put_text("checkpoints/a/run/step-1/model/cotir.json", "{}")
    store.put_text("checkpoints/a/run/step-2/model/cotir.json", "{}")  # unfinished: no marker
    declared = "ab" * 32
    store.put_text(
        f"checkpoints/a/run/step-1/{CHECKPOINT_MARKER}", json.dumps({"model_sha256": declared})
    )
    store.put_text("checkpoints/b/" + CHECKPOINT_MARKER, "not json")
    refs = {ref.folder: ref for ref in find_checkpoints(store)}
    assert set(refs) == {"checkpoints/a/run/step-1", "checkpoints/b"}
    assert refs["checkpoints/a/run/step-1"].method == "cotir-abababababab"
    assert model_subfolder(refs["checkpoints/a/run/step-1"]) == "model"
    computed = refs["checkpoints/b"].hash
    assert len(computed) == 64
    store.put_text("checkpoints/b/extra.bin", "x")
    assert find_checkpoints(store)[-1].hash != computed  # a changed folder is a new method


def _marker(step: int, final: bool, run: str = "r0123456789") -> str:
    """A training marker as ``models.train`` writes it (hash declared, run and step named)."""
    return json.dumps(
        {
            "step": step,
            "total_steps": 10,
            "final": final,
            "run": run,
            "variant": "demo",
            "flow_start": "reference",
            "constraint_mode": "lagrangian",
            "model_sha256": f"{step:02d}" * 32,
        }
    )


def test_checkpoint_methods_say_variant_recipe_run_and_step(tmp_path: Path) -> None:
    from cotir_pipeline.evaluation.method_names import checkpoint_method

    marker = json.loads(_marker(10, True))
    assert checkpoint_method(marker, "ab" * 32) == "cotir-demo-lqflow-r0123456789-s10"
    paper = {**marker, "flow_start": "noise", "constraint_mode": "union", "variant": "cotir-4b"}
    assert checkpoint_method(paper, "ab" * 32) == "cotir-4b-paper-union-r0123456789-s10"
    assert checkpoint_method({"step": 3}, "ab" * 32) == "cotir-abababababab"


def test_the_sensor_evaluates_final_checkpoints_and_skips_scored_benches(tmp_path: Path) -> None:
    """Intermediate checkpoints are opt-in; a bench whose scores exist is not requested."""
    store_root = tmp_path / "store"
    store = LocalObjectStore(store_root)
    for step, final in ((5, False), (10, True)):
        store.put_text(f"checkpoints/demo/r0123456789/step-{step:07d}/model/cotir.json", "{}")
        store.put_text(
            f"checkpoints/demo/r0123456789/step-{step:07d}/{CHECKPOINT_MARKER}",
            _marker(step, final),
        )
    settings = CotirSettings(home=tmp_path / "home", store=store_root.as_uri())
    final_method = "cotir-demo-lqflow-r0123456789-s10"

    def tick(evaluation: EvaluationResource, instance: dg.DagsterInstance) -> Any:
        return _checkpoint_sensor_tick(_evaluation_definitions(settings, evaluation), instance)

    default = evaluation_resource(settings)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(METHODS_PARTITIONS, [final_method])
        scored = evaluation_partition(final_method, "demo_bench")
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="metric_scores", partition=str(scored))
        )
        requested = sorted(
            split_evaluation_partition(r.partition_key)
            for r in tick(default, instance).run_requests
        )
        assert requested == [
            (final_method, bench) for bench in sorted(DEMO_BENCHES) if bench != "demo_bench"
        ]
        everything = EvaluationResource(
            **{**default.model_dump(), "evaluate_intermediate_checkpoints": True}
        )
        requests = tick(everything, instance).run_requests
        methods = {split_evaluation_partition(r.partition_key)[0] for r in requests}
        assert methods == {final_method, "cotir-demo-lqflow-r0123456789-s5"}
