"""Store <-> folder copies (``cotir_pipeline.store.sync``), on a local folder and on radosgw."""

from __future__ import annotations

from pathlib import Path

import pytest

from cotir_pipeline.store import ObjectStore
from cotir_pipeline.store.sync import local_files, pull, push, stored_sizes


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in local_files(folder).items()}


def test_pull_copies_what_differs_and_mirrors_only_included_files(
    store: ObjectStore, tmp_path: Path
) -> None:
    store.put_bytes("run/a.png", b"aaaa")
    store.put_bytes("run/sub/b.png", b"bb")
    store.put_bytes("run/record.json", b"{}")
    store.put_bytes("runner/other.png", b"not under run/")
    folder = tmp_path / "cache"
    _write(folder / "a.png", b"AAAA")  # same size: kept under refresh="size"
    _write(folder / "stale.png", b"gone from the store")
    _write(folder / "record.json", b"local record, excluded")
    _write(folder / ".tmp-upload", b"hidden temporary file")

    report = pull(
        store,
        "run",
        folder,
        include=lambda name: name != "record.json",
        remove_extra=True,
    )

    assert (report.copied, report.unchanged, report.removed) == (1, 1, 1)
    assert _folder_bytes(folder) == {
        "a.png": b"AAAA",
        "sub/b.png": b"bb",
        "record.json": b"local record, excluded",
    }
    assert (folder / ".tmp-upload").is_file()


def test_pull_refresh_modes(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("p/x.bin", b"stored, longer")
    folder = tmp_path / "f"
    _write(folder / "x.bin", b"local")

    assert pull(store, "p", folder, refresh="missing").unchanged == 1
    assert (folder / "x.bin").read_bytes() == b"local"
    assert pull(store, "p", folder, refresh="size").copied == 1
    assert (folder / "x.bin").read_bytes() == b"stored, longer"
    _write(folder / "x.bin", b"same size, edit")
    assert pull(store, "p", folder, refresh="always").copied == 1
    assert (folder / "x.bin").read_bytes() == b"stored, longer"


def test_push_uploads_changes_and_removes_stale_objects(store: ObjectStore, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    _write(folder / "table.md", b"| a |")
    _write(folder / "grid/one.png", b"png")
    store.put_bytes("tables/table.md", b"| b |")  # same size, other bytes
    store.put_bytes("tables/old.md", b"from an earlier run")
    store.put_bytes("tables/keep.json", b"excluded from the sync")

    def included(name: str) -> bool:
        return name != "keep.json"

    sized = push(store, folder, "tables", refresh="size", include=included)
    assert (sized.copied, sized.unchanged, sized.removed) == (1, 1, 0)
    assert store.get_bytes("tables/table.md") == b"| b |"

    report = push(store, folder, "tables", refresh="always", include=included, remove_stale=True)
    assert (report.copied, report.removed) == (2, 1)
    assert stored_sizes(store, "tables") == {"table.md": 5, "grid/one.png": 3, "keep.json": 22}
    assert store.get_bytes("tables/table.md") == b"| a |"


def test_completion_markers_travel_last(
    store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "step-0000010"
    for name in ("DONE", "model/weights.safetensors", "a.json", "z.json"):
        _write(folder / name, name.encode())
    order: list[str] = []
    put_file, download_file = store.put_file, store.download_file

    def put_spy(key: str, path: Path, **kwargs: object) -> object:
        order.append(key)
        return put_file(key, path, **kwargs)

    def download_spy(key: str, destination: Path) -> object:
        order.append(key)
        return download_file(key, destination)

    monkeypatch.setattr(store, "put_file", put_spy)
    monkeypatch.setattr(store, "download_file", download_spy)

    push(store, folder, "ckpt/step-0000010", refresh="always", last=("DONE",))
    assert order[-1] == "ckpt/step-0000010/DONE"
    assert len(order) == 4
    order.clear()
    pull(store, "ckpt/step-0000010", tmp_path / "copy", refresh="always", last=("DONE",))
    assert order[-1] == "ckpt/step-0000010/DONE"
    assert len(order) == 4
    assert _folder_bytes(tmp_path / "copy") == _folder_bytes(folder)
