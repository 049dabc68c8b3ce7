"""Hide installed packages the model code never uses while that code loads.

Libraries probe for optional packages when they are imported and import them when they
find them. Two cost the restore path without serving it:

- peft imports bitsandbytes (a dependency of pyiqa) for 4/8-bit layers. That pulls in
  torch's inductor, and on CPUs with AVX512-BF16 bitsandbytes also asks the Hugging Face
  hub for a kernel at import and logs a warning when it cannot reach it.
- diffusers imports scipy.stats for optional scheduler sigmas; the restore path samples
  with its own Euler loop.

Together about two seconds of every cold process on 2 cores. This module is torch-free,
so every loader (``cotir restore``, ``cotir bench --method cotir:DIR``, the evaluation
asset, the app) can wrap its model import in :func:`without_unused_imports`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

#: Installed packages the model code never uses; hidden only while it loads.
UNUSED_OPTIONAL_IMPORTS = ("bitsandbytes", "scipy")
#: The libraries that probe for those packages: once one is imported it may already have
#: decided they are there (and will import them), so nothing is hidden any more.
PROBING_LIBRARIES = ("diffusers", "peft", "transformers")


def modules_to_hide() -> tuple[str, ...]:
    """:data:`UNUSED_OPTIONAL_IMPORTS` in a fresh process; nothing once a prober is loaded."""
    if any(name in sys.modules for name in PROBING_LIBRARIES):
        return ()
    return UNUSED_OPTIONAL_IMPORTS


@contextlib.contextmanager
def hidden_modules(names: tuple[str, ...] = UNUSED_OPTIONAL_IMPORTS) -> Iterator[None]:
    """Make ``names`` look uninstalled inside the block, then importable again.

    A ``None`` entry in ``sys.modules`` makes ``importlib.util.find_spec`` report the
    package missing, so libraries that probe for it skip it. Names already imported are
    left alone; the entries are removed on exit, so later imports in the process work.
    """
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


@contextlib.contextmanager
def without_unused_imports() -> Iterator[None]:
    """Load the model code with :data:`UNUSED_OPTIONAL_IMPORTS` hidden, where that is safe."""
    with hidden_modules(modules_to_hide()):
        yield
