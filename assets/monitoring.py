"""``dead_run_workers``: mark runs failed whose worker process was killed.

Dagster's run monitoring needs a run launcher that can check its workers; the default
one (runs as local processes, what ``dagster dev`` and ``make dev`` use) cannot, so a run
whose worker was killed (SIGKILL, out of memory) stays STARTED for ever, with its
training step holding the queue's slot. Each run worker logs its pid when it starts
("Started process for run (pid: N)"); this sensor checks that pid on the machine the
runs are launched on and reports the run failed when the process is gone. The next launch
of the asset then resumes (training continues from its last checkpoint).
"""

from __future__ import annotations

import dagster as dg

from cotir_pipeline.scratch import process_is_gone

DEAD_RUN_WORKERS_SENSOR = "dead_run_workers"
#: The run worker's first engine event names its pid (dagster's ``execute_run`` command).
_STARTED_MESSAGE = "Started process for run"


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid the run's worker logged when it started, or None when it logged none."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or not (event.message or "").startswith(_STARTED_MESSAGE):
            continue
        data = event.engine_event_data
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None and str(pid.value).isdigit():
            return int(str(pid.value))
    return None


def build_dead_run_worker_sensor() -> dg.SensorDefinition:
    """The sensor; it acts only where runs are local processes (the default launcher)."""

    @dg.sensor(
        name=DEAD_RUN_WORKERS_SENSOR,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Marks a STARTED run failed when its worker process (a local process "
        "under Dagster's default run launcher) is gone, killed before it could report; "
        "launching the asset again resumes it. Does nothing under other run launchers, "
        "whose run monitoring checks their workers.",
    )
    def dead_run_workers(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        from dagster._core.launcher import DefaultRunLauncher

        instance = context.instance
        if not isinstance(instance.run_launcher, DefaultRunLauncher):
            return dg.SkipReason("runs are not local processes: run monitoring covers them")
        failed = []
        for record in instance.get_run_records(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
        ):
            run = record.dagster_run
            pid = run_worker_pid(instance, run.run_id)
            if pid is None or not process_is_gone(pid):
                continue
            instance.report_run_failed(
                run,
                f"the run worker (pid {pid}) is gone: it was killed before it could report "
                "(SIGKILL, out of memory). Launch the asset again to resume it.",
            )
            failed.append(run.run_id)
        if failed:
            return dg.SkipReason(f"marked {len(failed)} run(s) failed: {', '.join(failed)}")
        return dg.SkipReason("every started run has a live worker")

    return dead_run_workers
