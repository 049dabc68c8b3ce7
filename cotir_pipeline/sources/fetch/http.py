"""HTTP(S) downloads: resumed with Range requests, retried with backoff, verified."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from cotir_pipeline.sources.extract import (
    fsync_folder,
)
from cotir_pipeline.sources.fetch.base import (
    ChecksumMismatchError,
    FetchResult,
    LocalFile,
    SizeMismatchError,
    SourceFetcher,
    error_reason,
    hash_prefix,
)
from cotir_pipeline.sources.spec import (
    ArchiveFile,
    HttpFetch,
)

_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes\s+\*/(\d+)$")

# -- HTTP --------------------------------------------------------------------------------


class _TransientError(Exception):
    """A failure worth retrying (connection error, timeout, 5xx, 429)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class _RestartError(Exception):
    """The server ignored or garbled the Range request: start the file again from 0."""


class HttpFetcher(SourceFetcher):
    """Resumable HTTP(S) downloads checked against the catalog's sha256, then extracted."""

    method = "http"
    spec: HttpFetch

    def __init__(self, name: str, spec: HttpFetch, **common: Any) -> None:
        super().__init__(name, spec, **common)
        self._opener = urllib.request.build_opener()

    @property
    def downloads_dir(self) -> Path:
        """Where downloads are kept (``.part`` while incomplete, ``.bad`` when rejected)."""
        return self.source_dir / "downloads"

    def fetch(self) -> FetchResult:
        entries = [(entry, self._file_name(entry)) for entry in self.spec.files]
        names = [file_name for _, file_name in entries]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise self.error(f"the catalog lists the file name(s) {duplicates} more than once")
        files: list[LocalFile] = []
        for entry, file_name in entries:
            mirrored = self.mirror_folder / file_name if self.mirror_folder else None
            if mirrored is not None and mirrored.is_file():
                path, sha256 = mirrored, self._check_mirror_file(entry, file_name, mirrored)
            else:
                path, sha256 = self._download(entry, file_name)
            files.append(
                LocalFile(
                    name=file_name,
                    path=path,
                    sha256=sha256,
                    verified=entry.sha256 is not None,
                    from_mirror=path == mirrored,
                    extract=entry.extract,
                    required_archive=entry.extract,
                )
            )
        return self.materialize(files)

    def _file_name(self, entry: ArchiveFile) -> str:
        name = entry.filename
        if name is None:
            name = unquote(PurePosixPath(urlsplit(entry.url).path).name)
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise self.error(
                f"cannot derive a safe file name from {entry.url} (got {name!r}); "
                "set 'filename' in the catalog entry"
            )
        if name.endswith((".part", ".bad")):
            raise self.error(f"file name {name!r} uses a reserved suffix (.part, .bad)")
        return name

    def _check_mirror_file(self, entry: ArchiveFile, file_name: str, path: Path) -> str:
        """Verify a mirrored file; a bad one is reported (the mirror is never modified)."""
        size = path.stat().st_size
        if entry.size_bytes is not None and size != entry.size_bytes:
            raise SizeMismatchError(
                self.name,
                f"mirror file {path} has {size} bytes, the catalog says {entry.size_bytes}; "
                "replace it with a good copy or remove it to download the file",
            )
        sha256 = self.digest(path)
        if entry.sha256 is not None and sha256 != entry.sha256:
            raise ChecksumMismatchError(
                self.name,
                file=str(path),
                expected=entry.sha256,
                actual=sha256,
                detail="mirror copy; replace it with a good copy or remove it to download it",
            )
        return sha256

    def _download(self, entry: ArchiveFile, file_name: str) -> tuple[Path, str]:
        """Download (or resume) one file; rename it into place only once verified."""
        folder = self.downloads_dir
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / file_name
        bad = folder / f"{file_name}.bad"
        if final.is_file():
            sha256 = self.digest(final)
            size_ok = entry.size_bytes is None or final.stat().st_size == entry.size_bytes
            if size_ok and (entry.sha256 is None or sha256 == entry.sha256):
                return final, sha256
            # The catalog now names another file (new checksum): fetch it again.
            self.forget_digest(final)
            os.replace(final, bad)
        part = folder / f"{file_name}.part"
        sha256, size = self._get(entry.url, part)
        if entry.size_bytes is not None and size != entry.size_bytes:
            os.replace(part, bad)
            raise SizeMismatchError(
                self.name,
                f"{file_name} from {entry.url} has {size} bytes, the catalog says "
                f"{entry.size_bytes}; moved aside to {bad}",
            )
        if entry.sha256 is not None and sha256 != entry.sha256:
            os.replace(part, bad)
            raise ChecksumMismatchError(
                self.name,
                file=file_name,
                expected=entry.sha256,
                actual=sha256,
                detail=f"downloaded from {entry.url}; moved aside to {bad}",
            )
        os.replace(part, final)
        fsync_folder(folder)
        self.remember_digest(final, sha256)
        return final, sha256

    def _get(self, url: str, part: Path) -> tuple[str, int]:
        """Stream ``url`` into ``part`` with resume and retries; return (sha256, size)."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise self.error(
                f"{url}: only http(s) URLs can be downloaded in an http fetch; use "
                "'method: s3' for objects in a bucket"
            )
        state = _PartState(hashlib.sha256(), 0)
        attempt = 0
        while True:
            attempt += 1
            try:
                on_disk = part.stat().st_size if part.exists() else 0
                if state.size != on_disk:  # hash what an earlier run left, once
                    state = _PartState(hash_prefix(part, on_disk), on_disk)
                return self._attempt(url, part, state)
            except _RestartError:
                part.unlink(missing_ok=True)
                state = _PartState(hashlib.sha256(), 0)
                if attempt >= self.options.max_attempts:
                    raise self.error(
                        f"{url}: the server keeps answering Range requests wrongly"
                    ) from None
            except _TransientError as error:
                if attempt >= self.options.max_attempts:
                    raise self.error(
                        f"gave up on {url} after {attempt} attempts: {error}"
                    ) from None
                time.sleep(self.options.backoff(attempt, error.retry_after))
            except OSError as error:  # local disk: not worth retrying
                raise self.error(f"cannot write {part}: {error}") from None

    def _attempt(self, url: str, part: Path, state: _PartState) -> tuple[str, int]:
        """One request: append to ``part`` (or rewrite it); return (sha256, size) when done."""
        headers = {"User-Agent": self.options.user_agent, "Accept-Encoding": "identity"}
        if state.size:
            headers["Range"] = f"bytes={state.size}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = self._opener.open(request, timeout=self.options.timeout_s)
        except urllib.error.HTTPError as error:
            return self._http_error(url, state, error)
        except urllib.error.URLError as error:
            if isinstance(error.reason, ssl.SSLCertVerificationError):
                raise self.error(f"{url}: TLS certificate check failed ({error.reason})") from None
            raise _TransientError(f"cannot connect: {error_reason(error)}") from None
        except (OSError, http.client.HTTPException) as error:
            raise _TransientError(f"cannot connect: {error_reason(error)}") from None
        with response:
            status = response.status
            total: int | None
            if state.size and status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
                if match is None or int(match.group(1)) != state.size:
                    raise _RestartError
                total = int(match.group(3)) if match.group(3) != "*" else None
                mode = "ab"
            elif status == 200:
                # A fresh download, or the server ignored Range: start over from a clean file.
                state.hasher, state.size = hashlib.sha256(), 0
                total = _content_length(response)
                mode = "wb"
            else:
                raise self.error(f"{url}: unexpected HTTP status {status} {response.reason}")
            return self._stream(response, part, mode, state, total)

    def _stream(
        self, response: Any, part: Path, mode: str, state: _PartState, total: int | None
    ) -> tuple[str, int]:
        with open(part, mode) as output:
            while True:
                try:
                    chunk = response.read(self.options.chunk_bytes)
                except (OSError, http.client.HTTPException, ValueError) as error:
                    raise _TransientError(
                        f"connection lost after {state.size} bytes: {error_reason(error)}"
                    ) from None
                if not chunk:
                    break
                output.write(chunk)
                state.hasher.update(chunk)
                state.size += len(chunk)
                if self.progress is not None:
                    self.progress(state.size, total)
            output.flush()
            os.fsync(output.fileno())
        if total is not None and state.size != total:
            raise _TransientError(f"connection closed after {state.size} of {total} bytes")
        return state.hasher.hexdigest(), state.size

    def _http_error(
        self, url: str, state: _PartState, error: urllib.error.HTTPError
    ) -> tuple[str, int]:
        code = error.code
        headers = error.headers
        error.close()
        if code == 416 and state.size:
            match = _UNSATISFIED_RANGE.match((headers or {}).get("Content-Range", "").strip())
            if match is not None and int(match.group(1)) == state.size:
                return state.hasher.hexdigest(), state.size  # the .part was already complete
            raise _RestartError
        if code in (408, 425, 429) or code >= 500:
            raise _TransientError(f"HTTP {code} {error.reason}", _retry_after(headers))
        hint = " (check the url in the catalog entry)" if code in (404, 410) else ""
        raise self.error(f"HTTP {code} {error.reason} for {url}{hint}")


@dataclass
class _PartState:
    """The digest of a ``.part`` file's bytes so far, and how many there are."""

    hasher: Any
    size: int


def _content_length(response: Any) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _retry_after(headers: Any) -> float | None:
    value = (headers or {}).get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
