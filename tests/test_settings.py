"""Settings: defaults, environment parsing, and one-line errors naming the bad variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cotir_pipeline.settings import Profile, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("COTIR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_demo_profile_and_a_local_store(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.profile is Profile.DEMO
    assert settings.home == tmp_path / ".cotir"
    assert settings.store == (tmp_path / ".cotir" / "store").as_uri()


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COTIR_PROFILE", "full")
    monkeypatch.setenv("COTIR_STORE", "s3://cotir-data/runs/")
    monkeypatch.setenv("COTIR_S3_ENDPOINT_URL", "http://127.0.0.1:7480/")
    monkeypatch.setenv("COTIR_STORE_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("COTIR_VLLM_URLS", "http://10.0.0.5:8000/, http://10.0.0.6:8000")
    monkeypatch.setenv("COTIR_VLLM_MODEL", "Qwen/Qwen2.5-VL-7B-Instruct")
    settings = load_settings()
    assert settings.effective_annotation_backend == "vllm"
    assert settings.vllm_url_list == ("http://10.0.0.5:8000", "http://10.0.0.6:8000")
    assert settings.profile is Profile.FULL
    assert settings.store == "s3://cotir-data/runs"
    assert settings.s3_endpoint_url == "http://127.0.0.1:7480"
    assert settings.store_max_attempts == 3


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.profile = Profile.FULL  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("COTIR_PROFILE", "prod", "COTIR_PROFILE: input should be 'demo' or 'full' (got 'prod')"),
        ("COTIR_STORE", "gs://b/x", "COTIR_STORE: unsupported scheme 'gs'"),
        ("COTIR_STORE", "s3://Bad_Bucket", "COTIR_STORE: 'Bad_Bucket' is not a valid S3 bucket"),
        ("COTIR_STORE", "file://relative/x", "COTIR_STORE: file URL 'file://relative/x' names"),
        ("COTIR_S3_ENDPOINT_URL", "localhost:9000", "COTIR_S3_ENDPOINT_URL: expected http(s)"),
        ("COTIR_STORE_MAX_ATTEMPTS", "zero", "COTIR_STORE_MAX_ATTEMPTS: input should be a valid"),
        ("COTIR_STORE_MULTIPART_PART_MIB", "1", "COTIR_STORE_MULTIPART_PART_MIB: input should be"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_several_bad_values_are_all_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COTIR_PROFILE", "prod")
    monkeypatch.setenv("COTIR_STORE_MAX_ATTEMPTS", "-1")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "COTIR_PROFILE" in str(raised.value)
    assert "COTIR_STORE_MAX_ATTEMPTS" in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "value", "exit_code", "first_words"),
    [
        ("COTIR_PROFILE", "staging", 2, "cotir: bad setting: COTIR_PROFILE:"),
        ("COTIR_STORE", "ftp://host/x", 2, "cotir: bad setting: COTIR_STORE:"),
    ],
)
def test_cli_reports_a_bad_setting_in_one_line(
    variable: str, value: str, exit_code: int, first_words: str, tmp_path: Path
) -> None:
    environment = {**os.environ, variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "cotir_pipeline.cli", "doctor"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == exit_code
    assert result.stderr.startswith(first_words), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_cli_reports_an_unreachable_endpoint_in_one_line(tmp_path: Path) -> None:
    from cotir_test_support import free_port

    environment = {
        **os.environ,
        "COTIR_STORE": "s3://cotir/demo",
        "COTIR_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "any",
        "AWS_SECRET_ACCESS_KEY": "any",
    }
    result = subprocess.run(
        [sys.executable, "-m", "cotir_pipeline.cli", "doctor"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    store_lines = [line for line in result.stdout.splitlines() if " store " in line]
    assert len(store_lines) == 1
    assert "failed" in store_lines[0]
    assert "COTIR_S3_ENDPOINT_URL: cannot reach" in store_lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_weights_dir_must_be_an_existing_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COTIR_WEIGHTS_DIR", str(tmp_path / "absent"))
    with pytest.raises(SettingsError, match=r"^COTIR_WEIGHTS_DIR: .*absent is not a folder"):
        load_settings()


def test_missing_weights_name_the_setting_and_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cotir_pipeline.weights import MissingWeightsError, require_weights

    with pytest.raises(MissingWeightsError, match=r"^COTIR_WEIGHTS_DIR: not set"):
        require_weights(load_settings(), "FLUX.1-Kontext-dev", what="FLUX.1 Kontext backbone")
    (tmp_path / "weights" / "FLUX.1-Kontext-dev").mkdir(parents=True)
    monkeypatch.setenv("COTIR_WEIGHTS_DIR", str(tmp_path / "weights"))
    settings = load_settings()
    found = require_weights(settings, "FLUX.1-Kontext-dev", what="FLUX.1 Kontext backbone")
    assert found == tmp_path / "weights" / "FLUX.1-Kontext-dev"
    expected = str(tmp_path / "weights" / "CoTIR" / "lora.pt")
    with pytest.raises(MissingWeightsError, match=re.escape(expected)):
        require_weights(settings, "CoTIR/lora.pt", what="CoTIR LoRA")


def test_the_full_profile_needs_vllm_servers_unless_templates_are_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COTIR_PROFILE", "full")
    with pytest.raises(SettingsError, match=r"^COTIR_VLLM_URLS: the vllm annotation backend"):
        load_settings()
    monkeypatch.setenv("COTIR_VLLM_URLS", "ftp://nope")
    with pytest.raises(SettingsError, match=r"^COTIR_VLLM_URLS: 'ftp://nope' is not an http"):
        load_settings()
    monkeypatch.setenv("COTIR_ANNOTATION_BACKEND", "template")
    assert load_settings().effective_annotation_backend == "template"


def test_clip_model_and_checkpoint_come_together(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COTIR_CLIP_MODEL", "ViT-L-14")
    with pytest.raises(SettingsError, match=r"^COTIR_CLIP_CHECKPOINT: set both"):
        load_settings()
    monkeypatch.setenv("COTIR_CLIP_CHECKPOINT", str(tmp_path / "missing.pt"))
    with pytest.raises(SettingsError, match=r"missing\.pt is not a file"):
        load_settings()
    (tmp_path / "clip.pt").write_bytes(b"weights")
    monkeypatch.setenv("COTIR_CLIP_CHECKPOINT", str(tmp_path / "clip.pt"))
    assert load_settings().clip_checkpoint == tmp_path / "clip.pt"
