"""The object-store contract, run unchanged against a local folder and a real S3 server."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cotir_pipeline.store import ObjectNotFoundError, ObjectStore
from cotir_test_support import MIB


def test_put_get_round_trip_and_overwrite(store: ObjectStore) -> None:
    info = store.put_bytes("a/b/c.bin", b"first")
    assert (info.key, info.size) == ("a/b/c.bin", 5)
    assert store.get_bytes("a/b/c.bin") == b"first"
    store.put_bytes("a/b/c.bin", b"second version")
    assert store.get_bytes("a/b/c.bin") == b"second version"
    assert store.head("a/b/c.bin").size == len(b"second version")


def test_empty_object_and_text(store: ObjectStore) -> None:
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""
    store.put_text("notes/readme.txt", "héllo\n")
    assert store.get_text("notes/readme.txt") == "héllo\n"


def test_missing_objects_raise_not_found(store: ObjectStore) -> None:
    assert not store.exists("nope/missing.json")
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("nope/missing.json")
    with pytest.raises(ObjectNotFoundError):
        store.head("nope/missing.json")
    with pytest.raises(ObjectNotFoundError):
        store.get_range("nope/missing.json", 0, 10)


def test_ranged_get(store: ObjectStore) -> None:
    data = bytes(range(256)) * 4
    store.put_bytes("ranges.bin", data)
    assert store.get_range("ranges.bin", 10, 10) == data[10:20]
    assert store.get_range("ranges.bin", 0, 1) == data[:1]
    assert store.get_range("ranges.bin", 1020, 100) == data[1020:]  # clipped at the end
    assert store.get_range("ranges.bin", 5000, 10) == b""  # past the end
    assert store.get_range("ranges.bin", 3, 0) == b""
    with pytest.raises(ValueError, match="must be >= 0"):
        store.get_range("ranges.bin", -1, 5)


def test_list_by_prefix_is_sorted_and_exact(store: ObjectStore) -> None:
    keys = ["shards/dn/000002.tar", "shards/dn/000001.tar", "shards/dh/000001.tar", "shardsx/a"]
    for key in keys:
        store.put_bytes(key, key.encode())
    listed = [info.key for info in store.list("shards/")]
    assert listed == ["shards/dh/000001.tar", "shards/dn/000001.tar", "shards/dn/000002.tar"]
    assert [info.key for info in store.list("shards/dn/000")] == [
        "shards/dn/000001.tar",
        "shards/dn/000002.tar",
    ]
    assert [info.key for info in store.list("shards")] == [*listed, "shardsx/a"]
    assert [info.size for info in store.list("shardsx/")] == [len(b"shardsx/a")]
    assert list(store.list("nothing-here/")) == []
    assert sorted(info.key for info in store.list()) == sorted(keys)


def test_delete_is_idempotent_and_prefix_delete(store: ObjectStore) -> None:
    store.put_bytes("tmp/one", b"1")
    store.put_bytes("tmp/two", b"2")
    store.put_bytes("keep/three", b"3")
    store.delete("tmp/one")
    store.delete("tmp/one")  # a second delete is not an error
    assert not store.exists("tmp/one")
    assert store.delete_prefix("tmp/") == 1
    assert [info.key for info in store.list()] == ["keep/three"]
    with pytest.raises(ValueError, match="whole store"):
        store.delete_prefix("")


@pytest.mark.parametrize(
    "bad_key",
    ["", "/abs", "trailing/", "a//b", "a/../b", "..", "./a", "a b", "a\\b", ".cotir-partial-x"],
)
def test_unsafe_keys_are_rejected(store: ObjectStore, bad_key: str) -> None:
    with pytest.raises(ValueError, match="object key"):
        store.put_bytes(bad_key, b"x")


def test_large_file_round_trip_uses_parts(store: ObjectStore, tmp_path: Path) -> None:
    # 11 MiB: above the S3 fixture's 5 MiB multipart threshold, so three parts there.
    payload = os.urandom(11 * MIB)
    source = tmp_path / "big.bin"
    source.write_bytes(payload)
    assert store.put_file("big/blob.bin", source).size == len(payload)
    assert store.head("big/blob.bin").size == len(payload)
    destination = tmp_path / "out" / "blob.bin"
    store.download_file("big/blob.bin", destination)
    assert destination.read_bytes() == payload
    assert store.get_range("big/blob.bin", 6 * MIB, 16) == payload[6 * MIB : 6 * MIB + 16]
    # The same through put_bytes.
    store.put_bytes("big/blob2.bin", payload)
    assert store.get_bytes("big/blob2.bin") == payload


def test_put_file_of_missing_source_is_a_clear_error(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a file"):
        store.put_file("x", tmp_path / "absent.bin")


def test_a_moved_file_is_stored_and_gone_and_staging_is_never_listed(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.put_bytes("shards/old.tar", b"kept")
    with store.staging_dir() as staging:
        staged = staging / "000001.tar"
        staged.write_bytes(b"tar bytes")
        # A staged file is not an object yet, whatever the listing prefix.
        assert [info.key for info in store.list()] == ["shards/old.tar"]
        info = store.put_file("shards/000001.tar", staged, move=True)
        assert (info.key, info.size) == ("shards/000001.tar", len(b"tar bytes"))
        assert not staged.exists()
        leftover = staging / "unstored.tar"
        leftover.write_bytes(b"x")
    assert not staging.exists(), "the staging folder is removed with what was left in it"
    assert store.get_bytes("shards/000001.tar") == b"tar bytes"
    assert [info.key for info in store.list()] == ["shards/000001.tar", "shards/old.tar"]
    # A file staged anywhere else is moved too (renamed, or copied and removed).
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"other")
    store.put_file("other.bin", outside, move=True)
    assert store.get_bytes("other.bin") == b"other"
    assert not outside.exists()
    # Without move the source stays.
    outside.write_bytes(b"copy")
    store.put_file("copy.bin", outside)
    assert outside.read_bytes() == b"copy"


def test_readers_never_see_a_partial_object(store: ObjectStore) -> None:
    """While a large object is rewritten, every read returns one complete version."""
    old = b"A" * (6 * MIB)
    new = b"B" * (6 * MIB)
    store.put_bytes("atomic.bin", old)
    seen: set[tuple[int, bytes]] = set()
    stop = threading.Event()

    def read_repeatedly() -> None:
        while not stop.is_set():
            data = store.get_bytes("atomic.bin")
            seen.add((len(data), bytes(set(data))))

    reader = threading.Thread(target=read_repeatedly)
    reader.start()
    try:
        for _ in range(3):
            store.put_bytes("atomic.bin", new)
            store.put_bytes("atomic.bin", old)
    finally:
        stop.set()
        reader.join()
    assert seen <= {(len(old), b"A"), (len(new), b"B")}
    assert seen, "the reader never completed a read"


def test_uri_names_the_object(store: ObjectStore) -> None:
    assert store.uri("a/b.json") == f"{store.url}/a/b.json"
    assert store.url.startswith(("file:///", "s3://"))


def test_check_passes_on_a_usable_store(store: ObjectStore) -> None:
    store.check()
    assert list(store.list()) == []  # the check leaves nothing behind
