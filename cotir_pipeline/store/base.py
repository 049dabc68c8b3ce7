"""The object-store interface every stage writes through.

Keys are relative POSIX paths ("shards/dn/000001.tar"). Writes are atomic: a
reader sees either the old object or the complete new one, never a partial one.
Two implementations share this contract and one behaviour test suite: a local
folder (:mod:`cotir_pipeline.store.local`) and any S3-compatible server
(:mod:`cotir_pipeline.store.s3`).
"""

from __future__ import annotations

import abc
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cotir_pipeline.scratch import scratch_dir

# Local writes go to a hidden temporary name first; keys may never use it.
TEMP_MARKER = ".cotir-partial-"
_KEY_CHARS = re.compile(r"^[A-Za-z0-9._=+,@~:%-]+$")


class StoreError(RuntimeError):
    """A store operation failed for a reason other than a missing object."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached or used at all; the message names the setting to fix."""


class ObjectNotFoundError(StoreError, KeyError):
    """The requested key does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else "object not found"


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a head request tells about one object."""

    key: str
    size: int


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ValueError.

    The same rule holds for both stores, so a key that works locally also works
    on S3 and can never escape the store's root folder.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if key.startswith("/") or key.endswith("/"):
        raise ValueError(f"object key {key!r} must not start or end with '/'")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"object key {key!r} has an empty, '.' or '..' segment")
        if segment.startswith(TEMP_MARKER):
            raise ValueError(f"object key {key!r} uses the reserved prefix {TEMP_MARKER!r}")
        if not _KEY_CHARS.match(segment):
            raise ValueError(
                f"object key {key!r} has characters outside [A-Za-z0-9._=+,@~:%-] in {segment!r}"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """Return a listing prefix ("" or a key-like string, optionally ending in '/')."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/") if prefix.endswith("/") else prefix)
    return prefix


class ObjectStore(abc.ABC):
    """Put, get and list immutable-by-convention objects under one root URL."""

    #: The root as a URL (``file:///...`` or ``s3://bucket/prefix``).
    url: str

    def uri(self, key: str) -> str:
        """Full URL of ``key`` (for manifests and lineage rows)."""
        return f"{self.url.rstrip('/')}/{validate_key(key)}"

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` under ``key`` atomically, replacing any previous object."""

    @abc.abstractmethod
    def put_file(self, key: str, source: Path, *, move: bool = False) -> ObjectInfo:
        """Store the file at ``source`` atomically; large files upload in parts.

        With ``move=True`` the source is consumed: it is gone afterwards, and a local
        store renames it into place instead of copying when it lies on the store's
        file system (see :meth:`staging_dir`).
        """

    def cleanup(self, prefix: str = "", *, older_than_s: float, dry_run: bool = False) -> list[str]:
        """Remove what killed writers left under ``prefix`` and return what was (or, with
        ``dry_run``, would be) removed: a local store's partial files and staging folders
        older than ``older_than_s`` seconds or written by a process of this machine that
        has ended, an S3 store's unfinished multipart uploads older than ``older_than_s``
        (the server keeps, and bills, their parts until they are aborted). Finished
        objects are never touched."""
        return []

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A scratch folder for files about to be stored with ``put_file(move=True)``.

        The folder and whatever is left in it are removed on exit. A local store puts
        it on its own file system, so that a move is a rename and not a second copy.
        """
        with scratch_dir("staging") as folder:
            yield folder

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Return the whole object; raise :class:`ObjectNotFoundError` if missing."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Return up to ``length`` bytes from offset ``start`` (fewer at the end)."""

    @abc.abstractmethod
    def download_file(self, key: str, destination: Path) -> ObjectInfo:
        """Copy the object to ``destination`` atomically (temporary name, then rename)."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Return the object's size; raise :class:`ObjectNotFoundError` if missing."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, sorted by key."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; deleting a missing key is not an error (idempotent)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`StoreUnavailableError` unless the store can be read and written."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        try:
            self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    def put_text(self, key: str, text: str) -> ObjectInfo:
        """Store UTF-8 text (JSON manifests, markers)."""
        return self.put_bytes(key, text.encode("utf-8"))

    def get_text(self, key: str) -> str:
        """Read an object written by :meth:`put_text`."""
        return self.get_bytes(key).decode("utf-8")

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many were deleted."""
        if not prefix:
            raise ValueError("refusing to delete the whole store: give a non-empty prefix")
        keys = [info.key for info in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)


def check_range(start: int, length: int) -> None:
    """Reject negative offsets and lengths with a clear error."""
    if start < 0 or length < 0:
        raise ValueError(f"range start and length must be >= 0, got start={start} length={length}")
