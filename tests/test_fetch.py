"""Fetching sources: HTTP against a local scripted server, mirrors, manual, hub, S3.

The HTTP server runs on 127.0.0.1 in a thread; it supports Range requests and can
be told to answer 500, drop the connection mid-body, or ignore Range. No test
reaches the internet (the hub tests run offline or against a closed local port).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import random
import re
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cotir_pipeline.sources.extract import CorruptArchiveError, UnsafeArchiveError
from cotir_pipeline.sources.fetch import base as fetch_base
from cotir_pipeline.sources.fetch.base import (
    ChecksumMismatchError,
    CorruptSourceArchiveError,
    FetchError,
    FetchOptions,
    FetchResult,
    ManualDownloadRequired,
    SizeMismatchError,
    UnsafeSourceArchiveError,
    UnsupportedSourceArchiveError,
)
from cotir_pipeline.sources.fetch.dispatch import fetch_source
from cotir_pipeline.sources.fetch.s3 import S3Fetcher
from cotir_pipeline.sources.spec import ArchiveFile, HttpFetch, HubFetch, ManualFetch, S3Fetch
from cotir_test_support import free_port

FAST = FetchOptions(timeout_s=5, max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def make_tgz(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# Incompressible content, so archives are big enough to split for resume tests.
PAYLOAD = {
    "Rain/train/rainy/001.png": random.Random(1).randbytes(100_000),
    "Rain/train/clean/001.png": random.Random(2).randbytes(100_000),
}


# -- the scripted HTTP server ------------------------------------------------------------


@dataclass
class Seen:
    """One request the server answered."""

    path: str
    range: str | None
    status: int
    sent: int


@dataclass
class FileServer:
    """Serves ``files`` by path; scripted faults are consumed one request at a time."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    fail_500: dict[str, int] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)
    ignore_range: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def add(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path`` (a query string is ignored); return its URL."""
        self.files[path.split("?", 1)[0]] = data
        return self.url(path)


def _handler_for(state: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return

        def _send(self, status: int, body: bytes, headers: dict[str, str], sent: int) -> None:
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body[:sent])
            self.wfile.flush()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            requested = self.headers.get("Range")
            with state.lock:
                body = state.files.get(path)
                failing = state.fail_500.get(path, 0) > 0
                if failing:
                    state.fail_500[path] -= 1
                drop = state.drop_after.pop(path, None) if body is not None else None
                honour_range = path not in state.ignore_range
            status, headers = 200, {"Accept-Ranges": "bytes"}
            if body is None:
                status, body = 404, b"not found"
            elif failing:
                status, body = 500, b"injected failure"
            elif requested and honour_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))  # type: ignore[union-attr]
                if start >= len(body):
                    status, headers, body = 416, {"Content-Range": f"bytes */{len(body)}"}, b""
                else:
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                    body = body[start:]
            sent = len(body) if drop is None else min(drop, len(body))
            with state.lock:
                state.seen.append(Seen(path, requested, status, sent))
            self._send(status, body, headers, sent)
            if drop is not None:
                self.close_connection = True  # the rest of the body never comes

    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """A threaded HTTP server on 127.0.0.1, port chosen by the OS."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    state = FileServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def http_spec(*files: ArchiveFile) -> HttpFetch:
    return HttpFetch(files=list(files))


def fetch(spec: Any, cache: Path, **options: Any) -> FetchResult:
    return fetch_source("rain_test", spec, cache_dir=cache, options=FAST, **options)


def extracted_files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


# -- HTTP: the good path -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "builder"), [("rain.zip", make_zip), ("rain.tar.gz", make_tgz)])
def test_archive_downloads_verifies_and_extracts(
    server: FileServer, cache: Path, name: str, builder: Callable[[dict[str, bytes]], bytes]
) -> None:
    data = builder(PAYLOAD)
    url = server.add(f"/files/{name}", data)

    result = fetch(http_spec(ArchiveFile(url=url, sha256=sha256(data))), cache)

    assert result.root == cache.resolve() / "rain_test" / "extracted"
    assert extracted_files(result.root) == {f"rain/{k}": v for k, v in PAYLOAD.items()}
    [file] = result.files
    assert (file.name, file.size, file.sha256, file.verified) == (
        name,
        len(data),
        sha256(data),
        True,
    )
    assert not file.from_mirror
    assert result.method == "http"
    assert result.source == "rain_test"
    downloads = cache / "rain_test" / "downloads"
    assert sorted(p.name for p in downloads.iterdir()) == [name]  # no .part, no .bad
    assert [s.status for s in server.seen] == [200]


def test_second_fetch_of_a_finished_source_makes_no_request(
    server: FileServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_zip(PAYLOAD)
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data), sha256=sha256(data)))
    first = fetch(spec, cache)
    assert len(server.seen) == 1

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again despite its digest record")

    monkeypatch.setattr(fetch_base, "file_sha256", no_hashing)
    second = fetch(spec, cache)

    assert len(server.seen) == 1, "the second fetch went to the network"
    assert second == first


