"""Torch side of cotir-pipeline: CoT adapter, FLUX backbone wrappers, training, sampling.

Importing this package has no side effects and does not import torch; each
submodule imports what it needs.
"""

from pathlib import Path

#: The repository's root folder (it holds the ``models`` package): trainer subprocesses get
#: it on PYTHONPATH, and paths under it enter run ids relative to it.
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
