"""Method names in tables, evaluation partitions and the app.

The built-ins are ``identity`` and ``classical_chain``; a configured folder of another
method's outputs is ``folder-<name>``. A checkpoint trained by this project is named
after its run and step (``cotir-<variant>-<recipe>-<run>-s<step>``), so a table row says
what it is; one without that record (copied in by hand, the release's files) after its
content hash.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

COTIR_METHOD_PREFIX = "cotir-"
#: Length of the checkpoint hash in a ``cotir-<hash>`` method name.
METHOD_HASH_LENGTH = 12
#: What every method name looks like (a partition key and a folder name).
METHOD_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def cotir_method(checkpoint_hash: str) -> str:
    """The method name of a CoTIR checkpoint: ``cotir-<first 12 hex digits>``."""
    if not re.fullmatch(r"[0-9a-f]{12,}", checkpoint_hash):
        raise ValueError(f"checkpoint hash must be lower-case hex (12+), got {checkpoint_hash!r}")
    return COTIR_METHOD_PREFIX + checkpoint_hash[:METHOD_HASH_LENGTH]


def method_name(prefix: str, text: str, fallback: str) -> str:
    """``prefix + text`` made a method name (lower case, other characters as ``-``), or
    ``fallback`` when nothing usable is left."""
    method = re.sub(r"[^a-z0-9._-]", "-", f"{prefix}{text}".lower())
    return method if METHOD_NAME.match(method) else fallback


def checkpoint_method(marker: Mapping[str, Any], checkpoint_hash: str) -> str:
    """A checkpoint's method name: ``cotir-<variant>-<recipe>-<run>-s<step>`` from its marker.

    The recipe says how it was trained (``paper``: the flow from noise; ``lqflow``: the
    flow from the LQ; a constraint mode other than the paper's is appended). Markers that
    do not name run and step (checkpoints copied in by hand, the release's) fall back to
    ``cotir-<hash12>``.
    """
    run, step, variant = marker.get("run"), marker.get("step"), marker.get("variant")
    if not (isinstance(run, str) and isinstance(step, int) and isinstance(variant, str)):
        return cotir_method(checkpoint_hash)
    recipe = "lqflow" if marker.get("flow_start") == "reference" else "paper"
    mode = marker.get("constraint_mode")
    if isinstance(mode, str) and mode not in ("", "lagrangian"):
        recipe += f"-{mode}"
    name = variant.removeprefix(COTIR_METHOD_PREFIX)
    text = f"{name}-{recipe}-{run}-s{step}"
    return method_name(COTIR_METHOD_PREFIX, text, cotir_method(checkpoint_hash))


#: The input unchanged: every table's floor.
IDENTITY = "identity"
#: One classical tool per named degradation, in label order.
CLASSICAL_CHAIN = "classical_chain"
#: The methods every profile evaluates.
BUILTIN_METHODS: tuple[str, ...] = (IDENTITY, CLASSICAL_CHAIN)
#: Outputs of another method, precomputed into a configured folder: ``folder-<name>``.
FOLDER_METHOD_PREFIX = "folder-"


def folder_method(name: str) -> str:
    """The method name of a configured output folder: ``folder-<name>``."""
    method = FOLDER_METHOD_PREFIX + name
    if not METHOD_NAME.match(method):
        raise ValueError(
            f"output folder name {name!r} must be lower-case letters, digits, '.', '_' or '-'"
        )
    return method


def prompt_matters(method: str) -> bool:
    """Whether a method reads the instruction (built-ins ignore it: identical outputs)."""
    return method not in BUILTIN_METHODS
