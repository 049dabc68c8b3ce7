"""Helpers shared by the test modules (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def running_in_ci() -> bool:
    """Whether the suite runs under CI, where every service must be available."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason`` locally; fail under CI, where the service must exist."""
    if running_in_ci():
        pytest.fail(f"{reason} (CI installs it with `make system-deps`; this is a setup bug)")
    pytest.skip(f"{reason}; install it with `make system-deps`")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FaultInjectingProxy:
    """An HTTP proxy on 127.0.0.1 that answers the first ``failures`` requests with 503.

    It forwards everything else unchanged to ``upstream`` (a real S3 server), so a
    client's retry behaviour is tested against real transient failures on the wire.
    """

    def __init__(self, upstream: str, failures: int) -> None:
        import http.client
        import http.server
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        self.failures_left = failures
        self.failed = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    fail = proxy.failures_left > 0
                    if fail:
                        proxy.failures_left -= 1
                        proxy.failed += 1
                    else:
                        proxy.forwarded += 1
                if fail:
                    payload = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                        b"<Message>injected by the test proxy</Message></Error>"
                    )
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {key: value for key, value in self.headers.items()}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                # HEAD answers carry the object's length with no body: pass it through.
                passed = ("transfer-encoding", "connection")
                if self.command != "HEAD":
                    passed += ("content-length",)
                    self.send_header("Content-Length", str(len(data)))
                for key, value in response.getheaders():
                    if key.lower() not in passed:
                        self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultInjectingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # The machine has no internet: stop Chromium's own background connections.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_executable() -> str | None:
    """Debian's Chromium, which the browser tests drive (no browser is ever downloaded)."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def default_stop_signals() -> None:
    """In the child: undo an inherited "ignore SIGINT/SIGTERM" (background jobs of a
    non-interactive shell start that way), so the server can be stopped."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class DagsterDevServer:
    """``dagster dev`` on a free loopback port, in its own process group.

    Its own process group matters: started from a non-interactive script, dagster dev
    ignores SIGTERM/SIGINT sent to the process alone, and its webserver and daemon
    children must be stopped with it.
    """

    def __init__(self, dagster_home: Path, log_path: Path, environment: dict[str, str]) -> None:
        self.dagster_home = dagster_home
        self.log_path = log_path
        self.environment = environment
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> str:
        """Start the server and wait until it answers; return its base URL."""
        import sys
        import time
        import urllib.request

        self.dagster_home.mkdir(parents=True, exist_ok=True)
        link = self.dagster_home / "dagster.yaml"
        if not link.exists():
            link.symlink_to(REPO_ROOT / "dagster.yaml")
        environment = {**os.environ, **self.environment, "DAGSTER_HOME": str(self.dagster_home)}
        command = [
            str(Path(sys.executable).with_name("dagster")),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_stop_signals,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dagster dev exited early; log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        return self.url
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"dagster dev did not answer in {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left."""
        import signal

        if self._process is None:
            return
        # SIGINT first: dagster dev turns it into an orderly shutdown of its children.
        for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self._process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self._process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children (webserver, daemon) share the group; make sure none outlives the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._log.close()
        self._process = None


def dismiss_first_visit_dialog(page: object, timeout_ms: int = 15_000) -> None:
    """Close Dagster's "Join the Dagster community" dialog if it shows up.

    The UI shows it once per instance; later visits have none, which is fine.
    """
    dialog = page.get_by_role("dialog")  # type: ignore[attr-defined]
    try:
        dialog.get_by_role("button", name="Skip").click(timeout=timeout_ms)
    except Exception:  # no dialog on this visit
        return
    dialog.wait_for(state="hidden", timeout=10_000)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A uniform-noise RGB image: a restorer input whose content no test relies on."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def demo_photo_pixels(photo_id: str | None = None) -> np.ndarray:
    """The pixels of a bundled demo photo (default: the first training photo)."""
    from cotir_pipeline.demo_photos import DEMO_PHOTOS, load_photo

    if photo_id is None:
        photo = next(p for p in DEMO_PHOTOS if p.split == "train")
    else:
        photo = next(p for p in DEMO_PHOTOS if p.photo_id == photo_id)
    return load_photo(photo)
