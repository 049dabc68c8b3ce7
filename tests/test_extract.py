"""Safe, atomic archive extraction: hostile members, bombs, corruption, crash safety."""

from __future__ import annotations

import io
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from cotir_pipeline.sources import extract
from cotir_pipeline.sources.extract import (
    MARKER_NAME,
    PARTIAL_INFIX,
    CorruptArchiveError,
    UnsafeArchiveError,
    UnsupportedArchiveError,
    archive_kind,
    archive_stem,
    extract_archive,
)

LIMIT = 10 * 1024 * 1024


# -- archive builders --------------------------------------------------------------------


def write_zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries:
            bundle.writestr(name, data)
    return path


def zip_symlink(path: Path, name: str, target: str) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(info, target)
    return path


def tar_entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, io.BytesIO | None]]) -> Path:
    mode = {".gz": "w:gz", ".bz2": "w:bz2", ".xz": "w:xz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as bundle:
        for info, data in entries:
            bundle.addfile(info, data)
    return path


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink() and path.name != MARKER_NAME
    }


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """A work folder with a sibling 'outside' folder that must stay empty."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "work").mkdir()
    return tmp_path


def assert_nothing_left(area: Path, destination: Path) -> None:
    assert not destination.exists(), "a failed extraction left the destination behind"
    partials = [p.name for p in destination.parent.iterdir() if PARTIAL_INFIX in p.name]
    assert partials == [], f"temporary folders left behind: {partials}"
    assert list((area / "outside").iterdir()) == [], "something was written outside"
    assert list(area.rglob("evil*")) == [], "an escaping member was written somewhere"


# -- good archives -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"])
def test_each_format_extracts_with_marker(area: Path, suffix: str) -> None:
    entries = [("./train/a.png", b"A" * 1000), ("train/sub/b.png", b"B" * 3), ("c.txt", b"")]
    archive = area / f"data{suffix}"
    if suffix == ".zip":
        write_zip(archive, entries)
    else:
        archive = write_tar(area / f"data{suffix}", [tar_entry(n, d) for n, d in entries])
        if suffix == ".tgz":  # same bytes as .tar.gz, other suffix
            archive = archive.rename(area / "data.tgz")
    destination = area / "work" / "data"

    report = extract_archive(archive, destination, max_total_bytes=LIMIT)

    assert files_under(destination) == {
        "train/a.png": b"A" * 1000,
        "train/sub/b.png": b"B" * 3,
        "c.txt": b"",
    }
    assert (destination / MARKER_NAME).is_file()
    assert (report.files, report.total_bytes, report.already_done) == (3, 1003, False)


def test_rerun_over_finished_destination_is_a_noop(
    area: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = write_zip(area / "d.zip", [("x.txt", b"x")])
    destination = area / "work" / "d"
    extract_archive(archive, destination, max_total_bytes=LIMIT)
    marker_before = (destination / MARKER_NAME).stat().st_mtime_ns

    def must_not_run(*args: object) -> None:
        raise AssertionError("a finished destination was extracted again")

    monkeypatch.setattr(extract, "_extract_zip", must_not_run)
    report = extract_archive(archive, destination, max_total_bytes=LIMIT)

    assert report.already_done
    assert report.files == 1
    assert report.total_bytes == 1
    assert (destination / MARKER_NAME).stat().st_mtime_ns == marker_before


def test_changed_archive_is_extracted_again(area: Path) -> None:
    archive = write_zip(area / "d.zip", [("old.txt", b"old")])
    destination = area / "work" / "d"
    extract_archive(archive, destination, max_total_bytes=LIMIT, archive_sha256="a" * 64)
    write_zip(archive, [("new.txt", b"new")])

    report = extract_archive(archive, destination, max_total_bytes=LIMIT, archive_sha256="b" * 64)

    assert not report.already_done
    assert files_under(destination) == {"new.txt": b"new"}
    assert [p.name for p in (area / "work").iterdir()] == ["d"]


def test_crash_before_the_end_leaves_nothing_that_looks_finished(
    area: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = write_zip(area / "d.zip", [("a.txt", b"a"), ("b.txt", b"b")])
    destination = area / "work" / "d"

    def crash(self: object) -> None:
        raise KeyboardInterrupt  # e.g. the process is stopped while extracting

    monkeypatch.setattr(extract._TreeWriter, "finish", crash)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, destination, max_total_bytes=LIMIT)
    assert_nothing_left(area, destination)

    monkeypatch.undo()
    report = extract_archive(archive, destination, max_total_bytes=LIMIT)
    assert not report.already_done
    assert files_under(destination) == {"a.txt": b"a", "b.txt": b"b"}


def test_symlinks_and_hardlinks_inside_the_destination_are_kept(area: Path) -> None:
    archive = write_tar(
        area / "l.tar",
        [
            tar_entry("data/a.txt", b"payload"),
            tar_entry("data/link", kind=tarfile.SYMTYPE, link="a.txt"),
            tar_entry("top", kind=tarfile.SYMTYPE, link="data/../data"),
            tar_entry("copy.txt", kind=tarfile.LNKTYPE, link="data/a.txt"),
        ],
    )
    destination = area / "work" / "l"
    extract_archive(archive, destination, max_total_bytes=LIMIT)
    assert (destination / "data" / "link").is_symlink()
    assert (destination / "data" / "link").read_bytes() == b"payload"
    assert (destination / "top" / "a.txt").read_bytes() == b"payload"
    assert (destination / "copy.txt").read_bytes() == b"payload"


def test_a_foreign_folder_at_the_destination_is_not_overwritten(area: Path) -> None:
    archive = write_zip(area / "d.zip", [("a.txt", b"a")])
    destination = area / "work" / "d"
    destination.mkdir()
    (destination / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not made by extract_archive"):
        extract_archive(archive, destination, max_total_bytes=LIMIT)
    assert (destination / "precious.txt").read_text() == "keep me"


def test_archive_names() -> None:
    assert archive_kind("x.TAR.GZ") == "tar"
    assert archive_kind("x.zip") == "zip"
    assert archive_kind("x.png") is None
    assert archive_kind(".zip") is None
    assert archive_stem("Rain100L.tar.gz") == "Rain100L"
    assert archive_stem("a.b.tbz2") == "a.b"
    assert archive_stem("x.zip") == "x"


# -- hostile archives --------------------------------------------------------------------


def hostile_tar(area: Path, case: str) -> Path:
    outside = area / "outside"
    entries = {
        "traversal": [tar_entry("ok.txt", b"ok"), tar_entry("../evil.txt", b"x")],
        "nested_traversal": [tar_entry("a/b/../../../evil.txt", b"x")],
        "absolute": [tar_entry(str(outside / "evil.txt"), b"x")],
        "symlink_escape": [
            tar_entry("link", kind=tarfile.SYMTYPE, link="../../outside"),
            tar_entry("link/evil.txt", b"x"),
        ],
        "symlink_absolute": [tar_entry("link", kind=tarfile.SYMTYPE, link=str(outside))],
        # Each link looks harmless on its own; together 'up' resolves above the root.
        "symlink_chain": [
            tar_entry("here", kind=tarfile.SYMTYPE, link="."),
            tar_entry("up", kind=tarfile.SYMTYPE, link="here/.."),
        ],
        "hardlink_escape": [tar_entry("evil", kind=tarfile.LNKTYPE, link="../outside/x")],
        "hardlink_absolute": [tar_entry("evil", kind=tarfile.LNKTYPE, link="/etc/passwd")],
        "char_device": [tar_entry("evil_dev", kind=tarfile.CHRTYPE)],
        "block_device": [tar_entry("evil_dev", kind=tarfile.BLKTYPE)],
        "fifo": [tar_entry("evil_fifo", kind=tarfile.FIFOTYPE)],
    }[case]
    return write_tar(area / f"{case}.tar.gz", entries)


@pytest.mark.parametrize(
    ("case", "member", "reason"),
    [
        ("traversal", "../evil.txt", "'..'"),
        ("nested_traversal", "a/b/../../../evil.txt", "'..'"),
        ("absolute", None, "absolute path"),
        ("symlink_escape", "link", "leaves the destination"),
        ("symlink_absolute", "link", "absolute path"),
        ("symlink_chain", "up", "resolves outside"),
        ("hardlink_escape", "evil", "'..'"),
        ("hardlink_absolute", "evil", "absolute path"),
        ("char_device", "evil_dev", "device"),
        ("block_device", "evil_dev", "device"),
        ("fifo", "evil_fifo", "FIFO"),
    ],
)
def test_hostile_tar_members_are_refused(
    area: Path, case: str, member: str | None, reason: str
) -> None:
    archive = hostile_tar(area, case)
    destination = area / "work" / "dest"
    with pytest.raises(UnsafeArchiveError, match=reason) as caught:
        extract_archive(archive, destination, max_total_bytes=LIMIT)
    message = str(caught.value)
    assert str(archive) in message
    assert caught.value.member is not None
    if member is not None:
        assert repr(member) in message
    assert_nothing_left(area, destination)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("../evil.txt", "'..'"), ("/evil.txt", "absolute path"), ("..\\evil.txt", "'..'")],
)
def test_hostile_zip_member_names_are_refused(area: Path, name: str, reason: str) -> None:
    archive = write_zip(area / "z.zip", [("fine.txt", b"ok"), (name, b"x")])
    destination = area / "work" / "z"
    with pytest.raises(UnsafeArchiveError, match=reason) as caught:
        extract_archive(archive, destination, max_total_bytes=LIMIT)
    assert str(archive) in str(caught.value)
    assert repr(name) in str(caught.value)
    assert_nothing_left(area, destination)


@pytest.mark.parametrize("target", ["../../outside", "/etc"])
def test_escaping_zip_symlink_is_refused(area: Path, target: str) -> None:
    archive = zip_symlink(area / "s.zip", "evil_link", target)
    destination = area / "work" / "s"
    with pytest.raises(UnsafeArchiveError, match="evil_link"):
        extract_archive(archive, destination, max_total_bytes=LIMIT)
    assert_nothing_left(area, destination)


def test_zip_symlink_inside_is_created(area: Path) -> None:
    archive = zip_symlink(area / "s.zip", "alias.txt", "ok.txt")
    destination = area / "work" / "s"
    extract_archive(archive, destination, max_total_bytes=LIMIT)
    assert (destination / "alias.txt").is_symlink()
    assert (destination / "alias.txt").read_bytes() == b"fine"


def test_zip_device_member_is_refused(area: Path) -> None:
    archive = area / "d.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        info = zipfile.ZipInfo("evil_fifo")
        info.create_system = 3
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        bundle.writestr(info, b"")
    with pytest.raises(UnsafeArchiveError, match="FIFO"):
        extract_archive(archive, area / "work" / "d", max_total_bytes=LIMIT)
    assert_nothing_left(area, area / "work" / "d")


# -- size and member limits --------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_bomb_over_the_byte_budget_is_refused(area: Path, suffix: str) -> None:
    bomb = b"\x00" * (8 * 1024 * 1024)  # compresses to a few KiB
    if suffix == ".zip":
        archive = write_zip(area / "bomb.zip", [("small.txt", b"s"), ("evil_zeros.bin", bomb)])
    else:
        archive = write_tar(
            area / "bomb.tar.gz", [tar_entry("small.txt", b"s"), tar_entry("evil_zeros.bin", bomb)]
        )
    assert archive.stat().st_size < 100_000
    destination = area / "work" / "bomb"
    with pytest.raises(UnsafeArchiveError, match=r"evil_zeros\.bin.*over the limit of 1048576"):
        extract_archive(archive, destination, max_total_bytes=1024 * 1024)
    assert_nothing_left(area, destination)


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_bytes_actually_written_are_counted_when_headers_understate(
    area: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers can lie: with the header check disabled, the write counter still stops it."""
    monkeypatch.setattr(extract, "_declared_limit_exceeded", lambda declared, limit: False)
    bomb = b"\x00" * (4 * 1024 * 1024)
    if suffix == ".zip":
        archive = write_zip(area / "bomb.zip", [("evil_zeros.bin", bomb)])
    else:
        archive = write_tar(area / "bomb.tar.gz", [tar_entry("evil_zeros.bin", bomb)])
    destination = area / "work" / "bomb"
    with pytest.raises(UnsafeArchiveError, match="while extracting"):
        extract_archive(archive, destination, max_total_bytes=1024 * 1024)
    assert_nothing_left(area, destination)


