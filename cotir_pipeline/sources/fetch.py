"""Fetch one catalog source onto local disk: download, verify, extract.

:func:`fetch_source` picks one adapter per fetch method (:class:`HttpFetcher`,
:class:`S3Fetcher`, :class:`HubFetcher`, :class:`ManualMirrorFetcher`). Each
brings the source's files to local disk, from a local mirror first when one
holds them, and :class:`SourceFetcher` then lays them out the same way for all
methods, under ``<cache_dir>/<name>/``::

    downloads/<file>          HTTP downloads, renamed into place only once verified
    downloads/<file>.part     an interrupted download, resumed with a Range request
    downloads/<file>.bad      a download that failed its checksum (never used)
    s3/<key>, hub/<path>      copies from an S3 prefix or a hub repository
    state/<id>.json           small records of file digests (a re-run hashes nothing)
    extracted/                the root the pairing rules glob under:
        <archive stem>/...    each archive, extracted safely and atomically
        <path>                each plain (non-archive) file, hard-linked or copied

Every error is a :class:`FetchError` whose message starts with the source name.
A fetch of a finished source does no network I/O: files are checked against the
digest records, and extractions against their completion markers.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fnmatch
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from cotir_pipeline.digests import file_sha256
from cotir_pipeline.settings import env_name
from cotir_pipeline.sources.extract import (
    PARTIAL_INFIX,
    ArchiveError,
    CorruptArchiveError,
    UnsafeArchiveError,
    UnsupportedArchiveError,
    archive_kind,
    archive_stem,
    extract_archive,
    fsync_folder,
)
from cotir_pipeline.sources.spec import (
    ArchiveFile,
    FetchSpec,
    HttpFetch,
    HubFetch,
    ManualFetch,
    S3Fetch,
)
from cotir_pipeline.store.base import TEMP_MARKER
from cotir_pipeline.store.local import write_atomically

#: The setting that names the folder of local mirrors (one sub-folder per source).
MIRROR_DIR_SETTING = env_name("mirror_dir")
DEFAULT_MAX_EXTRACT_BYTES = 2 * 1024**4

ProgressCallback = Callable[[int, "int | None"], None]

_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{1,62}$")
_HASH_CHUNK = 4 * 1024 * 1024
# Temporary names share the object store's marker, so every cleaner knows them.
_PARTIAL = TEMP_MARKER
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes\s+\*/(\d+)$")
_TRUTHY = ("1", "true", "yes", "on")


# -- errors ------------------------------------------------------------------------------


class FetchError(RuntimeError):
    """Fetching a source failed; the message starts with the source name."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        super().__init__(f"{source}: {problem}")


class ChecksumMismatchError(FetchError):
    """A file's sha256 differs from the catalog's; the bad download was moved aside."""

    def __init__(
        self, source: str, *, file: str, expected: str, actual: str, detail: str = ""
    ) -> None:
        self.file = file
        self.expected = expected
        self.actual = actual
        super().__init__(
            source,
            f"checksum mismatch for {file}: expected sha256 {expected}, got {actual}"
            + (f" ({detail})" if detail else ""),
        )


class SizeMismatchError(FetchError):
    """A file's size differs from the catalog's ``size_bytes``; it was moved aside."""


class ManualDownloadRequired(FetchError):  # noqa: N818 - the name the callers use
    """The source must be downloaded by hand into its mirror folder."""

    def __init__(self, source: str, problem: str, *, folder: Path | None, missing: list[str]):
        self.folder = folder
        self.missing = missing
        super().__init__(source, problem)


class SourceArchiveError(FetchError):
    """An archive of the source could not be extracted (see the subclasses)."""

    archive: Path
    member: str | None


class UnsafeSourceArchiveError(SourceArchiveError, UnsafeArchiveError):
    """An archive of the source has a member that escapes, a device file, or is too big."""


class CorruptSourceArchiveError(SourceArchiveError, CorruptArchiveError):
    """An archive of the source is damaged or truncated."""


