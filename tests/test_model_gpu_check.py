"""scripts/gpu_check.py: refuses without CUDA; its measuring path runs on the CPU demo variant."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import ModuleType

import pytest

from cotir_test_support import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_clearly_without_a_cuda_device() -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 2, completed.stderr
    assert "no CUDA device" in completed.stderr


def test_full_size_variants_are_refused_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load().main(["--variant", "cotir-4b", "--device", "cpu"]) == 2
    assert "need a CUDA device" in capsys.readouterr().err


def test_measures_the_demo_variant_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    code = _load().main(
        [
            "--variant",
            "tiny",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--size",
            "32",
            "--runs",
            "1",
            "--steps",
            "2",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["variant"] == "tiny"
    assert result["steps"] == 2
    assert result["latency_s_median"] > 0
    assert result["step_s_median"] > 0
    assert result["peak_memory_gib"] is None