@pytest.mark.parametrize("suffix", [".zip", ".tar"])
def test_too_many_members_are_refused(area: Path, suffix: str) -> None:
    entries = [(f"f{i}.txt", b"") for i in range(5)]
    if suffix == ".zip":
        archive = write_zip(area / "many.zip", entries)
    else:
        archive = write_tar(area / "many.tar", [tar_entry(n, d) for n, d in entries])
    with pytest.raises(UnsafeArchiveError, match="limit of 4 members"):
        extract_archive(archive, area / "work" / "m", max_total_bytes=LIMIT, max_members=4)
    extract_archive(archive, area / "work" / "m", max_total_bytes=LIMIT, max_members=5)


# -- corrupt and unknown archives --------------------------------------------------------


def test_truncated_tar_gz_is_corrupt(area: Path) -> None:
    good = write_tar(area / "g.tar.gz", [tar_entry("a.bin", bytes(range(256)) * 400)])
    data = good.read_bytes()
    archive = area / "cut.tar.gz"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptArchiveError, match=r"cut\.tar\.gz"):
        extract_archive(archive, area / "work" / "cut", max_total_bytes=LIMIT)
    assert_nothing_left(area, area / "work" / "cut")


def test_tar_cut_at_a_member_boundary_is_corrupt(area: Path) -> None:
    """Tar readers stop silently at a missing header; the end-of-archive block must be seen."""
    good = write_tar(area / "g.tar", [tar_entry("a.txt", b"a" * 600), tar_entry("b.txt", b"b")])
    archive = area / "cut.tar"
    archive.write_bytes(good.read_bytes()[:1536])  # header + two data blocks of a.txt
    with pytest.raises(CorruptArchiveError, match="end-of-archive"):
        extract_archive(archive, area / "work" / "cut", max_total_bytes=LIMIT)
    assert_nothing_left(area, area / "work" / "cut")


