"""Object store on a local (or network-mounted) folder.

Atomicity comes from the file system: every write goes to a hidden temporary
file in the destination folder, is flushed to disk, and is renamed into place
with :func:`os.replace`, which POSIX guarantees to be atomic within a folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cotir_pipeline.scratch import owner_is_gone, owner_tag
from cotir_pipeline.store.base import (
    TEMP_MARKER,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StoreUnavailableError,
    check_range,
    validate_key,
    validate_prefix,
)

_COPY_CHUNK = 8 * 1024 * 1024


def write_atomically(destination: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create ``destination`` via a temporary sibling so readers never see a partial file.

    ``write`` receives the open binary temporary file. On any error the temporary
    file is removed and the previous content of ``destination`` (if any) is kept.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    # The owner tag lets a later run tell a killed writer's leftover from a live write.
    temporary = destination.with_name(
        f"{TEMP_MARKER}{owner_tag()}-{uuid.uuid4().hex}-{destination.name}"
    )
    try:
        with open(temporary, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root``; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def cleanup(self, prefix: str = "", *, older_than_s: float, dry_run: bool = False) -> list[str]:
        validate_prefix(prefix)
        base = self.root.joinpath(*[part for part in prefix.split("/") if part])
        if not base.exists():
            return []
        cutoff = time.time() - older_than_s
        removed = []
        # Staging folders sit at the root whatever the prefix: a cheap listing of one level.
        staging = sorted(self.root.glob(f"{TEMP_MARKER}staging-*")) if prefix else []
        for path in [*staging, *sorted(base.rglob(f"{TEMP_MARKER}*"))]:
            if not path.exists():
                continue  # gone with a removed staging folder
            if path.stat().st_mtime > cutoff and not owner_is_gone(path.name):
                continue  # possibly still being written
            removed.append(path.relative_to(self.root).as_posix())
            if not dry_run:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        return removed

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        write_atomically(self._path(key), lambda handle: handle.write(data))
        return ObjectInfo(key=key, size=len(data))

    def put_file(self, key: str, source: Path, *, move: bool = False) -> ObjectInfo:
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(f"cannot store {key!r}: {source} is not a file")
        destination = self._path(key)
        if move:
            destination.parent.mkdir(parents=True, exist_ok=True)
            if os.stat(source).st_dev == os.stat(destination.parent).st_dev:
                # Same file system: flush the staged file and rename it into place,
                # which is as atomic as write_atomically's own final rename.
                with open(source, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(source, destination)
                return self.head(key)

        def copy(handle: BinaryIO) -> None:
            with open(source, "rb") as reader:
                shutil.copyfileobj(reader, handle, _COPY_CHUNK)

        write_atomically(destination, copy)
        if move:
            source.unlink()
        return self.head(key)

    @contextlib.contextmanager
    def staging_dir(self) -> Iterator[Path]:
        """A hidden folder under the store root (never listed), removed on exit."""
        folder = self.root / f"{TEMP_MARKER}staging-{owner_tag()}-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from None

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as handle:
            return handle.read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, length)
        with self._open(key) as handle:
            handle.seek(start)
            return handle.read(length)

    def download_file(self, key: str, destination: Path) -> ObjectInfo:
        with self._open(key) as reader:
            write_atomically(
                Path(destination), lambda handle: shutil.copyfileobj(reader, handle, _COPY_CHUNK)
            )
        return ObjectInfo(key=key, size=Path(destination).stat().st_size)

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self.url}")
        return ObjectInfo(key=key, size=path.stat().st_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        # Walk only the deepest folder the prefix fixes, then filter by the full prefix.
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder_part.split("/")) if folder_part else self.root
        if not start.is_dir():
            return
        found: list[ObjectInfo] = []
        for directory, subdirectories, files in os.walk(start):
            # Staging folders hold files not yet stored: never list them.
            subdirectories[:] = sorted(
                name for name in subdirectories if not name.startswith(TEMP_MARKER)
            )
            relative = Path(directory).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(TEMP_MARKER):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    size = os.stat(os.path.join(directory, name)).st_size
                    found.append(ObjectInfo(key=key, size=size))
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError):
            return
        # Remove folders the deletion left empty, up to the root, like S3 would show them.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{TEMP_MARKER}check-{uuid.uuid4().hex}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as error:
            raise StoreUnavailableError(
                f"COTIR_STORE: cannot write to {self.root}: {error.strerror or error}"
            ) from None
