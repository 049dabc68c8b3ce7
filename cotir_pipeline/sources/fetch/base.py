"""The fetchers' shared base: errors, results, options, the cache layout and the
:class:`SourceFetcher` every adapter extends."""

from __future__ import annotations

import abc
import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import random
import shutil
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

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
)
from cotir_pipeline.store.base import TEMP_MARKER
from cotir_pipeline.store.local import write_atomically

MIRROR_DIR_SETTING = env_name("mirror_dir")
DEFAULT_MAX_EXTRACT_BYTES = 2 * 1024**4

ProgressCallback = Callable[[int, "int | None"], None]

_HASH_CHUNK = 4 * 1024 * 1024
# Temporary names share the object store's marker, so every cleaner knows them.
PARTIAL = TEMP_MARKER


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
class LocalFile:
    """A file of the source on local disk, before it is laid out under ``extracted/``."""

    name: str  # relative POSIX path, validated
    path: Path
    sha256: str
    verified: bool
    from_mirror: bool
    extract: bool  # unpack it (it must then be an archive)
    required_archive: bool = False  # the catalog asked to extract it: a non-archive is an error


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
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

    def local_files(self, entries: list[tuple[str, Path]], *, from_mirror: bool) -> list[LocalFile]:
        """Digest files found on disk (S3, hub, mirrors); archives among them get extracted."""
        return [
            LocalFile(
                name=safe_relative(self.name, relative),
                path=path,
                sha256=self.digest(path),
                verified=False,
                from_mirror=from_mirror,
                extract=archive_kind(relative) is not None,
            )
            for relative, path in entries
        ]

    # layout

    def materialize(self, files: list[LocalFile]) -> FetchResult:
        """Extract the archives and place the plain files under ``extracted/``."""
        if not files:
            raise self.error("no files were found to fetch")
        root = self.extracted_dir
        root.mkdir(parents=True, exist_ok=True)
        archives: dict[tuple[str, ...], LocalFile] = {}
        plain: dict[tuple[str, ...], LocalFile] = {}
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
        archives: dict[tuple[str, ...], LocalFile],
        plain: dict[tuple[str, ...], LocalFile],
    ) -> None:
        """No plain file may land inside (or on) an archive's extraction folder."""
        for parts, item in archives.items():
            for other_parts in (*archives, *plain):
                if other_parts != parts and other_parts[: len(parts)] == parts:
                    other = archives.get(other_parts) or plain[other_parts]
                    raise self.error(
                        f"{other.name} would land inside the extraction folder of {item.name}"
                    )

    def _set_aside_if_unverified(self, item: LocalFile, error: ArchiveError) -> None:
        """A corrupt download without a catalog checksum is moved aside, so a re-run fetches
        it again; a verified one is kept (the published file itself is broken)."""
        if not isinstance(error, CorruptArchiveError) or item.verified or item.from_mirror:
            return
        if self.source_dir not in item.path.parents:
            return
        self.forget_digest(item.path)
        os.replace(item.path, item.path.with_name(item.path.name + ".bad"))


# -- file helpers ------------------------------------------------------------------------


def safe_relative(source: str, relative: str) -> str:
    """A relative POSIX path with no empty, '.', '..' or hidden-partial segments."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or any(part == ".." or "\x00" in part for part in parts):
        raise FetchError(source, f"refusing the unsafe file path {relative!r}")
    if any(part.startswith(PARTIAL) or PARTIAL_INFIX in part for part in parts):
        raise FetchError(source, f"file path {relative!r} uses a reserved name")
    return "/".join(parts)


def hash_prefix(path: Path, length: int) -> Any:
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
        temporary = destination.with_name(f"{PARTIAL}{uuid.uuid4().hex}-{destination.name}")
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


def error_reason(error: BaseException) -> str:
    """A network error in a few words (the cause of a URLError, "timed out")."""
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, socket.timeout | TimeoutError):
        return "timed out"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
