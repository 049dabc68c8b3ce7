"""A real, minimal, single-node Ceph cluster with a radosgw S3 endpoint on loopback.

Why: the pipeline's object-store code is tested against a genuine S3 implementation
(Ceph radosgw, from Debian 12's packages) instead of a mock, and developers can run the
same thing by hand with ``python -m cotir_pipeline.devservices.radosgw --workdir DIR``.

The cluster is one monitor, one BlueStore OSD backed by a sparse file, no manager and
no authentication (``auth ... required = none``); only radosgw's S3 users have keys.
Everything lives under the work dir (private ``ceph.conf``, data, logs, admin sockets,
run dir), binds to 127.0.0.1 on free ports, and never touches /etc/ceph or /var/lib/ceph,
so several instances can run side by side.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as _dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = [
    "APT_INSTALL_COMMAND",
    "MIN_FREE_BYTES",
    "REQUIRED_BINARIES",
    "CephUnavailableError",
    "LocalRadosGateway",
    "S3Endpoint",
    "main",
    "missing_ceph_binaries",
]

#: Executables the gateway runs; all come from Debian 12's ceph packages.
REQUIRED_BINARIES: tuple[str, ...] = (
    "ceph",
    "ceph-mon",
    "ceph-osd",
    "monmaptool",
    "radosgw",
    "radosgw-admin",
)

#: How to install the binaries on Debian 12.
APT_INSTALL_COMMAND = "sudo apt-get install -y ceph-mon ceph-osd radosgw ceph-common"

_log = logging.getLogger(__name__)

_MON_ID = "a"
_OSD_ID = 0
_RGW_NAME = "client.rgw.a"
_S3_UID = "cotir-dev"
# Grace periods for SIGTERM before SIGKILL, per daemon.
_STOP_TIMEOUT_S = {"radosgw": 30.0, "osd": 30.0, "mon": 15.0}
#: Free bytes the work dir's disk must have before start: the monitor's RocksDB, the
#: OSD's BlueFS and the daemon logs grow to a few hundred MiB under the test suite.
MIN_FREE_BYTES = 1024**3
# Subpaths of the work dir that belong to this module and are wiped by start().
_OWNED_NAMES = (
    "ceph.conf",
    "monmap",
    "mon",
    "osd",
    "osd.block",
    "rgw",
    "run",
    "log",
    "crash",
    "daemons.json",
)


@dataclass(frozen=True)
class S3Endpoint:
    """Where and how to reach the S3 API; what a client (boto3, s3fs, ...) needs."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


class CephUnavailableError(RuntimeError):
    """A Ceph executable needed to run the gateway is not installed."""


def missing_ceph_binaries() -> list[str]:
    """Return the names of required Ceph executables that are not on PATH."""
    return [name for name in REQUIRED_BINARIES if shutil.which(name) is None]


def _free_port(host: str) -> int:
    """Ask the kernel for a currently unused TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    """Last ``lines`` lines of a text file, or a note if it cannot be read."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.splitlines()[-lines:])


class _Daemon:
    """A ceph daemon running in the foreground in its own process group."""

    def __init__(
        self,
        kind: str,
        proc: subprocess.Popen[bytes],
        out: IO[bytes],
        out_path: Path,
        log_path: Path,
    ) -> None:
        self.kind = kind
        self.proc = proc
        self.out = out
        self.out_path = out_path
        self.log_path = log_path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        return (
            f"--- {self.out_path} (stdout/stderr) ---\n{_tail(self.out_path, 15)}\n"
            f"--- {self.log_path} ---\n{_tail(self.log_path)}"
        )

    def stop(self, timeout_s: float) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not exited in time."""
        try:
            if self.alive():
                _signal_group(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    _signal_group(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=30)
            # Reap anything else left in the group (the daemon's own group).
            _signal_group(self.proc.pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(OSError):
                self.out.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _StartError(RuntimeError):
    """Internal: a start step failed; carries the step name and details."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"step {step!r} failed: {detail}")
        self.step = step


