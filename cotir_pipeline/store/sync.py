"""Copying a store prefix to a local folder and back: the one home of those loops.

Evaluation outputs, benchmark tables, training checkpoints and training shards all move
between the object store and a local folder. Each caller says which files belong
(``include``), when a file counts as already there (``refresh``), which names go last
(completion markers), and whether files on the other side that are no longer wanted
are removed. Every copy is atomic per file (``download_file`` / ``put_file``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cotir_pipeline.store.base import ObjectStore

Refresh = Literal["always", "missing", "size"]
"""When a file is copied: always; only when the other side lacks it; or when it is
missing there or has another size."""


@dataclass(frozen=True)
class SyncReport:
    """What one pull or push did."""

    copied: int
    unchanged: int
    removed: int


def local_files(root: Path) -> dict[str, Path]:
    """Every finished file below ``root`` by relative POSIX path (hidden temp files skipped)."""
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }


def stored_sizes(store: ObjectStore, prefix: str) -> dict[str, int]:
    """Relative key -> size of every object under ``prefix/`` (the whole store for "")."""
    root = prefix.rstrip("/")
    start = len(root) + 1 if root else 0
    return {info.key[start:]: info.size for info in store.list(f"{root}/" if root else "")}


def _needs_copy(refresh: Refresh, present: bool, same_size: bool) -> bool:
    if refresh == "always":
        return True
    if refresh == "missing":
        return not present
    return not (present and same_size)


def _ordered(names: Collection[str], last: Collection[str]) -> list[str]:
    """``names`` sorted, with those in ``last`` moved to the end in ``last``'s order."""
    return [name for name in sorted(names) if name not in last] + [
        name for name in last if name in names
    ]


def pull(
    store: ObjectStore,
    prefix: str,
    folder: Path,
    *,
    refresh: Refresh = "size",
    include: Callable[[str], bool] | None = None,
    last: Collection[str] = (),
    remove_extra: bool = False,
) -> SyncReport:
    """Copy the objects under ``prefix/`` into ``folder`` (keys relative to the prefix).

    ``include`` filters relative names on both sides; ``last`` names are downloaded after
    every other file; with ``remove_extra``, included local files the store does not hold
    are deleted, so the folder mirrors the store.
    """
    wanted = {
        name: size
        for name, size in stored_sizes(store, prefix).items()
        if include is None or include(name)
    }
    removed = 0
    if remove_extra:
        for name, path in local_files(folder).items():
            if name not in wanted and (include is None or include(name)):
                path.unlink()
                removed += 1
    root = prefix.rstrip("/")
    copied = unchanged = 0
    for name in _ordered(wanted, last):
        path = folder.joinpath(*name.split("/"))
        present = path.is_file()
        if not _needs_copy(refresh, present, present and path.stat().st_size == wanted[name]):
            unchanged += 1
            continue
        store.download_file(f"{root}/{name}" if root else name, path)
        copied += 1
    return SyncReport(copied, unchanged, removed)


def push(
    store: ObjectStore,
    folder: Path,
    prefix: str,
    *,
    refresh: Refresh = "size",
    include: Callable[[str], bool] | None = None,
    last: Collection[str] = (),
    remove_stale: bool = False,
) -> SyncReport:
    """Copy the files of ``folder`` to ``prefix/`` (hidden temporary files skipped).

    ``include`` filters relative names on both sides; ``last`` names are uploaded after
    every other file (a completion marker); with ``remove_stale``, included objects under
    the prefix that the folder no longer holds are deleted after the uploads.
    """
    stored = {
        name: size
        for name, size in stored_sizes(store, prefix).items()
        if include is None or include(name)
    }
    files = {
        name: path for name, path in local_files(folder).items() if include is None or include(name)
    }
    root = prefix.rstrip("/")
    copied = unchanged = 0
    for name in _ordered(files, last):
        path = files[name]
        present = name in stored
        if not _needs_copy(refresh, present, present and stored[name] == path.stat().st_size):
            unchanged += 1
            continue
        store.put_file(f"{root}/{name}", path)
        copied += 1
    removed = 0
    if remove_stale:
        for name in sorted(set(stored) - set(files)):
            store.delete(f"{root}/{name}")
            removed += 1
    return SyncReport(copied, unchanged, removed)


__all__ = ["Refresh", "SyncReport", "local_files", "pull", "push", "stored_sizes"]
