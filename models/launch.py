"""Processes that end with the process that started them.

A training run launched by a Dagster step must not train on alone when that step is
killed (SIGKILL, out of memory): nothing would stop it, and the next run of the step would
train a second copy beside it. On Linux a process can ask to receive a signal when its
parent dies (``prctl(PR_SET_PDEATHSIG)``); :func:`die_with_parent` asks for SIGKILL,
which no inherited signal disposition can ignore (a job started in the background of a
non-interactive shell inherits SIGINT, and often SIGTERM, ignored). Nothing is lost:
training resumes from its last checkpoint.
``models.train`` calls it itself; ``python -m models.launch <module> ...`` runs another
entry point (``accelerate.commands.launch``) the same way, so a launcher and the training
processes it starts all end with the step.
"""

from __future__ import annotations

import sys


def die_with_parent() -> None:
    """Ask Linux to end this process (SIGKILL) when the process that started it dies. A
    no-op on other systems, or where the request is not allowed."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal

    pr_set_pdeathsig = 1
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    """``python -m models.launch <module> [args...]``: run ``<module>`` as ``__main__`` in
    this process, after :func:`die_with_parent`."""
    import runpy

    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments:
        raise SystemExit("usage: python -m models.launch <module> [args...]")
    die_with_parent()
    module, *rest = arguments
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
