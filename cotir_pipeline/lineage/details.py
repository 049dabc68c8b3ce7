"""The end of a sample's chain in detail: training steps, checkpoints, bench origin, scores.

The index (:mod:`cotir_pipeline.lineage.read`) says which runs, bench sets and
evaluation rows a sample has. This module reads those stages' own per-sample rows for
the one sample, so a look-up shows, for a training sample, the steps at which each run
trained on it, the run's checkpoints that saw it and where they were evaluated; and
for a bench sample, where it came from and its scores per method and prompt.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cotir_pipeline.lineage.read import LineageRecord
from cotir_pipeline.lineage.schema import (
    SCORE_COLUMN_PREFIX,
    STAGE_LOCATIONS,
    is_stage_file,
    stage_file_key,
)
from cotir_pipeline.store import LocalObjectStore, ObjectNotFoundError, ObjectStore

#: Evaluation method names of trained checkpoints end in ``-<run>-s<step>``.
_CHECKPOINT_METHOD = re.compile(r"-(?P<run>r[0-9a-f]+)-s(?P<step>\d+)$")


def _rows_for(store: ObjectStore, key: str, sample_id: str) -> list[dict[str, Any]]:
    """Rows of the Parquet object ``key`` whose sample_id is ``sample_id`` ([] if absent)."""
    try:
        if isinstance(store, LocalObjectStore):
            source: Any = str(store.root / key)
            if not Path(source).is_file():
                return []
        else:
            source = io.BytesIO(store.get_bytes(key))
        table = pq.read_table(source, filters=[("sample_id", "=", sample_id)])
    except (ObjectNotFoundError, FileNotFoundError, pa.ArrowInvalid):
        return []
    return table.to_pylist()


def _scores(row: dict[str, Any]) -> str:
    values = []
    for name, value in row.items():
        if name.startswith(SCORE_COLUMN_PREFIX) and value is not None and not math.isnan(value):
            values.append(f"{name.removeprefix(SCORE_COLUMN_PREFIX)} {value:.4g}")
    return ", ".join(values) or "every metric n/a"


def _evaluated_checkpoints(store: ObjectStore, run: str) -> dict[int, dict[str, list[str]]]:
    """Per checkpoint step of ``run``: method name -> bench sets it was scored on."""
    prefix, suffix = STAGE_LOCATIONS["evaluation"]
    found: dict[int, dict[str, list[str]]] = {}
    for info in store.list(f"{prefix}/"):
        if not is_stage_file("evaluation", info.key):
            continue
        _, method, file_name = info.key.split("/")
        match = _CHECKPOINT_METHOD.search(method)
        if match is None or match.group("run") != run:
            continue
        bench = file_name.removesuffix(suffix)
        found.setdefault(int(match.group("step")), {}).setdefault(method, []).append(bench)
    return found


def _training_lines(store: ObjectStore, record: LineageRecord) -> Iterator[str]:
    runs = record.step("training_runs").details.get("training_runs") or []
    for label in runs:
        run = label.split("/")[-1]
        rows = _rows_for(store, stage_file_key("training_runs", run), record.sample_id)
        if not rows or rows[0].get("first_step") is None:
            yield f"  run {label}: trained on it (no step record)"
            continue
        first, last, times = rows[0]["first_step"], rows[0]["last_step"], rows[0]["times"]
        yield f"  run {label}: trained on it {times}x, steps {first}..{last}"
        evaluated = _evaluated_checkpoints(store, run)
        for step in sorted(evaluated):
            if step < first:
                yield f"    checkpoint s{step}: had not seen it yet"
                continue
            for method, benches in sorted(evaluated[step].items()):
                yield f"    checkpoint s{step} saw it; evaluated as {method} on " + ", ".join(
                    sorted(benches)
                )


def _bench_lines(store: ObjectStore, record: LineageRecord) -> Iterator[str]:
    for bench in record.step("bench_sets").details.get("bench_sets") or []:
        for row in _rows_for(store, stage_file_key("bench_sets", bench), record.sample_id):
            parts = [f"  bench {bench}:"]
            if row.get("record_id"):
                parts.append(f"record {row['record_id']}")
            if row.get("degradation"):
                parts.append(f"({row['degradation']})")
            if row.get("origin"):
                parts.append(f"from {row['origin']}")
            if row.get("recipe"):
                parts.append(f"recipe {row['recipe']} seed {row.get('seed')}")
            yield " ".join(parts)


def _score_lines(store: ObjectStore, record: LineageRecord) -> Iterator[str]:
    rows = record.step("evaluation").details.get("evaluation_rows") or []
    files = sorted({tuple(row.split("/")[:2]) for row in rows if row.count("/") == 2})
    for bench, method in files:
        key = stage_file_key("evaluation", method, bench)
        for row in _rows_for(store, key, record.sample_id):
            checkpoint = f" (checkpoint {row['checkpoint'][:12]})" if row.get("checkpoint") else ""
            yield f"  {method}{checkpoint} on {bench}, {row['prompt_kind']}: {_scores(row)}"


def chain_details(store: ObjectStore, record: LineageRecord) -> list[str]:
    """Lines that complete ``record``'s chain from the stages' own rows (may be empty)."""
    lines: list[str] = []
    for title, stage, make in (
        ("training", "training_runs", _training_lines),
        ("bench origin", "bench_sets", _bench_lines),
        ("scores", "evaluation", _score_lines),
    ):
        if not record.step(stage).reached:
            continue
        found = list(make(store, record))
        if found:
            lines += [f"{title}:", *found]
    return lines


def checkpoint_run(name: str) -> str:
    """The training run id of a checkpoint name: an evaluation method
    (``cotir-<variant>-<recipe>-<run>-s<step>``), ``<run>``, ``<variant>/<run>`` or
    ``<run>/step-N``; ValueError when none is recognisable."""
    match = _CHECKPOINT_METHOD.search(name)
    if match is not None:
        return match.group("run")
    for part in name.split("/"):
        if re.fullmatch(r"r[0-9a-f]+", part):
            return part
    raise ValueError(
        f"{name!r} names no training run: give a method such as cotir-demo-paper-r1a2b3c-s600, "
        "a run id such as r1a2b3c, or <variant>/<run>"
    )


def checkpoint_summary(store: ObjectStore, name: str) -> dict[str, Any]:
    """What trained a checkpoint: its run's samples per source and degradation.

    ``name`` as :func:`checkpoint_run` takes it; a method or ``/step-N`` name limits the
    count to the samples that checkpoint had seen (first step <= its step).
    """

    import pyarrow.compute as pc

    run = checkpoint_run(name)
    step_match = _CHECKPOINT_METHOD.search(name) or re.search(r"step-(?P<step>\d+)$", name)
    step = int(step_match.group("step")) if step_match else None
    key = stage_file_key("training_runs", run)
    try:
        consumed = pq.read_table(io.BytesIO(store.get_bytes(key)))
    except ObjectNotFoundError:
        raise ValueError(f"no {key} in {store.url}: was run {run} trained here?") from None
    if "first_step" not in consumed.column_names:
        raise ValueError(
            f"{key} has no step record (written before the trainer recorded what it "
            "consumed): train the run again to know which samples each checkpoint saw"
        )
    if step is not None:
        consumed = consumed.filter(pc.less_equal(consumed["first_step"], step))
    shards = pq.read_table(
        io.BytesIO(store.get_bytes("training_shards/manifest.parquet")),
        columns=["sample_id", "source", "degradation"],
    )
    joined = consumed.join(shards, "sample_id", join_type="left outer")
    counts = joined.group_by(["source", "degradation"]).aggregate(
        [("sample_id", "count"), ("times", "sum")]
    )
    rows = sorted(
        (
            {
                "source": row["source"],
                "degradation": row["degradation"],
                "samples": row["sample_id_count"],
                "draws": row["times_sum"],
            }
            for row in counts.to_pylist()
        ),
        key=lambda row: (str(row["source"]), str(row["degradation"])),
    )
    return {
        "run": run,
        "run_label": consumed["run_id"][0].as_py() if consumed.num_rows else run,
        "up_to_step": step,
        "samples": consumed.num_rows,
        "draws": int(pc.sum(consumed["times"]).as_py() or 0),
        "by_source_and_degradation": rows,
    }
