"""One store config from the settings to every client: the resource, the CLI and the trainer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from assets.resources import ObjectStoreResource
from assets.training.resource import subprocess_env
from cotir_pipeline.settings import CotirSettings
from cotir_pipeline.store import (
    LocalObjectStore,
    S3ObjectStore,
    StoreConfig,
    inherited_store_config,
    open_store,
)
from cotir_pipeline.store.config import STORE_CONFIG_VARIABLE

TUNED = StoreConfig(
    url="s3://bucket/runs",
    s3_endpoint_url="http://127.0.0.1:7480",
    s3_region="eu-west-1",
    s3_addressing_style="virtual",
    max_attempts=3,
    connect_timeout_s=2.5,
    read_timeout_s=7.0,
    retry_budget_s=0.0,
    multipart_threshold_mib=8,
    multipart_part_mib=5,
)


def test_opening_the_store_ignores_unrelated_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vLLM backend with no server URLs is the annotation stage's problem, not the store's."""
    resource = ObjectStoreResource(url=(tmp_path / "store").as_uri())
    monkeypatch.setenv("COTIR_ANNOTATION_BACKEND", "vllm")
    monkeypatch.delenv("COTIR_VLLM_URLS", raising=False)
    store = resource.open()
    assert isinstance(store, LocalObjectStore)
    store.put_text("probe.txt", "ok")
    assert store.get_text("probe.txt") == "ok"


def test_every_client_setting_reaches_the_s3_client(tmp_path: Path) -> None:
    settings = CotirSettings(
        home=tmp_path,
        store="s3://bucket/runs",
        s3_endpoint_url="http://127.0.0.1:7480",
        store_connect_timeout_s=2.5,
        store_read_timeout_s=7.0,
        store_max_attempts=3,
    )
    config = StoreConfig.from_settings(settings)
    resource = ObjectStoreResource.from_settings(settings)
    assert resource.config() == config
    store = open_store(config)
    assert isinstance(store, S3ObjectStore)
    assert (store.connect_timeout_s, store.read_timeout_s, store.max_attempts) == (2.5, 7.0, 3)
    assert store.endpoint_url == "http://127.0.0.1:7480"


def test_the_trainer_subprocess_receives_the_whole_config() -> None:
    resource = ObjectStoreResource(**dataclasses.asdict(TUNED))
    env = subprocess_env(resource)
    assert STORE_CONFIG_VARIABLE in env
    handed_down = inherited_store_config("s3://bucket/runs/checkpoints/demo/r1", env)
    assert handed_down == dataclasses.replace(TUNED, url="s3://bucket/runs/checkpoints/demo/r1")


def test_a_hand_started_trainer_reads_the_usual_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COTIR_STORE_READ_TIMEOUT_S", "9")
    config = inherited_store_config("s3://bucket/x", {})
    assert config.url == "s3://bucket/x"
    assert config.read_timeout_s == 9.0


def test_a_damaged_handed_down_config_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=STORE_CONFIG_VARIABLE):
        inherited_store_config("s3://b/x", {STORE_CONFIG_VARIABLE: '{"url": "s3://b", "x": 1}'})
