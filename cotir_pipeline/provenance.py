"""What produced a result: code version, package versions, settings.

Every table row and manifest downstream records this, so a number can always
be traced back to the exact code and configuration that made it.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from cotir_pipeline import __version__

#: Distributions whose versions change results (models, metrics, codecs, orchestration).
TRACKED_DISTRIBUTIONS: tuple[str, ...] = (
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "pyiqa",
    "open_clip_torch",
    "webdataset",
    "pyarrow",
    "numpy",
    "Pillow",
    "boto3",
    "dagster",
)


@dataclass(frozen=True)
class Provenance:
    """A snapshot of the code and environment behind a run."""

    project_version: str
    git_commit: str | None
    git_dirty: bool | None
    python: str
    platform: str
    packages: dict[str, str | None] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def package_versions(names: tuple[str, ...] = TRACKED_DISTRIBUTIONS) -> dict[str, str | None]:
    """Installed version of each distribution, or None when it is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(directory: Path) -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the checkout holding ``directory``, if any."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def collect_provenance(settings: dict[str, Any] | None = None) -> Provenance:
    """Gather the provenance of the current process (cheap: no torch import)."""
    commit, dirty = git_state(Path(__file__).resolve().parent)
    return Provenance(
        project_version=__version__,
        git_commit=commit,
        git_dirty=dirty,
        python=platform.python_version(),
        platform=platform.platform(),
        packages=package_versions(),
        settings=dict(settings or {}),
    )
