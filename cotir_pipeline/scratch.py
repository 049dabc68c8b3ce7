"""Scratch files that name the process that owns them, so a killed process's leftovers can
be told from a running one's and removed by the next run.

A process killed with SIGKILL cannot clean up: its temporary folders stay in TMPDIR and
its half-written files stay in a local store under their hidden partial names. Every such
name made here carries an owner tag, ``<host>_<pid>``; :func:`owner_is_gone` says whether
that process has ended on this machine, and :func:`remove_abandoned_scratch` removes the
temporary folders of ended processes. (A store's partial files are removed by
``ObjectStore.cleanup``, which uses the same tag.)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Prefix of every temporary folder the pipeline makes in TMPDIR.
SCRATCH_PREFIX = "cotir-"
#: ``<host>_<pid>`` inside a scratch or partial name (the host without non-alphanumerics).
OWNER_PATTERN = re.compile(r"(?P<host>[A-Za-z0-9]+)_(?P<pid>[0-9]+)-")
_SCRATCH_NAME = re.compile(rf"^{SCRATCH_PREFIX}[a-z]+-{OWNER_PATTERN.pattern}")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def owner_tag() -> str:
    """``<host>_<pid>`` of the calling process (computed each time: forks differ)."""
    return f"{_host()}_{os.getpid()}"


def owner_is_gone(name: str) -> bool:
    """Whether ``name`` carries an owner tag of a process on this machine that has ended.

    False when the name has no tag, the owner is on another machine, or it still runs
    (a recycled pid only keeps debris a little longer, it never removes live files).
    """
    found = OWNER_PATTERN.search(name)
    if found is None or found["host"] != _host():
        return False
    pid = int(found["pid"])
    return pid != os.getpid() and process_is_gone(pid)


def process_is_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this machine (a zombie counts as gone: it has
    ended and only waits to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@contextlib.contextmanager
def scratch_dir(kind: str, *, parent: Path | None = None) -> Iterator[Path]:
    """A temporary folder ``cotir-<kind>-<host>_<pid>-...`` (in TMPDIR unless ``parent``),
    removed on exit; left behind only when the process is killed, and then removed by
    :func:`remove_abandoned_scratch` in a later run."""
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"scratch kind must be lower-case letters, got {kind!r}")
    with tempfile.TemporaryDirectory(
        prefix=f"{SCRATCH_PREFIX}{kind}-{owner_tag()}-", dir=parent
    ) as folder:
        yield Path(folder)


def remove_abandoned_scratch(parent: Path | None = None) -> list[Path]:
    """Remove the scratch folders (or files) of ended processes in ``parent`` (TMPDIR by
    default); return what was removed."""
    folder = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for path in sorted(folder.iterdir()):
            if _SCRATCH_NAME.match(path.name) and owner_is_gone(path.name):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed
