"""Local-folder specifics: crash safety of atomic writes and the location parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from cotir_pipeline.store import LocalObjectStore, StoreUnavailableError, parse_store_url
from cotir_pipeline.store.local import write_atomically


def test_interrupted_write_keeps_the_old_object_and_leaves_no_debris(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put_bytes("data/item.bin", b"old")

    def write_then_crash(handle: object) -> None:
        handle.write(b"half of the new ")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "data" / "item.bin", write_then_crash)
    assert store.get_bytes("data/item.bin") == b"old"
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["item.bin"]


def test_temporary_files_are_never_listed(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put_bytes("a/real", b"1")
    (tmp_path / "a" / ".cotir-partial-123-real").write_bytes(b"in flight")
    assert [info.key for info in store.list()] == ["a/real"]


def test_delete_prunes_empty_folders_but_not_the_root(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "root")
    store.put_bytes("x/y/z", b"1")
    store.delete("x/y/z")
    assert (tmp_path / "root").is_dir()
    assert list((tmp_path / "root").iterdir()) == []


def test_unwritable_root_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreUnavailableError, match=r"^COTIR_STORE: cannot write to"):
        LocalObjectStore(blocker / "store").check()


@pytest.mark.parametrize(
    ("url", "kind", "normalized"),
    [
        ("s3://bucket", "s3", "s3://bucket"),
        ("s3://my.bucket-1/a/b/", "s3", "s3://my.bucket-1/a/b"),
        ("file:///data/cotir", "file", "file:///data/cotir"),
        ("file://localhost/data/x", "file", "file:///data/x"),
        ("/data/../data/cotir", "file", "file:///data/cotir"),
    ],
)
def test_store_urls_parse_and_normalize(url: str, kind: str, normalized: str) -> None:
    location = parse_store_url(url)
    assert (location.kind, location.url) == (kind, normalized)


def test_relative_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_store_url("out/store").path == tmp_path / "out" / "store"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty store URL"),
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("s3://", "has no bucket"),
        ("s3://UPPER/x", "not a valid S3 bucket name"),
        ("s3://ab", "not a valid S3 bucket name"),
        ("s3://192.168.0.1/x", "not a valid S3 bucket name"),
        ("s3://bucket/a//b", "empty, '.' or '..'"),
        ("s3://bucket/x?versionId=1", "query"),
        ("file://host/path", "names a host"),
    ],
)
def test_malformed_store_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        parse_store_url(url)