class UnsupportedSourceArchiveError(SourceArchiveError, UnsupportedArchiveError):
    """A file of the source is not a supported archive (or uses an unsupported feature)."""


def _archive_failure(source: str, file: str, error: ArchiveError) -> SourceArchiveError:
    kind: type[SourceArchiveError]
    if isinstance(error, UnsafeArchiveError):
        kind = UnsafeSourceArchiveError
    elif isinstance(error, CorruptArchiveError):
        kind = CorruptSourceArchiveError
    else:
        kind = UnsupportedSourceArchiveError
    failure = kind(source, f"cannot extract {file}: {error}")
    failure.archive = error.archive
    failure.member = error.member
    return failure


# -- results and options -----------------------------------------------------------------


@dataclass(frozen=True)
class FetchedFile:
    """One file of a fetched source, with its digest.

    ``verified`` is True only when the digest was checked against a catalog
    checksum; ``from_mirror`` when the file was taken from the local mirror.
    """

    name: str
    size: int
    sha256: str
    verified: bool
    path: Path
    from_mirror: bool = False


@dataclass(frozen=True)
class FetchResult:
    """A fetched source: ``root`` holds the extracted files the pairing rules glob under."""

    source: str
    root: Path
    files: list[FetchedFile]
    method: str


@dataclass(frozen=True)
class FetchOptions:
    """Network behaviour of the fetchers: timeouts, retries with exponential backoff."""

    timeout_s: float = 60.0
    max_attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    chunk_bytes: int = 1024 * 1024
    user_agent: str = "cotir-pipeline/0.1 (source fetcher)"

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_attempts < 1 or self.chunk_bytes < 1:
            raise ValueError("timeout_s must be > 0, max_attempts >= 1 and chunk_bytes >= 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff times must be >= 0")

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (exponential, jittered)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay


@dataclass(frozen=True)
class _LocalFile:
    """A file of the source on local disk, before it is laid out under ``extracted/``."""

    name: str  # relative POSIX path, validated
    path: Path
    sha256: str
    verified: bool
    from_mirror: bool
    extract: bool  # unpack it (it must then be an archive)
    required_archive: bool = False  # the catalog asked to extract it: a non-archive is an error


# -- the entry point ---------------------------------------------------------------------


