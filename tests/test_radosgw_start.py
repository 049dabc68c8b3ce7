"""Start-up checks of the dev Ceph cluster that need no running daemon."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

from cotir_pipeline.devservices import radosgw
from cotir_pipeline.devservices.radosgw import LocalRadosGateway, missing_ceph_binaries
from cotir_test_support import MIB, skip_or_fail


class _Usage(NamedTuple):
    total: int
    used: int
    free: int


def test_a_nearly_full_disk_is_named_before_any_daemon_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CI run on a full disk fails with the free space, not with a monitor's exit 28."""
    missing = missing_ceph_binaries()
    if missing:
        skip_or_fail(f"Ceph binaries not found: {', '.join(missing)}")
    real_disk_usage = shutil.disk_usage

    def nearly_full(path: str | Path) -> _Usage:
        real = real_disk_usage(path)
        return _Usage(real.total, real.total - 100 * MIB, 100 * MIB)

    monkeypatch.setattr(radosgw.shutil, "disk_usage", nearly_full)
    gateway = LocalRadosGateway(tmp_path / "ceph")
    with pytest.raises(RuntimeError, match=r"check free disk.*100 MiB free.*needs 1024 MiB"):
        gateway.start()
    assert not any((tmp_path / "ceph" / "mon").iterdir()), "no monitor store may be created"
    assert not (tmp_path / "ceph" / "osd.block").exists(), "no 10 GiB sparse block file either"
