"""Run the whole demo against the persistent Dagster instance: data, evaluation, tables.

``make demo`` calls this. It runs the ``demo`` job (every asset up to the bench sets,
the base model and the training runs) for partition ``demo``, then the ``evaluation``
job for every built-in method and every trained run's final checkpoint x demo bench
partition (checkpoints whose scores are already there are not evaluated again), then
the ``reporting`` job. Runs land in ``$DAGSTER_HOME``, so they
show up in the UI (``make dev``) with their logs and metadata afterwards.

    DAGSTER_HOME=$PWD/.dagster_home python -m assets.run_demo
"""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from assets.data_stage.resource import DEMO_SOURCE
from assets.definitions import LINEAGE_JOB_NAME, build_definitions, code_location_run_tags
from assets.evaluation.automation import (
    EVALUATION_JOB,
    REPORTING_JOB,
    checkpoints_to_evaluate,
    evaluated_partitions,
)
from assets.evaluation.resource import (
    ensure_builtin_methods,
    evaluation_partition,
)
from assets.execution import entry_point_settings
from assets.profiles import evaluation_resource
from assets.resources import ObjectStoreResource
from assets.training.serving import ONNX_EXPORT_ASSET, ONNX_EXPORT_JOB, restore_command
from cotir_pipeline.evaluation.method_names import BUILTIN_METHODS
from cotir_pipeline.evaluation.stage import BENCHMARK_TABLES_PREFIX, bench_specs
from cotir_pipeline.store import ObjectStore

#: The asset whose materialized partitions say a method x bench pair is scored.
SCORES_KEY = dg.AssetKey("metric_scores")


def _report(result: dg.ExecuteInProcessResult, what: str) -> bool:
    """Print what a run materialized (and which steps failed); True on success."""
    print(f"\n{what}: run {result.run_id}: {'succeeded' if result.success else 'FAILED'}")
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        assert materialization is not None
        uri = materialization.metadata.get("uri")
        where = f" -> {uri.value}" if uri is not None else ""
        print(f"  materialized {materialization.asset_key.to_user_string()}{where}")
    for event in result.all_events:
        if event.is_step_failure and event.step_key:
            print(f"  step {event.step_key} failed: {event.event_specific_data}")
    return result.success


#: The tables printed at the end of the demo: overall and per task on the main bench set.
PRINTED_TABLES = ("table_ii.md", "table_iii.md")


def _print_tables(store: ObjectStore) -> None:
    """Print Tables II and III (every method's rows, ours beside the paper's reported ones)."""
    for name in PRINTED_TABLES:
        key = f"{BENCHMARK_TABLES_PREFIX}/{name}"
        if store.exists(key):
            print("\n" + store.get_text(key).strip())


def _start_export(definitions: dg.Definitions) -> tuple[subprocess.Popen[bytes], Path] | None:
    """Start the ONNX export job in its own process, or None where the profile has none.

    It runs beside the evaluation: the export traces the model on one core, and the
    evaluation leaves most of the second one idle, so ``make demo`` takes seconds longer
    instead of the export's 40 s. One torch thread keeps it off the evaluation's core.
    """
    names = {job.name for job in definitions.resolve_all_job_defs()}
    if ONNX_EXPORT_JOB not in names:
        return None
    log = Path(os.environ["DAGSTER_HOME"]) / f"{ONNX_EXPORT_JOB}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "assets.run_job", ONNX_EXPORT_JOB],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    return process, log


def _finish_export(
    started: tuple[subprocess.Popen[bytes], Path], instance: dg.DagsterInstance
) -> bool:
    """Wait for the export job; print its outcome and the fast restore command."""
    process, log = started
    code = process.wait()
    lines = log.read_text(errors="replace").strip().splitlines()
    print(f"\n{lines[-1] if lines else ONNX_EXPORT_JOB + ': no output'} (log: {log})")
    if code != 0:
        return False
    event = instance.get_latest_materialization_event(dg.AssetKey(ONNX_EXPORT_ASSET))
    materialization = event.asset_materialization if event is not None else None
    checkpoint = materialization.metadata.get("checkpoint") if materialization else None
    if checkpoint is not None:
        command = restore_command(Path(str(checkpoint.value)))
        print(f"restore: `.venv/bin/{command}` (the main row, on its ONNX export)")
    return True


def main() -> int:
    """Materialize the whole DAG and the demo evaluation; print where the results are."""
    settings = entry_point_settings("cotir demo")
    definitions = build_definitions(settings)
    tags = code_location_run_tags(definitions)  # listed under their jobs in the UI
    ok = True
    with dg.DagsterInstance.get() as instance:
        demo = definitions.resolve_job_def("demo").execute_in_process(
            instance=instance, partition_key=DEMO_SOURCE, raise_on_error=False, tags=tags
        )
        ok = _report(demo, "demo") and ok
        export = _start_export(definitions) if ok else None
        if ok:
            store = ObjectStoreResource.from_settings(settings).open()
            checkpoints = checkpoints_to_evaluate(store, evaluation_resource(settings))
            trained = [ref.method for ref in checkpoints]
            ensure_builtin_methods(instance, extra=trained)
            done = evaluated_partitions(instance, SCORES_KEY)
            evaluation = definitions.resolve_job_def(EVALUATION_JOB)
            for spec in bench_specs(settings.profile):
                for method in [*BUILTIN_METHODS, *trained]:
                    key = evaluation_partition(method, spec.name)
                    if method in trained and str(key) in done:
                        print(f"\nevaluation {method} x {spec.name}: already scored")
                        continue
                    result = evaluation.execute_in_process(
                        instance=instance,
                        partition_key=key,
                        raise_on_error=False,
                        tags=tags,
                    )
                    ok = _report(result, f"evaluation {method} x {spec.name}") and ok
            reporting = definitions.resolve_job_def(REPORTING_JOB).execute_in_process(
                instance=instance, raise_on_error=False, tags=tags
            )
            ok = _report(reporting, "reporting") and ok
            if reporting.success:
                _print_tables(store)
            lineage = definitions.resolve_job_def(LINEAGE_JOB_NAME).execute_in_process(
                instance=instance, raise_on_error=False, tags=tags
            )
            ok = _report(lineage, "lineage") and ok
        if export is not None:
            ok = _finish_export(export, instance) and ok
    print(f"\nprofile: {settings.profile.value}")
    print(f"results: {settings.store}")
    print(f"tables:  {settings.store.rstrip('/')}/{BENCHMARK_TABLES_PREFIX}/index.md")
    print("lineage: `.venv/bin/cotir lineage <sample id>` (ids: any manifest's sample_id)")
    print(f"runs:    {os.environ['DAGSTER_HOME']} (browse with `make dev`)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
