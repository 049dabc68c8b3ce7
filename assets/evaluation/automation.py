"""The evaluation stage's automation: its jobs, the nightly schedule and two sensors.

- ``evaluation`` job: restorations + metric_scores for one method x bench partition.
- ``reporting`` job: benchmark_tables from every score in the store.
- ``new_checkpoint_sensor``: a method partition per finished checkpoint (final ones by
  default) and evaluation runs for the bench sets it has no scores on.
- ``evaluation_nightly`` (stopped by default): every method on every built bench set.
- ``reporting_after_evaluation``: one reporting run once evaluation runs have settled.
"""

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import dagster as dg

from assets.evaluation.assets import build_evaluation_assets
from assets.evaluation.resource import (
    METHODS_PARTITIONS,
    EvaluationResource,
    evaluation_partition,
)
from assets.profiles import evaluation_resource
from assets.resources import ObjectStoreResource
from cotir_pipeline.checkpoint_layout import CHECKPOINT_MARKER, CheckpointRef, find_checkpoints
from cotir_pipeline.evaluation.method_names import BUILTIN_METHODS
from cotir_pipeline.evaluation.stage import available_benches, bench_specs
from cotir_pipeline.settings import CotirSettings
from cotir_pipeline.store import ObjectStore

EVALUATION_JOB = "evaluation"
REPORTING_JOB = "reporting"
NIGHTLY_SCHEDULE = "evaluation_nightly"
CHECKPOINT_SENSOR = "new_checkpoint_sensor"
REPORTING_SENSOR = "reporting_after_evaluation"
DEFAULT_NIGHTLY_CRON = "0 3 * * *"

#: What ``dg.define_asset_job`` returns (its class is not part of Dagster's public API).
AssetJob = Any

_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _latest_storage_id(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    records = instance.fetch_materializations(key, limit=1).records
    return records[0].storage_id if records else 0


def evaluated_partitions(instance: dg.DagsterInstance, scores_key: dg.AssetKey) -> set[str]:
    """The method x bench partitions whose scores are already materialized."""
    return {str(key) for key in instance.get_materialized_partitions(scores_key)}


def checkpoints_to_evaluate(
    store: ObjectStore, evaluation: EvaluationResource
) -> list[CheckpointRef]:
    """Finished checkpoints that become evaluation methods: final ones, or all when opted in."""
    return [
        ref
        for ref in find_checkpoints(store, evaluation.checkpoint_prefix)
        if ref.final or evaluation.evaluate_intermediate_checkpoints
    ]


def build_checkpoint_sensor(
    job: AssetJob, benches: Sequence[str], scores_key: dg.AssetKey | None = None
) -> dg.SensorDefinition:
    """``new_checkpoint_sensor``: a method partition and evaluation runs per new checkpoint."""

    @dg.sensor(
        name=CHECKPOINT_SENSOR,
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Adds the built-in methods, every configured output folder and a "
        f"`cotir-<variant>-<recipe>-<run>-s<step>` method for each run's final checkpoint (a "
        f"folder with {CHECKPOINT_MARKER} under the checkpoint prefix; intermediate ones "
        f"when evaluation.evaluate_intermediate_checkpoints is set), and requests evaluation "
        f"runs for each new checkpoint on every bench set whose scores are not there yet; "
        f"the cursor remembers the checkpoints already requested.",
    )
    def new_checkpoint_sensor(
        context: dg.SensorEvaluationContext,
        store: ObjectStoreResource,
        evaluation: EvaluationResource,
    ) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        seen = set(cursor.get("checkpoints", []))
        wanted = [*BUILTIN_METHODS, *evaluation.folder_methods()]
        new_methods = [
            m for m in wanted if not context.instance.has_dynamic_partition(METHODS_PARTITIONS, m)
        ]
        requests = []
        object_store = store.open()
        ready = available_benches(object_store, benches)
        done = evaluated_partitions(context.instance, scores_key) if scores_key else set()
        for ref in checkpoints_to_evaluate(object_store, evaluation):
            if ref.hash in seen:
                continue
            seen.add(ref.hash)
            if not context.instance.has_dynamic_partition(METHODS_PARTITIONS, ref.method):
                new_methods.append(ref.method)
            todo = [b for b in ready if str(evaluation_partition(ref.method, b)) not in done]
            context.log.info(
                f"new checkpoint {ref.folder}: method {ref.method}, "
                f"{len(todo)} of {len(ready)} bench set(s) still to evaluate"
            )
            requests += [
                dg.RunRequest(
                    run_key=f"{ref.hash}/{bench}",
                    partition_key=evaluation_partition(ref.method, bench),
                    tags={"cotir/checkpoint": ref.folder},
                )
                for bench in todo
            ]
        new_methods = list(dict.fromkeys(new_methods))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[
                dg.AddDynamicPartitionsRequest(METHODS_PARTITIONS, new_methods)
            ]
            if new_methods
            else [],
            cursor=json.dumps({"checkpoints": sorted(seen)}),
        )

    return new_checkpoint_sensor


