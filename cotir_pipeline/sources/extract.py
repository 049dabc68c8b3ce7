"""Safe, atomic extraction of .zip and .tar[.gz|.bz2|.xz] archives.

Source archives come from 60+ third-party sites and mirrors, so they are treated
as untrusted input: :func:`extract_archive` refuses members that would land
outside the destination (absolute paths, ``..``, escaping symlinks and
hardlinks), device files and FIFOs, and archives that expand past a byte budget
(counted on the bytes actually written, not only on the sizes the headers
declare). The standard library's ``extractall`` is not used because it offers
none of that for zip files and only part of it for tar files.

Extraction is atomic: members go into a hidden temporary sibling of the
destination, a completion marker is written last, and the folder is renamed
into place, so a crash never leaves a folder that looks finished. Running it
again over a finished destination is a no-op.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import json
import lzma
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

#: File written inside a finished destination, last; its presence means "complete".
MARKER_NAME = ".cotir-extracted.json"
#: Infix of the temporary sibling folders extraction works in.
PARTIAL_INFIX = ".cotir-extracting-"
_MARKER_FORMAT = 1

ArchiveKind = Literal["zip", "tar"]

#: Suffixes handled, longest first so ``.tar.gz`` wins over ``.gz``.
ARCHIVE_SUFFIXES: dict[str, ArchiveKind] = {
    ".tar.bz2": "tar",
    ".tar.gz": "tar",
    ".tar.xz": "tar",
    ".tbz2": "tar",
    ".tar": "tar",
    ".tbz": "tar",
    ".tgz": "tar",
    ".txz": "tar",
    ".zip": "zip",
}

_CHUNK = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE
_TAIL_CHUNKS = 4
_MAX_LINK_TARGET = 4096
_ZIP_UNIX = 3
_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
# Errors the decompressors and archive readers raise on damaged input.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    gzip.BadGzipFile,
    NotImplementedError,
    OSError,
)


#: The completion marker's key for the archive's fingerprint (name, size, sha256 or
#: mtime); its on-disk name predates the name of the idea and stays, so existing
#: extractions are still recognised.
MARKER_FINGERPRINT_KEY = "identity"


class ArchiveError(ValueError):
    """An archive cannot be extracted; the message names the archive (and member)."""

    def __init__(self, archive: Path, problem: str, member: str | None = None) -> None:
        self.archive = Path(archive)
        self.member = member
        where = f"{self.archive}: member {member!r}" if member is not None else f"{self.archive}"
        super().__init__(f"{where}: {problem}")


class UnsafeArchiveError(ArchiveError):
    """A member would escape the destination, is a device/FIFO, or the archive is too big."""


class CorruptArchiveError(ArchiveError):
    """The archive is damaged or truncated (bad header, CRC error, early end of data)."""


class UnsupportedArchiveError(ArchiveError):
    """The file is not an archive type this module handles (or uses an unsupported feature)."""


@dataclass(frozen=True)
class ExtractionReport:
    """What one :func:`extract_archive` call produced (or found already finished)."""

    archive: Path
    destination: Path
    members: int
    files: int
    total_bytes: int
    already_done: bool


def archive_kind(path: Path | str) -> ArchiveKind | None:
    """``"zip"`` or ``"tar"`` when the file name has a supported archive suffix, else None."""
    name = Path(path).name.lower()
    for suffix, kind in ARCHIVE_SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return kind
    return None


def archive_stem(path: Path | str) -> str:
    """The file name without its archive suffix (``a.tar.gz`` -> ``a``, ``b.zip`` -> ``b``)."""
    name = Path(path).name
    lowered = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_marker(destination: Path) -> dict[str, object] | None:
    """The completion record of a finished destination, or None when it is not finished."""
    try:
        data = json.loads((Path(destination) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def extract_archive(
    archive: Path,
    destination: Path,
    *,
    max_total_bytes: int,
    max_members: int = 1_000_000,
    archive_sha256: str | None = None,
) -> ExtractionReport:
    """Extract ``archive`` into ``destination`` safely and atomically.

    ``max_total_bytes`` bounds the expanded size (declared sizes and bytes actually
    written); ``max_members`` bounds the number of entries. ``archive_sha256``, when
    known, identifies the archive in the completion marker so a changed archive is
    extracted again; without it the archive's size and modification time are used.

    Raises :class:`UnsafeArchiveError`, :class:`CorruptArchiveError` or
    :class:`UnsupportedArchiveError`; on any error nothing is left at ``destination``
    and the temporary folder is removed.
    """
    archive = Path(archive)
    destination = Path(destination)
    if max_total_bytes < 0 or max_members < 1:
        raise ValueError(
            f"max_total_bytes must be >= 0 and max_members >= 1, "
            f"got {max_total_bytes} and {max_members}"
        )
    kind = archive_kind(archive)
    if kind is None:
        supported = ", ".join(sorted(ARCHIVE_SUFFIXES))
        raise UnsupportedArchiveError(
            archive, f"unknown archive type (supported suffixes: {supported})"
        )
    try:
        status = archive.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{archive}: archive not found") from None
    if not stat.S_ISREG(status.st_mode):
        raise UnsupportedArchiveError(archive, "not a regular file")
    fingerprint = _fingerprint(archive, status, archive_sha256)

    marker = read_marker(destination)
    if marker is not None and marker.get(MARKER_FINGERPRINT_KEY) == fingerprint:
        return ExtractionReport(
            archive=archive,
            destination=destination,
            members=_as_int(marker.get("members")),
            files=_as_int(marker.get("files")),
            total_bytes=_as_int(marker.get("total_bytes")),
            already_done=True,
        )
    if marker is None and destination.exists():
        _refuse_foreign_destination(destination)

    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}{PARTIAL_INFIX}{uuid.uuid4().hex}")
    temporary.mkdir()
    try:
        writer = _TreeWriter(archive, temporary, max_total_bytes, max_members)
        if kind == "zip":
            _extract_zip(archive, writer)
        else:
            _extract_tar(archive, writer)
        writer.finish()
        _write_marker(temporary, fingerprint, writer)
        _move_into_place(temporary, destination, fingerprint)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return ExtractionReport(
        archive=archive,
        destination=destination,
        members=writer.members,
        files=writer.files,
        total_bytes=writer.written,
        already_done=False,
    )


# -- destination handling ---------------------------------------------------------------


def _fingerprint(archive: Path, status: os.stat_result, sha256: str | None) -> dict[str, object]:
    fingerprint: dict[str, object] = {"name": archive.name, "size": status.st_size}
    if sha256 is not None:
        fingerprint["sha256"] = sha256.lower()
    else:
        fingerprint["mtime_ns"] = status.st_mtime_ns
    return fingerprint


def _as_int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _refuse_foreign_destination(destination: Path) -> None:
    """Remove an empty leftover folder; refuse to overwrite one this module did not make."""
    if destination.is_dir() and not any(destination.iterdir()):
        destination.rmdir()
        return
    raise FileExistsError(
        f"{destination} exists but was not made by extract_archive (no {MARKER_NAME}); "
        "remove it or choose another destination"
    )


def _write_marker(folder: Path, fingerprint: dict[str, object], writer: _TreeWriter) -> None:
    record = {
        "format": _MARKER_FORMAT,
        MARKER_FINGERPRINT_KEY: fingerprint,
        "members": writer.members,
        "files": writer.files,
        "total_bytes": writer.written,
    }
    with open(folder / MARKER_NAME, "x", encoding="utf-8") as handle:
        json.dump(record, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _move_into_place(temporary: Path, destination: Path, fingerprint: dict[str, object]) -> None:
    """Rename the finished folder to ``destination``; replace an outdated extraction."""
    old: Path | None = None
    if destination.exists():
        current = read_marker(destination)
        if current is not None and current.get(MARKER_FINGERPRINT_KEY) == fingerprint:
            # Another process finished the same extraction first: keep its result.
            shutil.rmtree(temporary, ignore_errors=True)
            return
        old = destination.with_name(f".{destination.name}.cotir-old-{uuid.uuid4().hex}")
        os.rename(destination, old)
    try:
        os.rename(temporary, destination)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        current = read_marker(destination)
        if current is None or current.get(MARKER_FINGERPRINT_KEY) != fingerprint:
            raise
        shutil.rmtree(temporary, ignore_errors=True)
    fsync_folder(destination.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; best effort."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# -- the member writer (shared by zip and tar) -------------------------------------------


def _declared_limit_exceeded(declared_total: int, max_total_bytes: int) -> bool:
    """Whether the sizes the headers declare already pass the budget."""
    return declared_total > max_total_bytes


class _TreeWriter:
    """Writes validated members under a root; symlinks are created last and re-checked."""

    def __init__(self, archive: Path, root: Path, max_total_bytes: int, max_members: int) -> None:
        self.archive = archive
        self.root = root
        self.real_root = os.path.realpath(root)
        self.max_total_bytes = max_total_bytes
        self.max_members = max_members
        self.members = 0
        self.files = 0
        self.written = 0
        self.declared = 0
        self.regular: set[tuple[str, ...]] = set()
        self.symlinks: dict[tuple[str, ...], tuple[str, str]] = {}  # parts -> (member, target)

    # validation

    def unsafe(self, member: str, problem: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(self.archive, problem, member)

    def corrupt(self, member: str | None, problem: str) -> CorruptArchiveError:
        return CorruptArchiveError(self.archive, problem, member)

    def parts(self, member: str, name: str) -> tuple[str, ...]:
        """Normalized relative path segments of ``name``; raises on unsafe names."""
        if "\x00" in name:
            raise self.unsafe(member, "has a NUL character in its name")
        if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
            raise self.unsafe(member, "has an absolute path")
        segments: list[str] = []
        for segment in name.split("/"):
            if segment in ("", "."):
                continue
            if segment == "..":
                raise self.unsafe(member, "has a '..' segment (path traversal)")
            segments.append(segment)
        result = tuple(segments)
        if result == (MARKER_NAME,):
            raise self.unsafe(member, f"uses the reserved name {MARKER_NAME!r}")
        for depth in range(1, len(result)):
            if result[:depth] in self.symlinks:
                raise self.unsafe(member, "lies inside a symlink member of the archive")
        return result

    def count_member(self, member: str) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise self.unsafe(member, f"passes the limit of {self.max_members} members")

    def declare(self, member: str, size: int) -> None:
        self.declared += max(size, 0)
        if _declared_limit_exceeded(self.declared, self.max_total_bytes):
            raise self.unsafe(
                member,
                f"brings the declared expanded size to {self.declared} bytes, over the "
                f"limit of {self.max_total_bytes} bytes",
            )

    def path(self, parts: tuple[str, ...]) -> Path:
        return self.root.joinpath(*parts)

    def _forget(self, parts: tuple[str, ...]) -> None:
        """A later member replaces an earlier one with the same path."""
        self.symlinks.pop(parts, None)
        self.regular.discard(parts)

    # members

    def add_directory(self, member: str, parts: tuple[str, ...]) -> None:
        if not parts:
            return
        self._forget(parts)
        try:
            self.path(parts).mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise self.corrupt(member, "conflicts with a file of the same name") from None

    def add_file(self, member: str, parts: tuple[str, ...], reader: IO[bytes], mode: int) -> None:
        if not parts:
            raise self.corrupt(member, "is a file without a name")
        self._forget(parts)
        target = self.path(parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir() and not target.is_symlink():
                raise IsADirectoryError(str(target))
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            descriptor = os.open(target, flags, 0o644)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise self.corrupt(member, "conflicts with another member of the same path") from None
        with os.fdopen(descriptor, "wb") as output:
            while True:
                try:
                    chunk = reader.read(_CHUNK)
                except _READ_ERRORS as error:
                    raise self.corrupt(member, f"cannot be read: {_describe(error)}") from error
                if not chunk:
                    break
                self.written += len(chunk)
                if self.written > self.max_total_bytes:
                    raise self.unsafe(
                        member,
                        f"expands past the limit of {self.max_total_bytes} bytes while "
                        "extracting (the archive's declared sizes are wrong: possible bomb)",
                    )
                output.write(chunk)
        os.chmod(target, 0o644 | (mode & 0o111))
        self.regular.add(parts)
        self.files += 1

    def add_symlink(self, member: str, parts: tuple[str, ...], target: str) -> None:
        if not parts:
            raise self.unsafe(member, "is a symlink replacing the destination itself")
        if not target or "\x00" in target:
            raise self.unsafe(member, "is a symlink with an empty or invalid target")
        if target.startswith("/"):
            raise self.unsafe(member, f"is a symlink to the absolute path {target!r}")
        resolved = list(parts[:-1])
        for segment in target.split("/"):
            if segment in ("", "."):
                continue
            if segment == "..":
                if not resolved:
                    raise self.unsafe(
                        member, f"is a symlink to {target!r}, which leaves the destination"
                    )
                resolved.pop()
            else:
                resolved.append(segment)
        self.regular.discard(parts)
        self.symlinks[parts] = (member, target)

    def add_hardlink(self, member: str, parts: tuple[str, ...], link_name: str) -> None:
        source = self.parts(member, link_name)
        if source not in self.regular:
            raise self.unsafe(
                member,
                f"is a hardlink to {link_name!r}, which is not a regular file extracted "
                "earlier from this archive",
            )
        if not parts:
            raise self.unsafe(member, "is a hardlink replacing the destination itself")
        self._forget(parts)
        target = self.path(parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() and not target.is_dir():
                target.unlink()
            try:
                os.link(self.path(source), target)
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(self.path(source), target)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise self.corrupt(member, "conflicts with another member of the same path") from None
        self.regular.add(parts)
        self.files += 1

    def finish(self) -> None:
        """Create the symlinks, then check where each one really points."""
        for parts, (member, target) in self.symlinks.items():
            link = self.path(parts)
            try:
                link.parent.mkdir(parents=True, exist_ok=True)
                if link.is_symlink() or link.is_file():
                    link.unlink()
                os.symlink(target, link)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                raise self.corrupt(
                    member, "conflicts with another member of the same path"
                ) from None
        for parts, (member, target) in self.symlinks.items():
            real = os.path.realpath(self.path(parts))
            if real != self.real_root and not real.startswith(self.real_root + os.sep):
                raise self.unsafe(
                    member, f"is a symlink to {target!r}, which resolves outside the destination"
                )


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- zip ---------------------------------------------------------------------------------


def _extract_zip(archive: Path, writer: _TreeWriter) -> None:
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise CorruptArchiveError(
            archive, f"not a readable zip file ({_describe(error)})"
        ) from None
    with bundle:
        entries = bundle.infolist()
        if len(entries) > writer.max_members:
            raise writer.unsafe(
                entries[writer.max_members].filename,
                f"passes the limit of {writer.max_members} members "
                f"(the archive lists {len(entries)})",
            )
        declared = 0
        for info in entries:  # check the whole declared size before writing anything
            declared += info.file_size
            if _declared_limit_exceeded(declared, writer.max_total_bytes):
                raise writer.unsafe(
                    info.filename,
                    f"brings the declared expanded size to {declared} bytes, over the "
                    f"limit of {writer.max_total_bytes} bytes",
                )
        for info in entries:
            _zip_member(bundle, info, writer)


def _zip_member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, writer: _TreeWriter) -> None:
    member = info.filename
    writer.count_member(member)
    # Zip names must use '/', but some Windows tools write '\'; both separate folders.
    parts = writer.parts(member, member.replace("\\", "/"))
    # Unix zips keep st_mode in the high 16 bits; a type of 0 means a plain file.
    mode = info.external_attr >> 16 if info.create_system == _ZIP_UNIX else 0
    file_type = stat.S_IFMT(mode)
    if info.is_dir() or file_type == stat.S_IFDIR:
        writer.add_directory(member, parts)
        return
    if file_type not in (0, stat.S_IFREG, stat.S_IFLNK):
        raise writer.unsafe(member, "is a device file, FIFO or socket")
    if info.flag_bits & 0x1:
        raise UnsupportedArchiveError(
            writer.archive, "is encrypted (password-protected zips are not supported)", member
        )
    try:
        if file_type == stat.S_IFLNK:
            if info.file_size > _MAX_LINK_TARGET:
                raise writer.unsafe(member, "is a symlink with an oversized target")
            target = bundle.read(info).decode("utf-8", errors="surrogateescape")
            writer.add_symlink(member, parts, target)
            return
        with bundle.open(info) as reader:
            writer.add_file(member, parts, reader, mode)
    except ArchiveError:
        raise
    except NotImplementedError as error:
        raise UnsupportedArchiveError(
            writer.archive, f"uses an unsupported zip feature ({error})", member
        ) from None
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, ValueError) as error:
        raise writer.corrupt(member, f"cannot be read: {_describe(error)}") from None


# -- tar ---------------------------------------------------------------------------------


class _TailReader:
    """Passes reads through while counting bytes and keeping the most recent chunks.

    Tar readers stop silently at a damaged or missing header after the first member,
    so after the last member the block where reading stopped is checked here: it
    must be the all-zero end-of-archive block, or the archive was truncated.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.position = 0
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=_TAIL_CHUNKS)

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if data:
            self.recent.append((self.position, data))
            self.position += len(data)
        return data

    def block_at(self, offset: int) -> bytes | None:
        """The 512-byte block at ``offset`` if it was read and is still kept."""
        if not self.recent or offset < self.recent[0][0] or offset + _BLOCK > self.position:
            return None
        start = self.recent[0][0]
        kept = b"".join(data for _, data in self.recent)
        return kept[offset - start : offset - start + _BLOCK]


