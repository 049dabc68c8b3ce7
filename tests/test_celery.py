"""Scale-out on Celery: a real Redis broker, two workers on the cpu and gpu queues."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from cotir_test_support import REPO_ROOT, free_port, skip_or_fail

pytestmark = [pytest.mark.celery, pytest.mark.slow]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_port(tmp_path: Path, service_report: list[str]) -> Iterator[int]:
    """Debian's redis-server on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        skip_or_fail("redis-server not found")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not _ping(port):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.1)
    service_report.append(f"Celery broker: redis-server on 127.0.0.1:{port}")
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=20)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def test_a_partition_runs_on_two_celery_workers(redis_port: int, tmp_path: Path) -> None:
    environment = _celery_instance(redis_port, tmp_path)
    workers = {queue: _start_worker(queue, environment, tmp_path) for queue in ("cpu", "gpu")}
    try:
        _wait_until_ready(workers, tmp_path)
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("dagster")),
                "asset",
                "materialize",
                "-f",
                "assets/definitions.py",
                "--partition",
                "demo",
                "--select",
                "pipeline_environment,source_catalog,raw_pairs,pair_shards",
            ],
            cwd=REPO_ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-5000:]
        assert 'to queue "cpu"' in output
        assert 'to queue "gpu"' in output
    finally:
        for process, log in workers.values():
            _stop(process)
            log.close()
    logs = {queue: (tmp_path / f"worker-{queue}.log").read_text() for queue in workers}
    succeeded = {queue: text.count("succeeded in") for queue, text in logs.items()}
    assert succeeded["cpu"] >= 3, logs["cpu"][-3000:]  # environment, catalog, raw pairs
    assert succeeded["gpu"] >= 1, logs["gpu"][-3000:]  # the shard step
    assert (tmp_path / "cotir" / "store" / "pair_shards" / "demo" / "_SUCCESS.json").exists()


def _celery_instance(redis_port: int, tmp_path: Path) -> dict[str, str]:
    """A Dagster instance with the Celery executor on the test's Redis; its environment."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").symlink_to(REPO_ROOT / "dagster.yaml")
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "COTIR_HOME": str(tmp_path / "cotir"),
        "COTIR_EXECUTOR": "celery",
        "COTIR_CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "COTIR_CELERY_BACKEND_URL": f"redis://127.0.0.1:{redis_port}/1",
        # Route the shard step to the gpu queue so that each worker must take a step.
        "COTIR_GPU_ASSETS": "pair_shards",
    }
    # Create the instance's SQLite storage once, before two workers race to create it.
    subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "instance", "migrate"],
        env=environment,
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return environment


def _start_worker(
    queue: str, environment: dict[str, str], tmp_path: Path
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """A Celery worker on ``queue``, logging to ``worker-<queue>.log``."""
    log = open(tmp_path / f"worker-{queue}.log", "wb")  # noqa: SIM115 - closed by the test
    command = [sys.executable, "-m", "assets.celery_worker", "--queue", queue]
    process = subprocess.Popen(
        [*command, "--name", f"{queue}-test@%h"],
        cwd=REPO_ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, log


def _wait_until_ready(
    workers: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]], tmp_path: Path
) -> None:
    """Wait (two minutes at most) until every worker's log says it is ready."""
    deadline = time.monotonic() + 120
    for queue, (process, _) in workers.items():
        path = tmp_path / f"worker-{queue}.log"
        while b" ready." not in path.read_bytes():
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"{queue} worker not ready:\n{path.read_text()[-3000:]}")
            time.sleep(0.5)