def build_nightly_schedule(
    job: AssetJob, benches: Sequence[str], cron: str
) -> dg.ScheduleDefinition:
    """``evaluation_nightly``: one evaluation run per existing (method, bench) partition."""

    @dg.schedule(
        name=NIGHTLY_SCHEDULE,
        job=job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Re-runs every method on every bench set that bench_sets built "
        "(restorations are resumed, so "
        "only missing or outdated outputs are recomputed); reporting follows through "
        f"{REPORTING_SENSOR}.",
    )
    def evaluation_nightly(
        context: dg.ScheduleEvaluationContext, store: ObjectStoreResource
    ) -> Iterable[dg.RunRequest | dg.SkipReason]:
        methods = context.instance.get_dynamic_partitions(METHODS_PARTITIONS)
        if not methods:
            yield dg.SkipReason(f"no method partitions yet ({CHECKPOINT_SENSOR} adds them)")
            return
        ready = available_benches(store.open(), benches)
        if not ready:
            yield dg.SkipReason("bench_sets built no set (see bench_sets/index.json)")
            return
        tick = context.scheduled_execution_time.isoformat()  # run keys are unique per tick
        for method in methods:
            for bench in ready:
                key = evaluation_partition(method, bench)
                yield dg.RunRequest(
                    run_key=f"{tick}/{key}",
                    partition_key=key,
                    tags={"cotir/trigger": NIGHTLY_SCHEDULE},
                )

    return evaluation_nightly


def build_reporting_sensor(
    reporting: AssetJob,
    scores_key: dg.AssetKey,
    tables_key: dg.AssetKey,
) -> dg.SensorDefinition:
    """``reporting_after_evaluation``: one reporting run once evaluation runs have settled."""

    @dg.sensor(
        name=REPORTING_SENSOR,
        job=reporting,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches the reporting job once when metric_scores has new "
        "materializations, no evaluation run is queued or running, and benchmark_tables is "
        "older than the newest scores.",
    )
    def reporting_after_evaluation(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        handled = int(context.cursor or 0)
        latest = _latest_storage_id(context.instance, scores_key)
        if latest <= handled:
            return dg.SensorResult(skip_reason="no new scores")
        if _latest_storage_id(context.instance, tables_key) > latest:
            return dg.SensorResult(
                skip_reason="tables are newer than the scores", cursor=str(latest)
            )
        active = context.instance.get_runs_count(
            dg.RunsFilter(job_name=EVALUATION_JOB, statuses=_ACTIVE)
        )
        if active:
            return dg.SensorResult(skip_reason=f"waiting for {active} evaluation run(s)")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"scores-{latest}")], cursor=str(latest)
        )

    return reporting_after_evaluation


class EvaluationDefinitions(NamedTuple):
    """What the evaluation stage adds to the code location."""

    assets: list[dg.AssetsDefinition]
    jobs: list[AssetJob]
    schedules: list[dg.ScheduleDefinition]
    sensors: list[dg.SensorDefinition]
    resources: dict[str, Any]


def evaluation_run_selection() -> dg.AssetSelection:
    """The assets only the evaluation and reporting jobs run (not the demo job)."""
    return dg.AssetSelection.assets("restorations", "metric_scores", "benchmark_tables")


def build_evaluation_definitions(
    settings: CotirSettings,
    op_tags: Callable[[str], dict[str, str]] = lambda name: {},
    *,
    nightly_cron: str = DEFAULT_NIGHTLY_CRON,
    evaluation: EvaluationResource | None = None,
    checkpoints: Sequence[dg.AssetKey] = (),
) -> EvaluationDefinitions:
    """Assets, the ``evaluation`` and ``reporting`` jobs, the schedule, sensors, resources."""
    built = build_evaluation_assets(settings, op_tags, checkpoints=checkpoints)
    benches = [spec.name for spec in bench_specs(settings.profile)]
    evaluation_job = dg.define_asset_job(
        name=EVALUATION_JOB,
        selection=dg.AssetSelection.assets(built.restorations, built.metric_scores),
        description="Restore and score one method on one bench set (partition method x bench).",
    )
    reporting_job = dg.define_asset_job(
        name=REPORTING_JOB,
        selection=dg.AssetSelection.assets(built.benchmark_tables),
        description="Regenerate the benchmark tables from every score in the store.",
    )
    return EvaluationDefinitions(
        assets=list(built),
        jobs=[evaluation_job, reporting_job],
        schedules=[build_nightly_schedule(evaluation_job, benches, nightly_cron)],
        sensors=[
            build_checkpoint_sensor(evaluation_job, benches, built.metric_scores.key),
            build_reporting_sensor(
                reporting_job, built.metric_scores.key, built.benchmark_tables.key
            ),
        ],
        resources={"evaluation": evaluation or evaluation_resource(settings)},
    )
