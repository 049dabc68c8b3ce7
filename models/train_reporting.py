"""Where a training run's messages and metrics go: Dagster Pipes when it launched the run
(log lines, custom messages, the asset materialization), else standard output."""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Mapping
from typing import Any

import torch

from models.losses import HEADS


def pipes_requested() -> bool:
    """Whether this process was launched by Dagster Pipes (its context env var is set)."""
    from dagster_pipes import PipesEnvVarParamsLoader

    return PipesEnvVarParamsLoader().is_dagster_pipes_process()


class Reporter:
    """Messages and metrics: to Dagster Pipes when launched by it (main process), else stdout."""

    def __init__(self, *, main: bool) -> None:
        self.main = main
        self._stack = contextlib.ExitStack()
        self.pipes: Any = None
        if main and pipes_requested():
            from dagster_pipes import open_dagster_pipes

            self.pipes = self._stack.enter_context(open_dagster_pipes())

    def info(self, message: str) -> None:
        """A progress line (main process only)."""
        if not self.main:
            return
        if self.pipes is not None:
            self.pipes.log.info(message)
        print(message, flush=True)

    def warning(self, message: str) -> None:
        """A warning from any process."""
        if self.pipes is not None:
            self.pipes.log.warning(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def metrics(self, record: Mapping[str, Any]) -> None:
        """Stream one metrics record (a custom message under Pipes) and print a summary."""
        if not self.main:
            return
        if self.pipes is not None:
            self.pipes.report_custom_message({"kind": "metrics", **record})
        self.info(format_record(record))

    def materialization(self, metadata: Mapping[str, Any]) -> None:
        """Report the asset materialization (Pipes only)."""
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata=dict(metadata))

    def close(self, error: BaseException | None = None) -> None:
        """Close the Pipes connection (reporting ``error`` if the run failed)."""
        if error is None:
            self._stack.close()
        else:
            self._stack.__exit__(type(error), error, error.__traceback__)


def format_record(record: Mapping[str, Any]) -> str:
    """One human-readable line of a metrics record."""
    parts = [f"step {record['step']}/{record['total_steps']}", f"fm {record['loss_fm']:.4f}"]
    parts += [f"{h} {record[f'loss_{h}']:.5f}" for h in HEADS if f"loss_{h}" in record]
    lambdas = [
        f"{key.removeprefix('lambda_')}={value:.3g}"
        for key, value in record.items()
        if key.startswith("lambda_")
    ]
    if lambdas:
        parts.append("lambda " + ",".join(lambdas))
    parts.append(f"lr {record['lr']:.3g}")
    parts.append(f"{record['samples_per_s']:.1f} samples/s")
    return " | ".join(parts)


def peak_memory_mib(device: torch.device) -> float:
    """Peak accelerator memory allocated, or the process's peak RSS on the CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


__all__ = ["Reporter", "format_record", "peak_memory_mib", "pipes_requested"]