@contextlib.contextmanager
def _decompressed(archive: Path) -> Iterator[IO[bytes]]:
    """The archive's bytes, decompressed by magic number (not by suffix)."""
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(archive, "rb"))
        head = raw.read(8)
        raw.seek(0)
        if head.startswith(_GZIP_MAGIC):
            yield stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        elif head.startswith(_BZIP2_MAGIC):
            yield stack.enter_context(bz2.BZ2File(raw, mode="rb"))
        elif head.startswith(_XZ_MAGIC):
            yield stack.enter_context(lzma.LZMAFile(raw, mode="rb"))
        else:
            yield raw


def _extract_tar(archive: Path, writer: _TreeWriter) -> None:
    with _decompressed(archive) as stream:
        tail = _TailReader(stream)
        try:
            # Stream mode: one sequential pass, whatever the compression.
            bundle = tarfile.open(fileobj=tail, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115
        except _READ_ERRORS as error:
            raise CorruptArchiveError(
                archive, f"not a readable tar archive ({_describe(error)})"
            ) from None
        with bundle:
            while True:
                try:
                    info = bundle.next()
                except _READ_ERRORS as error:
                    raise writer.corrupt(
                        None, f"damaged after {writer.members} members ({_describe(error)})"
                    ) from None
                if info is None:
                    break
                # Stream mode keeps every header in memory; drop them (millions of members).
                bundle.members.clear()
                _tar_member(bundle, info, writer)
            end = tail.block_at(bundle.offset)
        if end is None or end.strip(b"\x00"):
            raise writer.corrupt(
                None,
                f"truncated or damaged after {writer.members} members (no end-of-archive "
                f"block at offset {bundle.offset})",
            )


def _tar_member(bundle: tarfile.TarFile, info: tarfile.TarInfo, writer: _TreeWriter) -> None:
    member = info.name
    writer.count_member(member)
    parts = writer.parts(member, member)
    if info.isdir():
        writer.add_directory(member, parts)
    elif info.issym():
        writer.add_symlink(member, parts, info.linkname)
    elif info.islnk():
        writer.add_hardlink(member, parts, info.linkname)
    elif info.ischr() or info.isblk() or info.isfifo():
        raise writer.unsafe(member, "is a device file or FIFO")
    elif info.isreg():
        writer.declare(member, info.size)
        reader = bundle.extractfile(info)
        if reader is None:
            raise writer.corrupt(member, "has no data")
        with reader:
            writer.add_file(member, parts, reader, info.mode)
    else:
        raise writer.unsafe(member, f"has an unsupported tar member type {info.type!r}")