def test_plain_file_is_placed_under_the_root(server: FileServer, cache: Path) -> None:
    archive = make_zip(PAYLOAD)
    listing = b"001 rain\n"
    spec = http_spec(
        ArchiveFile(url=server.add("/rain.zip", archive), sha256=sha256(archive)),
        ArchiveFile(url=server.add("/get?id=7", listing), filename="pairs.txt", extract=False),
    )
    result = fetch(spec, cache)
    files = extracted_files(result.root)
    assert files["pairs.txt"] == listing
    assert "rain/Rain/train/rainy/001.png" in files
    assert [(f.name, f.verified) for f in result.files] == [
        ("rain.zip", True),
        ("pairs.txt", False),
    ]


def test_extract_true_on_a_non_archive_is_a_clear_error(server: FileServer, cache: Path) -> None:
    spec = http_spec(ArchiveFile(url=server.add("/labels.mat", b"MATLAB 5.0")))
    with pytest.raises(UnsupportedSourceArchiveError, match=r"^rain_test: .*extract: false"):
        fetch(spec, cache)


def test_progress_is_reported(server: FileServer, cache: Path) -> None:
    data = make_zip(PAYLOAD)
    calls: list[tuple[int, int | None]] = []
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data)))
    fetch(spec, cache, progress=lambda done, total: calls.append((done, total)))
    assert calls
    assert calls[-1] == (len(data), len(data))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


# -- HTTP: bad files ---------------------------------------------------------------------


def test_checksum_mismatch_moves_the_file_aside(server: FileServer, cache: Path) -> None:
    data = make_zip(PAYLOAD)
    expected = sha256(b"what the catalog promised")
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data), sha256=expected))

    with pytest.raises(ChecksumMismatchError) as caught:
        fetch(spec, cache)

    message = str(caught.value)
    assert message.startswith("rain_test: ")
    assert "rain.zip" in message
    assert expected in message
    assert sha256(data) in message
    downloads = cache / "rain_test" / "downloads"
    assert sorted(p.name for p in downloads.iterdir()) == ["rain.zip.bad"]
    assert not (cache / "rain_test" / "extracted" / "rain").exists()
    records = list((cache / "rain_test" / "state").glob("*.json"))
    assert records == [], "a digest record makes a rejected file look finished"


def test_size_mismatch_is_refused(server: FileServer, cache: Path) -> None:
    data = make_zip(PAYLOAD)
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data), size_bytes=len(data) + 1))
    with pytest.raises(SizeMismatchError, match=rf"^rain_test: .*{len(data)} bytes"):
        fetch(spec, cache)
    assert not (cache / "rain_test" / "downloads" / "rain.zip").exists()


def test_corrupt_archive_is_reported_and_fetched_again_next_time(
    server: FileServer, cache: Path
) -> None:
    data = make_zip(PAYLOAD)[:-200]  # truncated: the central directory is gone
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data)))  # no published checksum

    with pytest.raises(CorruptArchiveError) as caught:
        fetch(spec, cache)

    assert isinstance(caught.value, FetchError)
    assert isinstance(caught.value, CorruptSourceArchiveError)
    assert str(caught.value).startswith("rain_test: ")
    assert "rain.zip" in str(caught.value)
    assert not (cache / "rain_test" / "extracted" / "rain").exists()
    # Without a checksum the download itself may be at fault: it was moved aside ...
    assert (cache / "rain_test" / "downloads" / "rain.zip.bad").is_file()
    server.files["/rain.zip"] = make_zip(PAYLOAD)
    result = fetch(spec, cache)  # ... so the next run downloads it again.
    assert len(server.seen) == 2
    assert "rain/Rain/train/clean/001.png" in extracted_files(result.root)


