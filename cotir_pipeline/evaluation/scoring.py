"""Score a method's outputs on a bench set: one row per image and metric, n/a with its reason.

:func:`evaluate_outputs` is the step between :func:`~cotir_pipeline.evaluation.
restorers.run_restorer` (outputs on disk) and :mod:`~cotir_pipeline.evaluation.
tables` (the paper's tables). A metric that cannot run here, a missing output, a
set without ground truth for a full-reference metric, or an image below a
metric's minimum size all give a row with ``value=None`` and the reason, never a
number. Rows are plain data (Parquet via :func:`write_rows`).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cotir_pipeline.digests import file_sha256
from cotir_pipeline.evaluation._io import find_image, read_rgb
from cotir_pipeline.evaluation.bench_sets import (
    PROMPT_KINDS,
    BenchSet,
    PromptKind,
    bench_lineage_ids,
    record_task,
)
from cotir_pipeline.evaluation.metrics import (
    InputTooSmallError,
    LoadedMetric,
    Unavailable,
    WeightLocations,
    get_metric,
    load_metric,
    metric_availability,
)
from cotir_pipeline.evaluation.restorers import read_runtime_log, runtime_log_path
from cotir_pipeline.images import BadImageError
from cotir_pipeline.lineage.schema import SCORE_COLUMN_PREFIX


@dataclass(frozen=True)
class ScoreRow:
    """One metric value of one restored image (``value`` None: n/a, see ``reason``)."""

    method: str
    prompt_kind: str
    bench: str
    sample_id: str
    deg_type: str
    subset: str
    task: str
    metric: str
    value: float | None
    reason: str | None = None
    resized: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (one Parquet row)."""
        return asdict(self)


@dataclass(frozen=True)
class RuntimeRow:
    """Seconds one restorer spent on one image (from the runtime log of run_restorer)."""

    method: str
    prompt_kind: str
    bench: str
    sample_id: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (one Parquet row)."""
        return asdict(self)


MetricCache = MutableMapping[tuple[str, str], LoadedMetric]


def evaluate_outputs(
    bench: BenchSet,
    outputs_dir: Path,
    metrics: Sequence[str],
    *,
    method: str,
    prompt_kind: PromptKind,
    device: str = "cpu",
    locations: WeightLocations | None = None,
    cache: MetricCache | None = None,
) -> list[ScoreRow]:
    """Score the outputs in ``outputs_dir`` (``<out>/<prompt_kind>``) of every bench sample.

    Outputs are matched to samples by file name (same stem, any image suffix).
    Full-reference metrics compare with the sample's ``hq/`` image, upsampling a
    smaller output bicubic first. Pass a dict as ``cache`` to reuse created
    models across calls (methods, prompt kinds).
    """
    if prompt_kind not in PROMPT_KINDS:
        raise ValueError(f"prompt_kind must be 'vague' or 'precise', got {prompt_kind!r}")
    folder = Path(outputs_dir)
    rows: list[ScoreRow] = []
    for name in metrics:
        spec = get_metric(name)
        availability = metric_availability(name, device, locations=locations)
        loaded: LoadedMetric | None = None
        load_problem = ""
        if isinstance(availability, Unavailable):
            load_problem = availability.reason
        elif cache is not None and (name, device) in cache:
            loaded = cache[(name, device)]
        else:
            try:
                loaded = load_metric(name, device, locations=locations)
            except Exception as error:  # a corrupt file or an incompatible package
                load_problem = f"could not be created ({type(error).__name__}: {error})"
            if loaded is not None and cache is not None:
                cache[(name, device)] = loaded
        for record in bench.records:
            value: float | None = None
            reason: str | None = None
            resized = False
            output = find_image(folder, record.output_name)
            reference = bench.hq_file(record)
            if loaded is None:
                reason = f"{name}: {load_problem}"
            elif output is None:
                reason = f"output missing: no {record.output_name} in {folder}"
            elif spec.full_reference and reference is None:
                reason = f"{name} needs ground truth; bench {bench.name!r} has none for this sample"
            else:
                try:
                    restored = read_rgb(output)
                    truth = read_rgb(reference) if spec.full_reference and reference else None
                    resized = truth is not None and restored.shape != truth.shape
                    value = loaded.score_arrays(restored, truth)
                except (InputTooSmallError, BadImageError, FloatingPointError) as error:
                    reason = f"{name}: {error}"
            rows.append(
                ScoreRow(
                    method=method,
                    prompt_kind=prompt_kind,
                    bench=bench.name,
                    sample_id=record.id,
                    deg_type=record.deg_type,
                    subset=record.subset,
                    task=record_task(record),
                    metric=name,
                    value=value,
                    reason=reason,
                    resized=resized,
                )
            )
    return rows


def runtime_rows(
    out_dir: Path, *, method: str, bench: str, prompt_kind: PromptKind
) -> list[RuntimeRow]:
    """Per-image runtimes of a run_restorer output tree (successful samples only)."""
    log = runtime_log_path(Path(out_dir), prompt_kind)
    if not log.is_file():
        return []
    return [
        RuntimeRow(method, prompt_kind, bench, str(entry["id"]), float(entry["seconds"]))
        for entry in read_runtime_log(log)
        if entry.get("status") == "ok"
    ]


def score_row_schema() -> Any:
    """The Arrow schema of score rows as :func:`write_rows` stores them (for the UI)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("method", pa.string()),
            pa.field("prompt_kind", pa.string()),
            pa.field("bench", pa.string()),
            pa.field("sample_id", pa.string(), metadata={"doc": "the bench record's public id"}),
            pa.field("deg_type", pa.string()),
            pa.field("subset", pa.string()),
            pa.field("task", pa.string()),
            pa.field("metric", pa.string()),
            pa.field("value", pa.float64(), metadata={"doc": "null: n/a, see reason"}),
            pa.field("reason", pa.string()),
            pa.field("resized", pa.bool_()),
        ]
    )