def test_zip_with_a_damaged_member_is_corrupt(area: Path) -> None:
    archive = area / "bad.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as bundle:
        bundle.writestr("a.txt", b"A" * 5000)
    data = bytearray(archive.read_bytes())
    data[100:110] = b"Z" * 10  # inside a.txt's stored data: the CRC no longer matches
    archive.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match=r"'a\.txt'") as caught:
        extract_archive(archive, area / "work" / "bad", max_total_bytes=LIMIT)
    assert str(archive) in str(caught.value)
    assert_nothing_left(area, area / "work" / "bad")


@pytest.mark.parametrize("name", ["junk.zip", "junk.tar", "junk.tar.gz", "empty.tar.xz"])
def test_not_an_archive_is_corrupt(area: Path, name: str) -> None:
    archive = area / name
    archive.write_bytes(b"" if name.startswith("empty") else b"<html>not found</html>" * 50)
    with pytest.raises(CorruptArchiveError, match=re.escape(name)):
        extract_archive(archive, area / "work" / "j", max_total_bytes=LIMIT)
    assert_nothing_left(area, area / "work" / "j")


def test_unknown_type_is_a_clear_error(area: Path) -> None:
    archive = area / "data.rar"
    archive.write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(UnsupportedArchiveError, match=r"data\.rar.*unknown archive type.*\.zip"):
        extract_archive(archive, area / "work" / "r", max_total_bytes=LIMIT)
    assert not (area / "work" / "r").exists()


def test_bad_limits_are_rejected(area: Path) -> None:
    archive = write_zip(area / "d.zip", [("a", b"a")])
    with pytest.raises(ValueError, match="max_members"):
        extract_archive(archive, area / "work" / "d", max_total_bytes=LIMIT, max_members=0)
