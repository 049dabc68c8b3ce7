"""How steps run: the executor picked by COTIR_EXECUTOR and the Celery queue of each asset.

With ``COTIR_EXECUTOR=celery`` every step is a Celery task on a Redis broker. Steps
of the assets named in ``COTIR_GPU_ASSETS`` go to the ``gpu`` queue, the rest to
``cpu``, so CPU-only workers and GPU nodes each take their own kind of step:

    python -m assets.celery_worker --queue cpu     # on CPU machines
    python -m assets.celery_worker --queue gpu     # on GPU nodes
"""

import os
import sys

import dagster as dg
from dagster_celery import celery_executor

from cotir_pipeline.settings import CotirSettings, SettingsError, load_settings

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
#: The op tag dagster-celery reads to pick a step's queue.
CELERY_QUEUE_TAG = "dagster-celery/queue"


def queue_of(asset_name: str, settings: CotirSettings) -> str:
    """The Celery queue of an asset's steps."""
    return GPU_QUEUE if asset_name in settings.gpu_asset_names else CPU_QUEUE


def queue_tags(asset_name: str, settings: CotirSettings) -> dict[str, str]:
    """Op tags that route an asset's steps to its queue (ignored by other executors)."""
    return {CELERY_QUEUE_TAG: queue_of(asset_name, settings)}


def celery_config(settings: CotirSettings) -> dict[str, object]:
    """The celery executor config block (also what the workers are started with)."""
    return {
        "broker": settings.celery_broker_url,
        "backend": settings.celery_backend_url,
        "config_source": {"task_default_queue": CPU_QUEUE, "worker_prefetch_multiplier": 1},
    }


def build_executor(settings: CotirSettings) -> dg.ExecutorDefinition:
    """The executor the settings ask for."""
    if settings.executor == "celery":
        return celery_executor.configured(celery_config(settings))
    if settings.executor == "in_process":
        return dg.in_process_executor
    return dg.multiprocess_executor


def entry_point_settings(program: str) -> CotirSettings:
    """Settings for a command that runs steps against ``$DAGSTER_HOME`` (demo, workers).

    A bad setting or a missing DAGSTER_HOME ends the program with one line and exit 2.
    """
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"{program}: bad setting: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if not os.environ.get("DAGSTER_HOME"):
        print(f"{program}: DAGSTER_HOME is not set (make sets it)", file=sys.stderr)
        raise SystemExit(2)
    return settings