def write_rows(rows: Iterable[ScoreRow | RuntimeRow], path: Path) -> Path:
    """Write score or runtime rows as one Parquet file (atomically); return the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = list(rows)
    if not items:
        raise ValueError("no rows to write")
    kind = type(items[0])
    if any(type(item) is not kind for item in items):
        raise TypeError("write_rows takes rows of one kind (all ScoreRow or all RuntimeRow)")
    names = [column.name for column in fields(kind)]
    table = pa.Table.from_pylist([item.to_dict() for item in items]).select(names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial")
    pq.write_table(table, temp)
    temp.replace(path)
    return path


def read_score_rows(path: Path) -> list[ScoreRow]:
    """Score rows back from a Parquet file written by :func:`write_rows`."""
    import pyarrow.parquet as pq

    return [ScoreRow(**row) for row in pq.read_table(Path(path)).to_pylist()]


def read_runtime_rows(path: Path) -> list[RuntimeRow]:
    """Runtime rows back from a Parquet file written by :func:`write_rows`."""
    import pyarrow.parquet as pq

    return [RuntimeRow(**row) for row in pq.read_table(Path(path)).to_pylist()]


__all__ = [
    "MetricCache",
    "RuntimeRow",
    "ScoreRow",
    "evaluate_outputs",
    "read_runtime_rows",
    "read_score_rows",
    "runtime_rows",
    "write_rows",
]


def sample_rows(
    bench: BenchSet, rows: Iterable[ScoreRow], outputs: Path, *, checkpoint: str | None
) -> list[dict[str, Any]]:
    """One row per bench sample and prompt: what lineage shows for a scored sample.

    ``sample_id`` is the bench sample's lineage id (:func:`~cotir_pipeline.evaluation.
    bench_sets.bench_lineage_ids`), ``record_id`` its public id; then the method, the
    checkpoint it ran (its hash, or None for a built-in method), the prompt kind, the
    output's sha256 (None when there is no output) and each metric's value as a
    ``score:<metric>`` column (None when n/a). ``evaluation_row`` is
    ``<bench>/<method>/<prompt>``, the value lineage lists per sample.
    """

    lineage_ids = bench_lineage_ids(bench)
    by_sample: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row.sample_id, row.prompt_kind)
        entry = by_sample.get(key)
        if entry is None:
            record = bench.get(row.sample_id)
            output = outputs / row.prompt_kind / record.output_name
            entry = {
                "sample_id": lineage_ids[row.sample_id],
                "record_id": row.sample_id,
                "bench": row.bench,
                "method": row.method,
                "checkpoint": checkpoint,
                "prompt_kind": row.prompt_kind,
                "evaluation_row": f"{row.bench}/{row.method}/{row.prompt_kind}",
                "output_sha256": file_sha256(output) if output.is_file() else None,
            }
            by_sample[key] = entry
        entry[f"{SCORE_COLUMN_PREFIX}{row.metric}"] = row.value
    return sorted(by_sample.values(), key=lambda item: (item["sample_id"], item["prompt_kind"]))


def restoration_rows(
    bench: BenchSet, outputs: Path, *, method: str, checkpoint: str | None
) -> list[dict[str, Any]]:
    """One row per bench sample and prompt kind: what the restorations stage produced.

    ``sample_id`` is the lineage id and ``record_id`` the public id (as in
    :func:`sample_rows`); then the method, the checkpoint hash (None for a built-in
    method), the prompt kind, ``status`` (``ok`` when the output is there, else
    ``failed`` with the logged ``reason``), the output's file (relative to the method's
    bench folder), its sha256 and the restore call's seconds from the runtime log.
    """

    lineage_ids = bench_lineage_ids(bench)
    rows = []
    for kind in PROMPT_KINDS:
        log = runtime_log_path(Path(outputs), kind)
        entries = read_runtime_log(log) if log.is_file() else []
        logged = {str(entry["id"]): entry for entry in entries}
        for record in bench.records:
            output = Path(outputs) / kind / record.output_name
            entry = logged.get(record.id, {})
            ok = output.is_file()
            seconds = entry.get("seconds") if entry.get("status") == "ok" else None
            rows.append(
                {
                    "sample_id": lineage_ids[record.id],
                    "record_id": record.id,
                    "bench": bench.name,
                    "method": method,
                    "checkpoint": checkpoint,
                    "prompt_kind": kind,
                    "status": "ok" if ok else "failed",
                    "reason": None if ok else str(entry.get("reason") or "no output, none logged"),
                    "output_file": f"{kind}/{record.output_name}" if ok else None,
                    "output_sha256": file_sha256(output) if ok else None,
                    "runtime_s": float(seconds) if ok and seconds is not None else None,
                }
            )
    return sorted(rows, key=lambda item: (item["sample_id"], item["prompt_kind"]))


def _per_sample_key_fields() -> list[Any]:
    """The leading columns of the restoration and score per-sample files: which sample
    (lineage id and public id), which bench, method, checkpoint and prompt kind."""
    import pyarrow as pa

    return [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("bench", pa.string()),
        pa.field("method", pa.string()),
        pa.field("checkpoint", pa.string()),
        pa.field("prompt_kind", pa.string()),
    ]


def restoration_row_schema() -> Any:
    """The Arrow schema of :func:`restoration_rows` as stored (and shown in the UI)."""
    import pyarrow as pa

    return pa.schema(
        [
            *_per_sample_key_fields(),
            pa.field("status", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("output_file", pa.string()),
            pa.field("output_sha256", pa.string()),
            pa.field("runtime_s", pa.float64()),
        ]
    )


def write_restoration_rows(rows: Sequence[dict[str, Any]], destination: Path) -> Path:
    """Write :func:`restoration_rows` as zstd Parquet at ``destination``; return the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(list(rows), schema=restoration_row_schema())
    destination.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, destination, compression="zstd")
    return destination


def write_sample_rows(
    bench: BenchSet,
    rows: Iterable[ScoreRow],
    outputs: Path,
    *,
    checkpoint: str | None,
    destination: Path,
) -> Path:
    """Write :func:`sample_rows` as zstd Parquet at ``destination``; return the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = sample_rows(bench, rows, outputs, checkpoint=checkpoint)
    if not items:
        raise ValueError("no score rows: nothing to write")
    metrics = sorted(
        {name for item in items for name in item if name.startswith(SCORE_COLUMN_PREFIX)}
    )
    fixed = [
        *_per_sample_key_fields(),
        pa.field("evaluation_row", pa.string()),
        pa.field("output_sha256", pa.string()),
    ]
    schema = pa.schema(fixed + [pa.field(name, pa.float64()) for name in metrics])
    table = pa.Table.from_pylist(items, schema=schema)
    destination.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, destination, compression="zstd")
    return destination
