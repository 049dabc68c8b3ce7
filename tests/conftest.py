"""Shared fixtures: a real S3 server (Ceph radosgw on loopback) and object stores.

The S3 server is started once per test session by the project's own launcher
(:mod:`cotir_pipeline.devservices.radosgw`). When Ceph is not installed the S3
tests are skipped with the reason, except under CI (``CI=true``), where a
missing service is an error: CI installs it, so its absence is a bug.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cotir_pipeline.devservices.radosgw import LocalRadosGateway, S3Endpoint, missing_ceph_binaries
from cotir_pipeline.store import LocalObjectStore, ObjectStore, S3ObjectStore
from cotir_test_support import (
    CHROMIUM_ARGS,
    MIB,
    REPO_ROOT,
    DagsterDevServer,
    chromium_executable,
    skip_or_fail,
)

#: One line per service the session started, printed in pytest's closing summary so
#: a CI log shows which real services the tests ran against.
SERVICE_REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the services this session started (radosgw, dagster dev, Chromium)."""
    if SERVICE_REPORT:
        terminalreporter.section("services started by the tests")
        for line in SERVICE_REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _no_dagster_instance_left_from_other_tests() -> Iterator[None]:
    """Give every test a clean "current instance" state.

    Dagster keeps the state storage of the last instance it created in a context
    variable; once that instance is garbage collected, building a Definitions in a
    later test fails ("undefined DagsterInstance weakref"), depending on GC timing.
    """
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


@pytest.fixture(scope="session")
def service_report() -> list[str]:
    """Append a line here for each real service a fixture starts."""
    return SERVICE_REPORT


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Folder for screenshots and other test artifacts (kept after the run)."""
    folder = Path(os.environ.get("COTIR_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """A real S3 endpoint: single-node Ceph with radosgw on 127.0.0.1, for the whole session."""
    missing = missing_ceph_binaries()
    if missing:
        skip_or_fail(f"Ceph binaries not found: {', '.join(missing)}")
    gateway = LocalRadosGateway(tmp_path_factory.mktemp("ceph"))
    started = time.monotonic()
    endpoint = gateway.start()
    SERVICE_REPORT.append(
        f"S3: Ceph radosgw at {endpoint.endpoint_url}, ready in {time.monotonic() - started:.1f} s"
    )
    try:
        yield endpoint
    finally:
        gateway.stop()


@pytest.fixture
def s3_credentials(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    """Put the radosgw user's keys where boto3 looks for them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_endpoint.region)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return s3_endpoint


@pytest.fixture
def make_s3_store(s3_credentials: S3Endpoint) -> Callable[..., S3ObjectStore]:
    """Factory for S3 stores in a fresh bucket, so tests never see each other's objects."""

    def make(**options: object) -> S3ObjectStore:
        bucket = f"test-{uuid.uuid4().hex[:20]}"
        store = S3ObjectStore(
            bucket,
            "runs/t1",
            endpoint_url=s3_credentials.endpoint_url,
            region=s3_credentials.region,
            **options,  # type: ignore[arg-type]
        )
        store.ensure_bucket()
        return store

    return make


@pytest.fixture(scope="session")
def dagster_ui(
    tmp_path_factory: pytest.TempPathFactory, service_report: list[str]
) -> Iterator[str]:
    """``dagster dev`` serving this repo's workspace on a free loopback port (demo profile)."""
    root = tmp_path_factory.mktemp("dagster-ui")
    server = DagsterDevServer(
        dagster_home=root / "dagster_home",
        log_path=root / "dagster-dev.log",
        # The demo's two fine-tunes shortened to 8 steps: the walk-through launches the
        # whole demo job from the UI and waits for it.
        environment={
            "COTIR_HOME": str(root / "cotir"),
            "COTIR_PROFILE": "demo",
            "COTIR_TRAIN_STEPS": "8",
        },
    )
    started = time.monotonic()
    url = server.start()
    elapsed = time.monotonic() - started
    service_report.append(f"Dagster: dagster dev at {url}, ready in {elapsed:.1f} s")
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser(service_report: list[str]) -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    executable = chromium_executable()
    if executable is None:
        skip_or_fail("Chromium not found")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        service_report.append(f"Browser: {executable} {instance.version} (headless)")
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each behaviour test runs once on a local folder and once on radosgw."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "store")
    make_s3_store = request.getfixturevalue("make_s3_store")
    # A small multipart threshold so the multipart path is exercised with small files.
    return make_s3_store(multipart_threshold=5 * MIB, multipart_part_size=5 * MIB)


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny training shards (three samples per shard, every degradation folder)."""
    from training_shards_support import write_shards

    return write_shards(tmp_path_factory.mktemp("shards"), samples_per_shard=3)