class LocalRadosGateway:
    """Single-node Ceph (1 mon, 1 file-backed OSD) + radosgw on loopback.

    ``start()`` builds a fresh cluster in ``workdir`` (wiping the state a previous run
    left there) and returns the S3 endpoint once a bucket can be created; ``stop()``
    stops radosgw, then the OSD, then the monitor. Also a context manager.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 180.0,
        block_size_gib: int = 10,
    ) -> None:
        if block_size_gib < 2:
            raise ValueError("block_size_gib must be at least 2 (BlueStore needs room)")
        self.workdir = Path(workdir).absolute()
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.block_size_gib = block_size_gib
        self.conf_path = self.workdir / "ceph.conf"
        self.log_dir = self.workdir / "log"
        self._daemons: dict[str, _Daemon] = {}
        self._endpoint: S3Endpoint | None = None
        self._started = False
        self._lock = threading.Lock()
        self._deadline = 0.0
        self._env: dict[str, str] = {}

    # ----------------------------------------------------------------- public API

    @property
    def endpoint(self) -> S3Endpoint:
        """The S3 endpoint of the running gateway; raises if not started."""
        if self._endpoint is None:
            raise RuntimeError("LocalRadosGateway is not started")
        return self._endpoint

    def start(self) -> S3Endpoint:
        """Create and start the cluster and radosgw; return the ready S3 endpoint.

        Raises ``CephUnavailableError`` if binaries are missing, and ``RuntimeError``
        (naming the failing step, with the relevant daemon log tail) on any other
        failure, after stopping whatever had been started.
        """
        missing = missing_ceph_binaries()
        if missing:
            raise CephUnavailableError(
                f"Ceph binaries not found on PATH: {', '.join(missing)}. "
                f"Install them with: {APT_INSTALL_COMMAND}"
            )
        with self._lock:
            if self._started:
                raise RuntimeError("LocalRadosGateway is already started")
            self._started = True
        atexit.register(self.stop)
        t0 = time.monotonic()
        self._deadline = t0 + self.startup_timeout_s
        try:
            self._endpoint = self._start_cluster()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, _StartError):
                raise RuntimeError(f"LocalRadosGateway in {self.workdir}: {exc}") from None
            raise
        _log.info(
            "radosgw ready at %s after %.1fs (work dir %s)",
            self._endpoint.endpoint_url,
            time.monotonic() - t0,
            self.workdir,
        )
        return self._endpoint

    def stop(self) -> None:
        """Stop radosgw, then the OSD, then the monitor; safe to call repeatedly."""
        with self._lock:
            daemons = self._daemons
            self._daemons = {}
            self._endpoint = None
            self._started = False
        for kind in ("radosgw", "osd", "mon"):
            daemon = daemons.pop(kind, None)
            if daemon is not None:
                daemon.stop(_STOP_TIMEOUT_S[kind])
        for daemon in daemons.values():  # pragma: no cover - defensive
            daemon.stop(10.0)
        with contextlib.suppress(OSError):
            (self.workdir / "daemons.json").unlink()
        atexit.unregister(self.stop)

    def __enter__(self) -> S3Endpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _start_cluster(self) -> S3Endpoint:
        """One monitor, one OSD on a sparse file, radosgw and an S3 user, each waited for."""
        self._prepare_workdir()
        free = shutil.disk_usage(self.workdir).free
        if free < MIN_FREE_BYTES:
            raise _StartError(
                "check free disk",
                f"{free / 1024**2:.0f} MiB free under {self.workdir}; the cluster needs "
                f"{MIN_FREE_BYTES / 1024**2:.0f} MiB. Free some disk and start again.",
            )
        mon_port = _free_port(self.host)
        fsid = str(uuid.uuid4())
        self.conf_path.write_text(self._render_conf(fsid, mon_port))
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("CEPH_")}
        self._env["CEPH_CONF"] = str(self.conf_path)
        # Sparse block file beside (not inside) the OSD data dir.
        with (self.workdir / "osd.block").open("wb") as fh:
            fh.truncate(self.block_size_gib * 1024**3)
        self._start_monitor(fsid, mon_port)
        self._start_osd()
        url = self._start_radosgw()
        access_key, secret_key = self._create_s3_user()
        endpoint = S3Endpoint(url, access_key, secret_key)
        self._wait("warm up s3 (create pools)", "radosgw", lambda: self._warm_up(endpoint))
        return endpoint

    def _start_monitor(self, fsid: str, mon_port: int) -> None:
        """Create the monitor map and store, start ceph-mon and wait for quorum."""
        wd = self.workdir
        self._run(
            "create monmap",
            [
                "monmaptool",
                "-c",
                str(self.conf_path),
                "--create",
                "--clobber",
                "--fsid",
                fsid,
                "--addv",
                _MON_ID,
                f"[v2:{self.host}:{mon_port}]",
                str(wd / "monmap"),
            ],
        )
        self._run(
            "mon mkfs",
            [
                "ceph-mon",
                "-c",
                str(self.conf_path),
                "--mkfs",
                "-i",
                _MON_ID,
                "--monmap",
                str(wd / "monmap"),
            ],
        )
        self._spawn(
            "mon",
            ["ceph-mon", "-c", str(self.conf_path), "-f", "-i", _MON_ID],
            f"ceph-mon.{_MON_ID}.log",
        )
        self._wait("wait for monitor", "mon", self._mon_ready)

    def _start_osd(self) -> None:
        """Register the OSD, make its store on the block file, start it and wait until up."""
        osd_uuid = str(uuid.uuid4())
        self._run("register osd", self._ceph("osd", "new", osd_uuid, str(_OSD_ID)))
        self._run(
            "osd mkfs",
            [
                "ceph-osd",
                "-c",
                str(self.conf_path),
                "--mkfs",
                "-i",
                str(_OSD_ID),
                "--osd-uuid",
                osd_uuid,
            ],
            timeout_s=120.0,
        )
        self._spawn(
            "osd",
            ["ceph-osd", "-c", str(self.conf_path), "-f", "-i", str(_OSD_ID)],
            f"ceph-osd.{_OSD_ID}.log",
        )
        self._wait("wait for osd up", "osd", self._osd_up)

    def _create_s3_user(self) -> tuple[str, str]:
        """A fresh S3 user with random keys: (access key, secret key)."""
        alphabet = string.ascii_uppercase + string.digits
        access_key = "".join(secrets.choice(alphabet) for _ in range(20))
        secret_key = secrets.token_urlsafe(30)[:40]
        self._run(
            "create s3 user",
            [
                "radosgw-admin",
                "-c",
                str(self.conf_path),
                "user",
                "create",
                "--uid",
                _S3_UID,
                "--display-name",
                "cotir dev",
                "--access-key",
                access_key,
                "--secret-key",
                secret_key,
            ],
            timeout_s=120.0,
            daemon="radosgw",
        )
        return access_key, secret_key

    def _prepare_workdir(self) -> None:
        """Kill daemons a crashed earlier run left behind, then wipe its state."""
        wd = self.workdir
        wd.mkdir(parents=True, exist_ok=True)
        pids_file = wd / "daemons.json"
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            for pid in json.loads(pids_file.read_text()).values():
                cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
                if str(self.conf_path).encode() in cmdline:
                    _signal_group(int(pid), signal.SIGKILL)
        for name in _OWNED_NAMES:
            path = wd / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for name in ("mon", "osd", "rgw", "run", "log", "crash"):
            (wd / name).mkdir()

    def _start_radosgw(self, attempts: int = 3) -> str:
        """Start radosgw on a free port, retrying if another process grabbed the port."""
        log_path = self.log_dir / f"ceph-{_RGW_NAME}.log"
        for attempt in range(1, attempts + 1):
            port = _free_port(self.host)
            log_offset = log_path.stat().st_size if log_path.exists() else 0
            self._spawn(
                "radosgw",
                [
                    "radosgw",
                    "-c",
                    str(self.conf_path),
                    "-f",
                    "-n",
                    _RGW_NAME,
                    "--rgw-frontends",
                    f"beast endpoint={self.host}:{port}",
                ],
                log_path.name,
            )
            url = f"http://{self.host}:{port}"
            try:
                self._wait(
                    "wait for radosgw http", "radosgw", lambda url=url: self._http_answers(url)
                )
            except _StartError:
                daemon = self._daemons["radosgw"]
                if daemon.alive() or attempt == attempts:
                    raise
                with log_path.open("rb") as fh:
                    fh.seek(log_offset)
                    if b"failed to bind" not in fh.read():
                        raise
                _log.warning("radosgw could not bind port %d; retrying on another", port)
                del self._daemons["radosgw"]
                daemon.stop(_STOP_TIMEOUT_S["radosgw"])
                continue
            return url
        raise AssertionError("unreachable")  # pragma: no cover

    def _render_conf(self, fsid: str, mon_port: int) -> str:
        wd = self.workdir
        host = self.host
        return f"""\