def test_unsafe_member_is_refused_through_fetch(server: FileServer, cache: Path) -> None:
    data = make_zip({"ok.txt": b"ok", "../evil.txt": b"x"})
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data), sha256=sha256(data)))
    with pytest.raises(UnsafeArchiveError, match=r"^rain_test: .*'\.\./evil\.txt'") as caught:
        fetch(spec, cache)
    assert isinstance(caught.value, UnsafeSourceArchiveError)
    assert caught.value.member == "../evil.txt"
    assert list(cache.parent.rglob("evil.txt")) == []
    assert not (cache / "rain_test" / "extracted" / "rain").exists()


def test_zip_bomb_is_refused_through_fetch(server: FileServer, cache: Path) -> None:
    data = make_zip({"zeros.bin": b"\x00" * (4 * 1024 * 1024)})
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data), sha256=sha256(data)))
    with pytest.raises(UnsafeSourceArchiveError, match="over the limit of 1000000 bytes"):
        fetch(spec, cache, max_extract_bytes=1_000_000)
    assert not (cache / "rain_test" / "extracted" / "rain").exists()


# -- HTTP: resume, retries, failures -----------------------------------------------------


def test_resume_requests_only_the_rest(server: FileServer, cache: Path) -> None:
    data = make_zip(PAYLOAD)
    half = len(data) // 2
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data), sha256=sha256(data)))
    part = cache / "rain_test" / "downloads" / "rain.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:half])

    result = fetch(spec, cache)

    assert server.seen == [Seen("/rain.zip", f"bytes={half}-", 206, len(data) - half)]
    assert result.files[0].sha256 == sha256(data)
    assert not part.exists()
    assert "rain/Rain/train/rainy/001.png" in extracted_files(result.root)


def test_complete_part_file_is_finished_without_a_body(server: FileServer, cache: Path) -> None:
    data = make_zip(PAYLOAD)
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data), sha256=sha256(data)))
    part = cache / "rain_test" / "downloads" / "rain.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    result = fetch(spec, cache)
    assert [(s.status, s.sent) for s in server.seen] == [(416, 0)]
    assert result.files[0].sha256 == sha256(data)


def test_server_ignoring_range_restarts_cleanly(server: FileServer, cache: Path) -> None:
    data = make_zip(PAYLOAD)
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data), sha256=sha256(data)))
    server.ignore_range.add("/rain.zip")
    part = cache / "rain_test" / "downloads" / "rain.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not be kept" * 10)

    result = fetch(spec, cache)

    assert [(s.range, s.status) for s in server.seen] == [("bytes=290-", 200)]
    assert result.files[0].sha256 == sha256(data)  # the old bytes were not prepended


def test_dropped_connection_is_resumed(server: FileServer, cache: Path) -> None:
    data = make_zip(PAYLOAD)
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data), sha256=sha256(data)))
    server.drop_after["/rain.zip"] = 5000

    result = fetch(spec, cache)

    assert [(s.range, s.status) for s in server.seen] == [(None, 200), ("bytes=5000-", 206)]
    assert result.files[0].sha256 == sha256(data)


def test_transient_500s_are_retried(server: FileServer, cache: Path) -> None:
    data = make_zip(PAYLOAD)
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", data), sha256=sha256(data)))
    server.fail_500["/rain.zip"] = 2
    result = fetch(spec, cache)
    assert [s.status for s in server.seen] == [500, 500, 200]
    assert result.files[0].verified


def test_persistent_500s_give_up_after_bounded_attempts(server: FileServer, cache: Path) -> None:
    spec = http_spec(ArchiveFile(url=server.add("/rain.zip", b"x")))
    server.fail_500["/rain.zip"] = 100
    with pytest.raises(FetchError, match=r"^rain_test: gave up on http://.*/rain\.zip after 4"):
        fetch(spec, cache)
    assert len(server.seen) == FAST.max_attempts


def test_404_fails_fast_with_a_clear_message(server: FileServer, cache: Path) -> None:
    url = server.url("/missing.zip")
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch(http_spec(ArchiveFile(url=url)), cache)
    assert str(caught.value) == (
        f"rain_test: HTTP 404 Not Found for {url} (check the url in the catalog entry)"
    )
    assert len(server.seen) == 1
    assert time.monotonic() - started < 2


