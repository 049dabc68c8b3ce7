"""Training metrics on disk (JSONL, CSV) and the two plots of the paper's Fig. 10.

Fig. 10 of the paper shows, over training, the restoration (flow-matching) loss and
the three Lagrange multipliers. :func:`plot_training_curves` draws the same two panels
as PNG files (matplotlib with the Agg backend, imported only when plotting, so
importing this module has no side effects).
"""

from __future__ import annotations

import base64
import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

LOSS_PLOT = "restoration_loss.png"
MULTIPLIER_PLOT = "multipliers.png"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (a missing file is no records)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error})") from None
    return records


def write_csv(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write records as CSV with the union of their keys as columns (first-seen order)."""
    columns: list[str] = []
    for record in records:
        columns += [key for key in record if key not in columns]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow({key: _cell(record.get(key)) for key in columns})
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard-style smoothing)."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, average = [], 0.0
    for index, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**index))
    return out


def _series(records: Iterable[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values


def multiplier_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``lambda_*`` columns present, in first-seen order."""
    keys: list[str] = []
    for record in records:
        keys += [key for key in record if key.startswith("lambda_") and key not in keys]
    return keys


def plot_training_curves(
    records: Sequence[Mapping[str, Any]], folder: Path, *, title: str = ""
) -> dict[str, Path]:
    """Draw the restoration loss and the multipliers over steps; returns the PNG paths."""
    if not records:
        raise ValueError("no metric records to plot")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"loss": folder / LOSS_PLOT, "multipliers": folder / MULTIPLIER_PLOT}

    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=100)
    steps, values = _series(records, "loss_fm")
    axis.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=1, label="per step")
    if len(values) > 1:
        axis.plot(steps, smooth(values), color="tab:blue", linewidth=2, label="smoothed")
    axis.set_xlabel("step")
    axis.set_ylabel("flow-matching loss")
    axis.set_title(f"Restoration loss {title}".strip())
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(paths["loss"])
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=100)
    keys = multiplier_keys(records)
    for key in keys:
        steps, values = _series(records, key)
        axis.plot(steps, values, linewidth=2, label=key.removeprefix("lambda_"))
    if not keys:
        axis.text(0.5, 0.5, "no multipliers (mode none)", ha="center", va="center")
    axis.set_xlabel("step")
    axis.set_ylabel("lambda")
    axis.set_title(f"Lagrange multipliers {title}".strip())
    axis.grid(alpha=0.3)
    if keys:
        axis.legend()
    figure.tight_layout()
    figure.savefig(paths["multipliers"])
    plt.close(figure)
    return paths


def png_markdown(path: Path, alt: str) -> str:
    """Markdown that shows a PNG inline (base64 data URI), e.g. for Dagster metadata."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"