# Generated by cotir_pipeline.devservices.radosgw -- private single-node dev cluster.
[global]
fsid = {fsid}
mon host = [v2:{host}:{mon_port}]
mon initial members = {_MON_ID}
public addr = {host}
cluster addr = {host}
ms bind msgr1 = false
ms bind ipv6 = false
# Daemons default to "secure" (encrypted) mon sessions, which need cephx; with auth none
# radosgw then fails with "get_initial_auth_request returned -13". Plain crc everywhere.
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
# No cephx: only radosgw's S3 users have keys. The keyring path (never created) keeps
# clients from reading /etc/ceph.
auth cluster required = none
auth service required = none
auth client required = none
keyring = {wd}/keyring
# Cosmetic: avoids the AUTH_INSECURE_GLOBAL_ID_RECLAIM_ALLOWED health warning.
auth allow insecure global id reclaim = false
run dir = {wd}/run
admin socket = {wd}/run/$cluster-$name.$pid.asok
log file = {wd}/log/$cluster-$name.log
log to stderr = false
err to stderr = true
crash dir = {wd}/crash
mon cluster log file = {wd}/log/$cluster.$channel.log
mon data = {wd}/mon
osd data = {wd}/osd
rgw data = {wd}/rgw
mgr data = {wd}/mgr
# One OSD: replicas of 1, few PGs, no host-level failure domain.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon allow pool delete = true

