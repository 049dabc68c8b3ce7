"""The Celery worker's start-up config: written where it can be found, never leaked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from assets import celery_worker


def test_workers_share_one_config_file_under_dagster_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each start used to leave a temp dir behind; now a restart reuses the same file."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("COTIR_CELERY_BROKER_URL", "redis://127.0.0.1:6399/0")
    started: list[list[str]] = []
    monkeypatch.setattr(celery_worker.os, "execv", lambda _exe, argv: started.append(argv))

    celery_worker.main(["--queue", "cpu", "--name", "cpu-1"])
    celery_worker.main(["--queue", "gpu", "--name", "gpu-1"])

    config_paths = [Path(argv[argv.index("-y") + 1]) for argv in started]
    assert config_paths[0] == config_paths[1]
    assert config_paths[0].parent == home / "celery"
    assert [p.name for p in (home / "celery").iterdir()] == [config_paths[0].name]
    config = yaml.safe_load(config_paths[0].read_text())
    assert config["execution"]["celery"]["broker"] == "redis://127.0.0.1:6399/0"
    assert [argv[argv.index("-q") + 1] for argv in started] == ["cpu", "gpu"]


def test_other_settings_get_their_own_file(tmp_path: Path) -> None:
    """Two worker pools with different brokers on one instance never read each other's file."""
    first = celery_worker.write_worker_config("broker: a\n", tmp_path)
    second = celery_worker.write_worker_config("broker: b\n", tmp_path)
    assert first != second
    assert first.read_text() == "broker: a\n"
    assert second.read_text() == "broker: b\n"
    assert celery_worker.write_worker_config("broker: a\n", tmp_path) == first
