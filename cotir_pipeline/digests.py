"""sha256 of files and folders, read in blocks: the helpers every layer uses for digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


_CACHE: dict[tuple[str, int, int], str] = {}


def cached_file_sha256(path: Path) -> str:
    """:func:`file_sha256`, remembered per (path, size, mtime) for this process: for large
    weight files checked again on every load."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = file_sha256(path)
    return _CACHE[key]


def folder_sha256(folder: Path) -> str:
    """One digest over a folder: its sorted relative file paths and their file digests (a
    checkpoint's ``model_sha256``)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode() + b"\n")
    return digest.hexdigest()
