"""Run one job of the code location in this process, filed under its job in the UI.

``make table-vii`` calls it. Like ``dagster job execute``, but the run carries the
code location's tag (:func:`assets.definitions.code_location_run_tags`), so it is
listed under Jobs -> <job> -> Runs in ``make dev`` afterwards.

    DAGSTER_HOME=$PWD/.dagster_home python -m assets.run_job table_vii_ablation
"""

import argparse
import sys

import dagster as dg

from assets.definitions import build_definitions, code_location_run_tags
from assets.execution import entry_point_settings


def main(argv: list[str] | None = None) -> int:
    """Execute the named job (optionally one partition); exit 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", help="job name, as listed in the UI")
    parser.add_argument("--partition", help="partition key, for partitioned jobs")
    arguments = parser.parse_args(argv)
    settings = entry_point_settings(f"run job {arguments.job}")
    definitions = build_definitions(settings)
    try:
        job = definitions.resolve_job_def(arguments.job)
    except dg.DagsterInvariantViolationError:
        names = sorted(job.name for job in definitions.resolve_all_job_defs())
        print(f"no job {arguments.job!r}; jobs: {', '.join(names)}", file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key=arguments.partition,
            raise_on_error=False,
            tags=code_location_run_tags(definitions),
        )
    print(f"{arguments.job}: run {result.run_id}: {'succeeded' if result.success else 'FAILED'}")
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
