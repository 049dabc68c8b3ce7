"""Run the ``demo`` job (every asset of the DAG) against the persistent Dagster instance.

``make demo`` calls this. Runs land in ``$DAGSTER_HOME``, so they show up in the
UI (``make dev``) with their logs and metadata afterwards.

    DAGSTER_HOME=$PWD/.dagster_home python -m assets.run_demo
"""

import os
import sys

import dagster as dg

from assets.data_stage import DEMO_SOURCE
from assets.definitions import build_definitions
from cotir_pipeline.settings import SettingsError, load_settings


def main() -> int:
    """Materialize the whole DAG; print where the results are; 0 on success."""
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"cotir demo: bad setting: {error}", file=sys.stderr)
        return 2
    if not os.environ.get("DAGSTER_HOME"):
        print("cotir demo: DAGSTER_HOME is not set (make demo sets it)", file=sys.stderr)
        return 2
    job = build_definitions(settings).resolve_job_def("demo")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance, partition_key=DEMO_SOURCE, raise_on_error=False
        )
        print(f"\nrun {result.run_id}: {'succeeded' if result.success else 'FAILED'}")
        for event in result.get_asset_materialization_events():
            materialization = event.materialization
            assert materialization is not None
            uri = materialization.metadata.get("uri")
            where = f" -> {uri.value}" if uri is not None else ""
            print(f"  materialized {materialization.asset_key.to_user_string()}{where}")
        for event in result.all_events:
            if event.is_step_failure and event.step_key:
                print(f"  step {event.step_key} failed: {event.event_specific_data}")
    print(f"\nprofile: {settings.profile.value}")
    print(f"results: {settings.store}")
    print(f"runs:    {os.environ['DAGSTER_HOME']} (browse with `make dev`)")
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