def test_refused_connection_is_retried_then_reported(cache: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/rain.zip"
    with pytest.raises(
        FetchError, match=r"^rain_test: gave up on .* after 4 attempts: cannot conn"
    ):
        fetch(http_spec(ArchiveFile(url=url)), cache)


# -- mirrors -----------------------------------------------------------------------------


def test_mirror_avoids_the_network(server: FileServer, tmp_path: Path, cache: Path) -> None:
    data = make_tgz(PAYLOAD)
    mirror = tmp_path / "mirror"
    (mirror / "rain_test").mkdir(parents=True)
    (mirror / "rain_test" / "rain.tar.gz").write_bytes(data)
    spec = http_spec(ArchiveFile(url=server.url("/rain.tar.gz"), sha256=sha256(data)))

    result = fetch(spec, cache, mirror_dir=mirror)

    assert server.seen == []
    [file] = result.files
    assert file.from_mirror
    assert file.verified
    assert file.path == mirror / "rain_test" / "rain.tar.gz"
    assert extracted_files(result.root) == {f"rain/{k}": v for k, v in PAYLOAD.items()}


def test_bad_mirror_copy_is_reported_and_left_alone(
    server: FileServer, tmp_path: Path, cache: Path
) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "rain_test").mkdir(parents=True)
    copy = mirror / "rain_test" / "rain.zip"
    copy.write_bytes(b"not the published file")
    spec = http_spec(ArchiveFile(url=server.url("/rain.zip"), sha256=sha256(b"published")))
    with pytest.raises(ChecksumMismatchError, match=f"^rain_test: .*{re.escape(str(copy))}"):
        fetch(spec, cache, mirror_dir=mirror)
    assert copy.read_bytes() == b"not the published file"
    assert server.seen == []


# -- manual ------------------------------------------------------------------------------

MANUAL = ManualFetch(
    instructions="Accept the licence at https://example.org/rain and download both files.",
    expected_files=["RainTrain.zip", "test/*.png"],
)


def test_manual_without_mirror_names_the_setting(cache: Path) -> None:
    with pytest.raises(ManualDownloadRequired) as caught:
        fetch(MANUAL, cache)
    message = str(caught.value)
    assert message.startswith("rain_test: manual download required. Accept the licence")
    assert "set COTIR_MIRROR_DIR" in message
    assert "<COTIR_MIRROR_DIR>/rain_test/" in message


def test_manual_names_the_folder_then_succeeds(tmp_path: Path, cache: Path) -> None:
    mirror = tmp_path / "mirror"
    folder = (mirror / "rain_test").resolve()
    with pytest.raises(ManualDownloadRequired) as caught:
        fetch(MANUAL, cache, mirror_dir=mirror)
    assert str(caught.value) == (
        "rain_test: manual download required. Accept the licence at https://example.org/rain "
        "and download both files.\n"
        f"Put the files into {folder}/ ; missing there: RainTrain.zip, test/*.png."
    )
    assert caught.value.folder == folder
    assert caught.value.missing == ["RainTrain.zip", "test/*.png"]

    (folder / "test").mkdir(parents=True)
    (folder / "RainTrain.zip").write_bytes(make_zip(PAYLOAD))
    with pytest.raises(ManualDownloadRequired, match=r"missing there: test/\*\.png\.$"):
        fetch(MANUAL, cache, mirror_dir=mirror)

    (folder / "test" / "001.png").write_bytes(b"png")
    result = fetch(MANUAL, cache, mirror_dir=mirror)

    assert result.method == "manual"
    assert extracted_files(result.root) == {
        **{f"RainTrain/{k}": v for k, v in PAYLOAD.items()},
        "test/001.png": b"png",
    }
    assert all(f.from_mirror and not f.verified for f in result.files)


# -- hub ---------------------------------------------------------------------------------

HUB = HubFetch(repo_id="someone/rain-dataset", allow_patterns=["*.zip", "*.png"])


