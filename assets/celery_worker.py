"""Start a Celery worker for this code location on one queue (``cpu`` or ``gpu``).

The worker reads the same COTIR_* settings as the code location (broker, backend)
and the Dagster instance in $DAGSTER_HOME, so it can run any step of a run that
was launched with COTIR_EXECUTOR=celery:

    DAGSTER_HOME=$PWD/.dagster_home COTIR_EXECUTOR=celery \\
        python -m assets.celery_worker --queue cpu --name cpu-1
"""

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from assets.execution import CPU_QUEUE, GPU_QUEUE, celery_config, entry_point_settings


def write_worker_config(text: str, dagster_home: Path) -> Path:
    """Store the worker's executor config under ``$DAGSTER_HOME/celery``, named by its digest.

    The process execs into ``dagster-celery`` and can clean nothing up afterwards, so the
    file lives in the instance folder rather than a fresh temp dir: workers that share
    settings share one file, a restart rewrites nothing, and different settings never race
    for one name.
    """
    folder = dagster_home / "celery"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"executor-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists() or path.read_text() != text:
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
            handle.write(text)
        os.replace(handle.name, path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write the worker's config from the settings and run ``dagster-celery worker start``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", choices=[CPU_QUEUE, GPU_QUEUE], required=True)
    parser.add_argument("--name", default=None, help="worker name (default: <queue>@host)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--concurrency", type=int, default=1, help="steps run at once")
    arguments = parser.parse_args(argv)
    settings = entry_point_settings("celery worker")
    config_path = write_worker_config(
        yaml.safe_dump({"execution": {"celery": celery_config(settings)}}),
        Path(os.environ["DAGSTER_HOME"]),
    )
    executable = str(Path(sys.executable).parent / "dagster-celery")
    if not Path(executable).exists():
        executable = shutil.which("dagster-celery") or "dagster-celery"
    command = [
        executable,
        "worker",
        "start",
        "-A",
        "dagster_celery.app",
        "-y",
        str(config_path),
        "-q",
        arguments.queue,
        "--loglevel",
        arguments.loglevel,
        "-n",
        arguments.name or arguments.queue,
        # One step at a time per worker process; start more workers for more parallelism.
        "--",
        "--concurrency",
        str(arguments.concurrency),
    ]
    # dagster-celery starts `celery` by name: make this environment's scripts findable.
    scripts = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])
    os.execv(executable, command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