[mon]
# Each pool creation / osdmap change waits one propose interval (1 s by default) and
# radosgw makes ~20 such changes for its 7 pools: 0.05 s cuts ~15 s off start-up.
paxos propose interval = 0.05
# The monitor refuses to start (exit 28, ENOSPC) when its disk's free share is at or below
# `mon data avail crit` percent. That share is rounded down, so on a large, busy disk a
# few GiB free reads as 0 %; this throw-away cluster writes a few MiB, and start() checks
# the free bytes itself (MIN_FREE_BYTES) with a clearer error. -1 turns Ceph's check off.
mon data avail warn = 0
mon data avail crit = -1

[osd]
osd objectstore = bluestore
bluestore block path = {wd}/osd.block
bluestore block create = false
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mkfs = false
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096
osd op num shards = 2
osd op num threads per shard = 1

[{_RGW_NAME}]
# rgw frontends (beast on {host}:<free port>) is passed on radosgw's command line.
rgw thread pool size = 32
rgw enable usage log = false
"""

    def _ceph(self, *args: str) -> list[str]:
        return ["ceph", "-c", str(self.conf_path), "--connect-timeout", "10", *args]

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _run(
        self, step: str, cmd: list[str], *, timeout_s: float = 60.0, daemon: str | None = None
    ) -> str:
        """Run a one-shot command; raise ``_StartError`` naming ``step`` on failure."""
        timeout = max(1.0, min(timeout_s, self._remaining()))
        t0 = time.monotonic()
        try:
            res = subprocess.run(
                cmd,
                env=self._env,
                cwd=self.workdir,
                capture_output=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise _StartError(
                step,
                f"{shlex.join(cmd)} timed out after {timeout:.0f}s" + self._daemon_tail(daemon),
            ) from exc
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode("utf-8", errors="replace")
            raise _StartError(
                step,
                f"{shlex.join(cmd)} exited {res.returncode}:\n"
                + "\n".join(out.splitlines()[-30:])
                + self._daemon_tail(daemon),
            )
        _log.debug("%s: done in %.1fs", step, time.monotonic() - t0)
        return res.stdout.decode("utf-8", errors="replace")

    def _daemon_tail(self, kind: str | None) -> str:
        daemon = self._daemons.get(kind) if kind else None
        return "" if daemon is None else "\n" + daemon.log_tail()

    def _spawn(self, kind: str, cmd: list[str], log_name: str) -> None:
        out_path = self.log_dir / f"{kind}.out"
        out = out_path.open("ab")
        try:
            proc = subprocess.Popen(
                cmd,
                env=self._env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            out.close()
            raise _StartError(f"start {kind}", str(exc)) from exc
        self._daemons[kind] = _Daemon(kind, proc, out, out_path, self.log_dir / log_name)
        pids = {k: d.proc.pid for k, d in self._daemons.items()}
        (self.workdir / "daemons.json").write_text(json.dumps(pids))

    def _wait(self, step: str, kind: str, probe: Callable[[], bool]) -> None:
        """Poll ``probe`` until it returns True; fail if the daemon dies or time runs out."""
        daemon = self._daemons[kind]
        t0 = time.monotonic()
        delay = 0.2
        last_error = ""
        while True:
            if not daemon.alive():
                raise _StartError(
                    step,
                    f"{kind} exited with status {daemon.proc.returncode}\n" + daemon.log_tail(),
                )
            try:
                if probe():
                    _log.debug("%s: done in %.1fs", step, time.monotonic() - t0)
                    return
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if self._remaining() <= 0:
                raise _StartError(
                    step,
                    f"not ready after {self.startup_timeout_s:g}s"
                    + (f" (last error: {last_error})" if last_error else "")
                    + "\n"
                    + daemon.log_tail(),
                )
            time.sleep(min(delay, max(0.0, self._remaining())))
            delay = min(delay * 1.5, 2.0)

    def _ceph_json(self, *args: str) -> object:
        res = subprocess.run(
            self._ceph(*args, "--format", "json"),
            env=self._env,
            capture_output=True,
            timeout=max(1.0, min(20.0, self._remaining())),
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            raise RuntimeError(res.stderr.decode("utf-8", errors="replace").strip()[-500:])
        return json.loads(res.stdout)

    def _mon_ready(self) -> bool:
        status = self._ceph_json("mon", "stat")
        return isinstance(status, dict) and bool(status.get("quorum"))

    def _osd_up(self) -> bool:
        status = self._ceph_json("osd", "stat")
        return isinstance(status, dict) and int(status.get("num_up_osds", 0)) >= 1

    @staticmethod
    def _http_answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/", timeout=5):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP status means the frontend is serving

    @staticmethod
    def _warm_up(endpoint: S3Endpoint) -> bool:
        """Create a bucket, an object and a multipart upload, then delete them all.

        radosgw creates its index, data and multipart pools lazily; doing it here keeps
        the first real request of a test from paying (or timing out on) that cost.
        """
        bucket = "/cotir-warmup-" + secrets.token_hex(4)
        key = bucket + "/probe"
        _s3_request(endpoint, "PUT", bucket)
        try:
            _s3_request(endpoint, "PUT", key, body=b"warm-up")
            _s3_request(endpoint, "DELETE", key)
            xml = _s3_request(endpoint, "POST", key, query={"uploads": ""})
            ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
            upload_id = ET.fromstring(xml).findtext("s3:UploadId", namespaces=ns)
            if upload_id:
                _s3_request(endpoint, "DELETE", key, query={"uploadId": upload_id})
        finally:
            _s3_request(endpoint, "DELETE", bucket)
        return True


def _s3_request(
    endpoint: S3Endpoint,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: bytes = b"",
    timeout_s: float = 60.0,
) -> bytes:
    """Send one AWS SigV4-signed, path-style S3 request with the stdlib; return the body."""
    parsed = urllib.parse.urlsplit(endpoint.endpoint_url)
    now = _dt.datetime.now(_dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    canonical_uri = urllib.parse.quote(path, safe="/-_.~")
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted((query or {}).items())
    )
    headers = {"host": parsed.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            canonical_uri,
            canonical_query,
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{endpoint.region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + endpoint.secret_key).encode()
    for part in (day, endpoint.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={endpoint.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    url = endpoint.endpoint_url + canonical_uri + (f"?{canonical_query}" if query else "")
    req = urllib.request.Request(
        url, data=body if method in ("PUT", "POST") else None, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace")[:500]
        raise RuntimeError(f"S3 {method} {path} -> HTTP {exc.code}: {detail}") from None


def main(argv: list[str] | None = None) -> int:
    """CLI: start the gateway, print shell ``export`` lines, run until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m cotir_pipeline.devservices.radosgw",
        description="Run a single-node Ceph cluster with a radosgw S3 endpoint on loopback.",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        required=True,
        help="directory for the cluster's state and logs (wiped on start)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback)")
    parser.add_argument("--startup-timeout", type=float, default=180.0, metavar="SECONDS")
    parser.add_argument(
        "--block-size-gib", type=int, default=10, help="size of the sparse OSD block file"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="# %(asctime)s %(name)s: %(message)s"
    )

    stop_requested = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    gateway = LocalRadosGateway(
        args.workdir,
        host=args.host,
        startup_timeout_s=args.startup_timeout,
        block_size_gib=args.block_size_gib,
    )
    try:
        try:
            endpoint = gateway.start()
        except CephUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for name, value in (
            ("AWS_ACCESS_KEY_ID", endpoint.access_key),
            ("AWS_SECRET_ACCESS_KEY", endpoint.secret_key),
            ("AWS_DEFAULT_REGION", endpoint.region),
            ("COTIR_S3_ENDPOINT_URL", endpoint.endpoint_url),
        ):
            print(f"export {name}={shlex.quote(value)}")
        print(f"# radosgw running; logs in {gateway.log_dir}. Ctrl-C to stop.", flush=True)
        while not stop_requested.wait(1.0):
            pass
        print("# stopping ...", file=sys.stderr, flush=True)
        return 0
    finally:
        gateway.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