def test_hub_offline_error_is_clear(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mirror = tmp_path / "mirror"
    with pytest.raises(FetchError) as caught:
        fetch(HUB, cache, mirror_dir=mirror)
    message = str(caught.value)
    assert message.startswith("rain_test: cannot reach the hub")
    assert "'someone/rain-dataset'" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert f"put a copy of the files into {mirror.resolve() / 'rain_test'}/" in message


def test_hub_unreachable_endpoint_error_is_clear(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(FetchError) as caught:
        fetch(HUB, cache)
    message = str(caught.value)
    assert message.startswith("rain_test: cannot reach the hub (http://127.0.0.1:")
    assert "set COTIR_MIRROR_DIR" in message


def test_hub_mirror_copy_is_used_without_the_hub(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def no_hub(*args: object, **kwargs: object) -> str:
        raise AssertionError("the hub was contacted despite a mirror copy")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    folder = tmp_path / "mirror" / "rain_test"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.zip").write_bytes(make_zip(PAYLOAD))
    (folder / "README.md").write_text("not matched by allow_patterns")
    result = fetch(HUB, cache, mirror_dir=tmp_path / "mirror")
    assert [f.name for f in result.files] == ["data/train.zip"]
    assert extracted_files(result.root) == {f"data/train/{k}": v for k, v in PAYLOAD.items()}


def test_hub_snapshot_is_downloaded_and_extracted(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[dict[str, object]] = []

    def fake_snapshot(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        local = Path(kwargs["local_dir"])
        (local / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        (local / ".cache" / "huggingface" / "meta").write_text("hub bookkeeping")
        (local / "train.zip").write_bytes(make_zip(PAYLOAD))
        (local / "val").mkdir(exist_ok=True)
        (local / "val" / "1.png").write_bytes(b"v")
        return str(local)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    result = fetch(HUB, cache)

    assert calls[0]["repo_id"] == "someone/rain-dataset"
    assert calls[0]["repo_type"] == "dataset"
    assert calls[0]["allow_patterns"] == ["*.zip", "*.png"]
    assert calls[0]["local_dir"] == cache.resolve() / "rain_test" / "hub"
    assert sorted(f.name for f in result.files) == ["train.zip", "val/1.png"]
    assert extracted_files(result.root) == {
        **{f"train/{k}": v for k, v in PAYLOAD.items()},
        "val/1.png": b"v",
    }


# -- S3 (real radosgw) -------------------------------------------------------------------


@pytest.mark.s3
def test_s3_prefix_is_copied_extracted_and_skipped_next_time(
    make_s3_store: Callable[..., Any], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_s3_store()
    store.put_bytes("src/rain.zip", make_zip(PAYLOAD))
    store.put_bytes("src/extra/list.txt", b"001\n")
    store.put_bytes("other/not-me.txt", b"outside the prefix")
    spec = S3Fetch(url=f"s3://{store.bucket}/runs/t1/src", endpoint_url=store.endpoint_url)

    result = fetch(spec, cache)

    assert sorted(f.name for f in result.files) == ["extra/list.txt", "rain.zip"]
    assert extracted_files(result.root) == {
        **{f"rain/{k}": v for k, v in PAYLOAD.items()},
        "extra/list.txt": b"001\n",
    }
    downloads: list[str] = []
    original = S3Fetcher._download

    def counting(self: Any, client: Any, bucket: str, key: str, local: Path, size: int) -> None:
        downloads.append(key)
        original(self, client, bucket, key, local, size)

    monkeypatch.setattr(S3Fetcher, "_download", counting)
    store.put_bytes("src/extra/list.txt", b"0001\n")  # changed size: copied again
    again = fetch(spec, cache)
    assert downloads == ["runs/t1/src/extra/list.txt"]
    assert extracted_files(again.root)["extra/list.txt"] == b"0001\n"


@pytest.mark.s3
def test_s3_anonymous_access_to_a_private_bucket_is_a_clear_error(
    make_s3_store: Callable[..., Any], cache: Path
) -> None:
    store = make_s3_store()
    store.put_bytes("src/rain.zip", b"x")
    spec = S3Fetch(
        url=f"s3://{store.bucket}/runs/t1/src", endpoint_url=store.endpoint_url, anonymous=True
    )
    with pytest.raises(
        FetchError, match=r"^rain_test: S3 request for s3://.* failed: AccessDenied"
    ):
        fetch(spec, cache)


# -- input checks ------------------------------------------------------------------------


def test_bad_source_name_is_rejected(cache: Path) -> None:
    with pytest.raises(ValueError, match="source name"):
        fetch_source("../up", MANUAL, cache_dir=cache)
