"""The layering of docs/ARCHITECTURE.md holds, and importing any module has no side effects."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cotir_test_support import REPO_ROOT

# package -> top-level packages it must never import
FORBIDDEN_IMPORTS = {
    "cotir_pipeline": {"assets", "models", "cotir_app", "dagster"},
    "models": {"assets", "cotir_app", "dagster"},
    # The restoration app sits on the libraries, beside the Dagster layer.
    "cotir_app": {"assets", "dagster"},
    "assets": {"cotir_app"},
}


def _python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_imports_point_down_only(package: str) -> None:
    files = _python_files(package)
    assert files, f"no modules found under {package}/"
    violations = {
        str(path.relative_to(REPO_ROOT)): sorted(
            _imported_top_levels(path) & FORBIDDEN_IMPORTS[package]
        )
        for path in files
    }
    assert {name: bad for name, bad in violations.items() if bad} == {}


def _module_names() -> list[str]:
    names = []
    for package in ("cotir_pipeline", "models", "assets", "cotir_app"):
        for path in _python_files(package):
            relative = path.relative_to(REPO_ROOT).with_suffix("")
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            names.append(".".join(parts))
    return names


def test_importing_every_module_has_no_side_effects(tmp_path: Path) -> None:
    """Import all modules in a fresh interpreter: nothing is written, no thread is left running."""
    modules = _module_names()
    script = (
        "import importlib, threading\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "extra = [t.name for t in threading.enumerate() if t is not threading.main_thread()]\n"
        "print('threads:', extra)\n"
    )
    environment = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONDONTWRITEBYTECODE": "1"}
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path / "cwd",
        env={**environment, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "threads: []" in result.stdout
    assert list((tmp_path / "cwd").iterdir()) == [], "importing wrote into the working directory"
    created = [path for path in (tmp_path / "home").rglob("*") if path.is_file()]
    assert created == [], f"importing wrote files under HOME: {created[:5]}"


def test_library_alone_does_not_pull_in_dagster(tmp_path: Path) -> None:
    library_modules = [name for name in _module_names() if name.startswith("cotir_pipeline")]
    script = (
        "import importlib, sys\n"
        f"for name in {library_modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted({'dagster', 'assets', 'models'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