def fetch_source(
    name: str,
    spec: FetchSpec,
    *,
    cache_dir: Path,
    mirror_dir: Path | None = None,
    max_extract_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    progress: ProgressCallback | None = None,
    options: FetchOptions | None = None,
    layout_globs: Sequence[str] = (),
) -> FetchResult:
    """Bring source ``name`` to ``cache_dir/<name>/`` and return where its files are.

    A local copy under ``mirror_dir/<name>/`` is used instead of the network when it
    holds the expected files. ``layout_globs`` are the source's split globs (LQ and HQ):
    a manual mirror also hands over every file they match, not only the spot-checked
    ``expected_files``. ``progress(done_bytes, total_bytes_or_None)`` is called
    while each file downloads. ``max_extract_bytes`` bounds the expanded size of all
    the source's archives together. One process at a time works on a source (a lock
    file in its cache folder); others wait, then find the work done.
    """
    if not isinstance(name, str) or not _SOURCE_NAME.match(name):
        raise ValueError(f"source name {name!r} must match {_SOURCE_NAME.pattern}")
    fetcher_class = _FETCHERS.get(type(spec))
    if fetcher_class is None:
        raise TypeError(f"{name}: unknown fetch spec type {type(spec).__name__}")
    fetcher = fetcher_class(
        name,
        spec,
        cache_dir=Path(cache_dir),
        mirror_dir=Path(mirror_dir) if mirror_dir is not None else None,
        max_extract_bytes=max_extract_bytes,
        progress=progress,
        options=options or FetchOptions(),
    )
    fetcher.layout_globs = tuple(layout_globs)
    with _locked(fetcher.source_dir):
        return fetcher.fetch()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` (POSIX flock; a no-op elsewhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(folder / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# -- the shared base ---------------------------------------------------------------------


class SourceFetcher(abc.ABC):
    """Shared plumbing of the adapters: folders, digest records, extraction and layout."""

    method: ClassVar[str]
    #: The source's split globs (see :func:`fetch_source`); set after construction.
    layout_globs: tuple[str, ...] = ()

    def __init__(
        self,
        name: str,
        spec: Any,
        *,
        cache_dir: Path,
        mirror_dir: Path | None = None,
        max_extract_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
        progress: ProgressCallback | None = None,
        options: FetchOptions | None = None,
    ) -> None:
        if max_extract_bytes < 0:
            raise ValueError(f"max_extract_bytes must be >= 0, got {max_extract_bytes}")
        self.name = name
        self.spec = spec
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self.mirror_dir = Path(mirror_dir).expanduser().resolve() if mirror_dir else None
        self.max_extract_bytes = max_extract_bytes
        self.progress = progress
        self.options = options or FetchOptions()

    @abc.abstractmethod
    def fetch(self) -> FetchResult:
        """Bring the files to local disk, verify and extract them."""

    # folders

    @property
    def source_dir(self) -> Path:
        """``cache_dir/<name>``: everything this source keeps locally."""
        return self.cache_dir / self.name

    @property
    def extracted_dir(self) -> Path:
        """The root the pairing rules glob under."""
        return self.source_dir / "extracted"

    @property
    def mirror_folder(self) -> Path | None:
        """``mirror_dir/<name>`` (absolute), or None when no mirror folder is configured."""
        return self.mirror_dir / self.name if self.mirror_dir is not None else None

    def error(self, problem: str) -> FetchError:
        """A :class:`FetchError` whose message starts with the source name."""
        return FetchError(self.name, problem)

    def mirror_hint(self) -> str:
        """Where a copy of the source's files can be put so that no network is needed."""
        if self.mirror_folder is not None:
            return f"put a copy of the files into {self.mirror_folder}/"
        return (
            f"set {MIRROR_DIR_SETTING} to a folder and put a copy of the files into "
            f"<{MIRROR_DIR_SETTING}>/{self.name}/"
        )

    # digests

    def _record_path(self, path: Path) -> Path:
        key = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.source_dir / "state" / f"{key}.json"

    def remember_digest(self, path: Path, sha256: str) -> None:
        """Record ``path``'s digest with its size and mtime, so a re-run need not hash it."""
        status = path.stat()
        record = {
            "path": str(path),
            "size": status.st_size,
            "mtime_ns": status.st_mtime_ns,
            "sha256": sha256,
        }
        write_atomically(
            self._record_path(path),
            lambda handle: handle.write(json.dumps(record, sort_keys=True).encode("utf-8")),
        )

    def forget_digest(self, path: Path) -> None:
        """Drop the digest record of ``path`` (the file was moved aside or replaced)."""
        self._record_path(path).unlink(missing_ok=True)

    def digest(self, path: Path) -> str:
        """The file's sha256, from its record when size and mtime still match."""
        status = path.stat()
        try:
            record = json.loads(self._record_path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if (
            isinstance(record, dict)
            and record.get("path") == str(path)
            and record.get("size") == status.st_size
            and record.get("mtime_ns") == status.st_mtime_ns
            and isinstance(record.get("sha256"), str)
        ):
            return str(record["sha256"])
        sha256 = file_sha256(path)
        self.remember_digest(path, sha256)
        return sha256

    # mirrors

    def mirror_files(self, patterns: list[str] | None = None) -> list[tuple[str, Path]]:
        """Regular, non-hidden files in the mirror folder (optionally matching ``patterns``)."""
        folder = self.mirror_folder
        if folder is None or not folder.is_dir():
            return []
        found: list[tuple[str, Path]] = []
        for directory, subdirectories, names in os.walk(folder):
            subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
            for file_name in sorted(names):
                if file_name.startswith("."):
                    continue
                path = Path(directory) / file_name
                relative = path.relative_to(folder).as_posix()
                if not path.is_file():
                    continue
                if patterns and not any(fnmatch.fnmatch(relative, p) for p in patterns):
                    continue
                found.append((relative, path))
        return found

    def local_files(
        self, entries: list[tuple[str, Path]], *, from_mirror: bool
    ) -> list[_LocalFile]:
        """Digest files found on disk (S3, hub, mirrors); archives among them get extracted."""
        return [
            _LocalFile(
                name=_safe_relative(self.name, relative),
                path=path,
                sha256=self.digest(path),
                verified=False,
                from_mirror=from_mirror,
                extract=archive_kind(relative) is not None,
            )
            for relative, path in entries
        ]

    # layout

    def materialize(self, files: list[_LocalFile]) -> FetchResult:
        """Extract the archives and place the plain files under ``extracted/``."""
        if not files:
            raise self.error("no files were found to fetch")
        root = self.extracted_dir
        root.mkdir(parents=True, exist_ok=True)
        archives: dict[tuple[str, ...], _LocalFile] = {}
        plain: dict[tuple[str, ...], _LocalFile] = {}
        for item in files:
            relative = PurePosixPath(item.name)
            if item.extract and archive_kind(item.name) is not None:
                parts = (*relative.parent.parts, archive_stem(relative.name))
                if parts in archives or parts in plain:
                    raise self.error(
                        f"{item.name} and {(archives.get(parts) or plain[parts]).name} would "
                        f"both extract to {root.joinpath(*parts)}"
                    )
                archives[parts] = item
            elif item.required_archive:
                raise _archive_failure(
                    self.name,
                    item.name,
                    UnsupportedArchiveError(
                        item.path,
                        "is marked 'extract: true' in the catalog but has no supported archive "
                        "suffix (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz); set "
                        "'extract: false' or a 'filename' with the right suffix",
                    ),
                )
            else:
                plain[relative.parts] = item
        self._check_overlaps(archives, plain)
        keep = {parts[0] for parts in (*archives, *plain)}
        _prune(root, keep)

        budget = self.max_extract_bytes
        for parts, item in archives.items():
            destination = root.joinpath(*parts)
            try:
                report = extract_archive(
                    item.path,
                    destination,
                    max_total_bytes=budget,
                    archive_sha256=item.sha256,
                )
            except ArchiveError as error:
                self._set_aside_if_unverified(item, error)
                raise _archive_failure(self.name, item.name, error) from error
            except OSError as error:
                raise self.error(
                    f"cannot extract {item.name} into {destination}: {error}"
                ) from error
            budget = max(0, budget - report.total_bytes)
        for parts, item in plain.items():
            _place_file(self.name, item.path, root.joinpath(*parts))

        fetched = [
            FetchedFile(
                name=item.name,
                size=item.path.stat().st_size,
                sha256=item.sha256,
                verified=item.verified,
                path=item.path,
                from_mirror=item.from_mirror,
            )
            for item in files
        ]
        return FetchResult(source=self.name, root=root, files=fetched, method=self.method)

    def _check_overlaps(
        self,
        archives: dict[tuple[str, ...], _LocalFile],
        plain: dict[tuple[str, ...], _LocalFile],
    ) -> None:
        """No plain file may land inside (or on) an archive's extraction folder."""
        for parts, item in archives.items():
            for other_parts in (*archives, *plain):
                if other_parts != parts and other_parts[: len(parts)] == parts:
                    other = archives.get(other_parts) or plain[other_parts]
                    raise self.error(
                        f"{other.name} would land inside the extraction folder of {item.name}"
                    )

    def _set_aside_if_unverified(self, item: _LocalFile, error: ArchiveError) -> None:
        """A corrupt download without a catalog checksum is moved aside, so a re-run fetches
        it again; a verified one is kept (the published file itself is broken)."""
        if not isinstance(error, CorruptArchiveError) or item.verified or item.from_mirror:
            return
        if self.source_dir not in item.path.parents:
            return
        self.forget_digest(item.path)
        os.replace(item.path, item.path.with_name(item.path.name + ".bad"))


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
        files: list[_LocalFile] = []
        for entry, file_name in entries:
            mirrored = self.mirror_folder / file_name if self.mirror_folder else None
            if mirrored is not None and mirrored.is_file():
                path, sha256 = mirrored, self._check_mirror_file(entry, file_name, mirrored)
            else:
                path, sha256 = self._download(entry, file_name)
            files.append(
                _LocalFile(
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
                    state = _PartState(_hash_prefix(part, on_disk), on_disk)
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
            raise _TransientError(f"cannot connect: {_reason(error)}") from None
        except (OSError, http.client.HTTPException) as error:
            raise _TransientError(f"cannot connect: {_reason(error)}") from None
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
                        f"connection lost after {state.size} bytes: {_reason(error)}"
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


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, socket.timeout | TimeoutError):
        return "timed out"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- S3 ----------------------------------------------------------------------------------


class S3Fetcher(SourceFetcher):
    """Copies every object under an S3 prefix, skipping those already present with the same
    size; archives among them are extracted."""

    method = "s3"
    spec: S3Fetch

    def fetch(self) -> FetchResult:
        mirrored = self.mirror_files()
        if mirrored:
            return self.materialize(self.local_files(mirrored, from_mirror=True))
        bucket, prefix = _split_s3_url(self.spec.url)
        client = self._client()
        target = self.source_dir / "s3"
        entries: list[tuple[str, Path]] = []
        for key, size in self._list(client, bucket, prefix):
            relative = _safe_relative(self.name, key[len(prefix) :])
            local = target.joinpath(*relative.split("/"))
            if not (local.is_file() and local.stat().st_size == size):
                self._download(client, bucket, key, local, size)
            entries.append((relative, local))
        if not entries:
            raise self.error(f"no objects under {self.spec.url}")
        return self.materialize(self.local_files(entries, from_mirror=False))

    def _client(self) -> Any:
        from cotir_pipeline.store.s3 import s3_client

        return s3_client(
            self.spec.endpoint_url,
            addressing_style="path" if self.spec.endpoint_url else "auto",
            anonymous=self.spec.anonymous,
            max_attempts=self.options.max_attempts,
            connect_timeout_s=self.options.timeout_s,
            read_timeout_s=self.options.timeout_s,
        )

    def _list(self, client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        paginator = client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=bucket, Prefix=prefix))
        while (page := self._call(lambda: next(pages, None))) is not None:
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):  # folder placeholders
                    yield item["Key"], int(item["Size"])

    def _download(self, client: Any, bucket: str, key: str, local: Path, size: int) -> None:
        from boto3.s3.transfer import TransferConfig

        local.parent.mkdir(parents=True, exist_ok=True)
        temporary = local.with_name(f"{_PARTIAL}{uuid.uuid4().hex}-{local.name}")
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if self.progress is not None:
                self.progress(done, size)

        transfer = TransferConfig(multipart_threshold=64 * 1024**2, max_concurrency=4)
        try:
            self._call(
                lambda: client.download_file(
                    bucket, key, str(temporary), Callback=advance, Config=transfer
                ),
                key,
            )
            os.replace(temporary, local)
        finally:
            temporary.unlink(missing_ok=True)
        self.forget_digest(local)

    def _call(self, operation: Callable[[], Any], key: str | None = None) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        where = self.spec.endpoint_url or "AWS S3"
        what = f"s3://{_split_s3_url(self.spec.url)[0]}/{key}" if key else self.spec.url
        try:
            return operation()
        except NoCredentialsError:
            raise self.error(
                f"no S3 credentials for {what}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "or 'anonymous: true' in the catalog for a public bucket"
            ) from None
        except EndpointConnectionError as error:
            raise self.error(
                f"cannot reach {where} for {what} ({error}); {self.mirror_hint()}"
            ) from None
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "")) or str(error)
            raise self.error(f"S3 request for {what} on {where} failed: {code}") from None
        except BotoCoreError as error:
            raise self.error(f"S3 request for {what} on {where} failed: {error}") from None


def _split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b/``); the prefix ends with '/' unless empty."""
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


# -- hub ---------------------------------------------------------------------------------


class HubFetcher(SourceFetcher):
    """A snapshot of a hub repository (huggingface_hub), or its copy in the mirror folder."""

    method = "hub"
    spec: HubFetch

    def fetch(self) -> FetchResult:
        mirrored = self.mirror_files(self.spec.allow_patterns)
        if mirrored:
            return self.materialize(self.local_files(mirrored, from_mirror=True))
        local_dir = self.source_dir / "hub"
        self._snapshot(local_dir)
        entries: list[tuple[str, Path]] = []
        for directory, subdirectories, names in os.walk(local_dir):
            subdirectories[:] = sorted(d for d in subdirectories if d != ".cache")
            for file_name in sorted(names):
                path = Path(directory) / file_name
                if path.is_file():
                    entries.append((path.relative_to(local_dir).as_posix(), path))
        if not entries:
            patterns = self.spec.allow_patterns
            raise self.error(
                f"the hub repository {self.spec.repo_id!r} has no files"
                + (f" matching {patterns}" if patterns else "")
            )
        return self.materialize(self.local_files(entries, from_mirror=False))

    def _snapshot(self, local_dir: Path) -> None:
        """Download (or re-check) the snapshot; hub errors become a clear FetchError."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        transport: tuple[type[BaseException], ...] = ()
        with contextlib.suppress(ImportError):
            import httpx2  # the HTTP client huggingface_hub uses

            transport = (httpx2.HTTPError,)
        # Read at call time: huggingface_hub reads these once, when it is first imported.
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY
        endpoint = os.environ.get("HF_ENDPOINT") or None
        what = f"{self.spec.repo_type} {self.spec.repo_id!r}"
        if self.spec.revision:
            what += f" at revision {self.spec.revision!r}"
        local_dir.mkdir(parents=True, exist_ok=True)
        try:
            snapshot_download(
                self.spec.repo_id,
                repo_type=self.spec.repo_type,
                revision=self.spec.revision,
                allow_patterns=self.spec.allow_patterns,
                local_dir=local_dir,
                local_files_only=offline,
                endpoint=endpoint,
            )
        except GatedRepoError:
            raise self.error(
                f"the hub {what} is gated: accept its terms on the hub and set HF_TOKEN, "
                f"or {self.mirror_hint()}"
            ) from None
        except RevisionNotFoundError:
            raise self.error(f"the hub has no {what}: check 'revision' in the catalog") from None
        except RepositoryNotFoundError:
            raise self.error(
                f"the hub {what} was not found or is private (set HF_TOKEN if it is private)"
            ) from None
        except HFValidationError as error:
            raise self.error(f"invalid hub repository id or revision for {what}: {error}") from None
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, *transport) as error:
            why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else _reason(error)
            raise self.error(
                f"cannot reach the hub ({endpoint or 'huggingface.co'}) for {what}: {why}; "
                f"no complete copy is in {local_dir}. Instead, {self.mirror_hint()}"
            ) from None


# -- manual ------------------------------------------------------------------------------


class ManualMirrorFetcher(SourceFetcher):
    """Files the user downloads by hand into ``mirror_dir/<name>/``."""

    method = "manual"
    spec: ManualFetch

    def fetch(self) -> FetchResult:
        patterns = [self._pattern(p) for p in self.spec.expected_files]
        folder = self.mirror_folder
        if folder is None:
            raise ManualDownloadRequired(
                self.name,
                f"manual download required. {self.spec.instructions.strip()}\n"
                f"No mirror folder is configured: set {MIRROR_DIR_SETTING} to a folder and put "
                f"the files into <{MIRROR_DIR_SETTING}>/{self.name}/ (expected: "
                f"{', '.join(patterns)}).",
                folder=None,
                missing=patterns,
            )
        matched: dict[str, Path] = {}
        missing: list[str] = []
        for pattern in patterns:
            hits = sorted(p for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else []
            if not hits:
                missing.append(pattern)
            for path in hits:
                matched.setdefault(path.relative_to(folder).as_posix(), path)
        if missing:
            raise ManualDownloadRequired(
                self.name,
                f"manual download required. {self.spec.instructions.strip()}\n"
                f"Put the files into {folder}/ ; missing there: {', '.join(missing)}.",
                folder=folder,
                missing=missing,
            )
        # expected_files are spot checks; the splits' globs say which files the pairing
        # reads (a glob may match nothing here when its files sit inside an archive).
        for pattern in dict.fromkeys(self._pattern(p) for p in self.layout_globs):
            for path in sorted(p for p in folder.glob(pattern) if p.is_file()):
                matched.setdefault(path.relative_to(folder).as_posix(), path)
        return self.materialize(self.local_files(sorted(matched.items()), from_mirror=True))

    def _pattern(self, pattern: str) -> str:
        parts = PurePosixPath(pattern).parts
        if not parts or pattern.startswith("/") or ".." in parts:
            raise self.error(f"expected_files pattern {pattern!r} must be relative, without '..'")
        return pattern


_FETCHERS: dict[type, type[SourceFetcher]] = {
    HttpFetch: HttpFetcher,
    S3Fetch: S3Fetcher,
    HubFetch: HubFetcher,
    ManualFetch: ManualMirrorFetcher,
}


# -- file helpers ------------------------------------------------------------------------


def _safe_relative(source: str, relative: str) -> str:
    """A relative POSIX path with no empty, '.', '..' or hidden-partial segments."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or any(part == ".." or "\x00" in part for part in parts):
        raise FetchError(source, f"refusing the unsafe file path {relative!r}")
    if any(part.startswith(_PARTIAL) or PARTIAL_INFIX in part for part in parts):
        raise FetchError(source, f"file path {relative!r} uses a reserved name")
    return "/".join(parts)


def _hash_prefix(path: Path, length: int) -> Any:
    """A sha256 object fed with the first ``length`` bytes of ``path``."""
    hasher = hashlib.sha256()
    if length == 0:
        return hasher
    with open(path, "rb") as handle:
        left = length
        while left > 0 and (chunk := handle.read(min(_HASH_CHUNK, left))):
            hasher.update(chunk)
            left -= len(chunk)
    return hasher


def _place_file(source: str, original: Path, destination: Path) -> None:
    """Make ``destination`` hold ``original``'s content: a hard link, else a copy."""
    try:
        if destination.is_file() and not destination.is_symlink():
            if os.path.samefile(original, destination):
                return
            mine, theirs = original.stat(), destination.stat()
            if (mine.st_size, mine.st_mtime_ns) == (theirs.st_size, theirs.st_mtime_ns):
                return  # a copy made by an earlier run (copy2 keeps the mtime)
        elif destination.is_dir():
            raise FetchError(source, f"{destination} is a folder, cannot place a file there")
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(f"{_PARTIAL}{uuid.uuid4().hex}-{destination.name}")
        try:
            try:
                os.link(original, temporary)
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copy2(original, temporary)
            os.replace(temporary, destination)
        finally:
            temporary.unlink(missing_ok=True)
    except FetchError:
        raise
    except OSError as error:
        raise FetchError(source, f"cannot place {original} at {destination}: {error}") from None


def _prune(root: Path, keep: set[str]) -> None:
    """Remove top-level entries of ``root`` this fetch does not produce (stale or partial)."""
    for entry in root.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
