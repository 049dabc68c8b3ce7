"""Benchmark the sample lineage index at the full dataset's scale (5.2 M samples).

It writes a synthetic store holding every stage's per-sample rows in the layout
the build reads (``raw_pairs/<source>/pairs.parquet``, ``pair_shards/<source>/
manifest.parquet`` with the real manifest schema, and the later stages' files),
then measures, in one run:

- build: ``cotir lineage --build`` as a subprocess (wall time, peak RSS);
- size: bytes per sample on disk, in total and per stage's column group;
- point look-ups: 1,000 random ids in a warm process, p50/p99, with a fresh
  ``lookup()`` per call and with one reused ``LineageIndex``; the same with DuckDB
  (same part routing) when it is installed; a cold ``cotir lineage <id>`` as a
  subprocess, end to end; a cold process doing the DuckDB look-up;
- filtered listings: ``source = 'X' and status = 'dropped'`` (and a filter on a
  later stage) warm with pyarrow and DuckDB, and cold through the CLI.

It prints each number, the targets and the ratios DuckDB / pyarrow.

    .venv/bin/python scripts/bench_lineage.py                  # 5.2 M samples
    .venv/bin/python scripts/bench_lineage.py --samples 200000  # a quick run
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cotir_pipeline.lineage.read import LineageIndex, open_lineage
from cotir_pipeline.lineage.schema import DEFAULT_QUERY_COLUMNS, STAGES
from cotir_pipeline.pair_stage import PLAN_SCHEMA
from cotir_pipeline.shards import MANIFEST_SCHEMA
from cotir_pipeline.sources.catalog import load_catalog
from cotir_pipeline.tasks import parse_degradation_label, task_of

REPO_ROOT = Path(__file__).resolve().parent.parent
COTIR = REPO_ROOT / ".venv" / "bin" / "cotir"
TARGET_WARM_MS = 50.0
TARGET_COLD_S = 2.0
TARGET_BYTES_PER_STAGE = 100.0
CHUNK_ROWS = 250_000
BUCKET_URL = "s3://cotir-prod/runs/2026-11"
#: Training runs: (run id, steps, global batch). The first is the paper's 120k-step run
#: at global batch 96, the second the same schedule at 16, the third a short ablation.
RUNS = (
    ("r0a1b2c3d4e5", 120_000, 96),
    ("r1f2e3d4c5b6", 120_000, 16),
    ("r2aabbccdde0", 20_000, 16),
)
BENCHES = ("cotir_bench_test", "cotir_bench_7d", "agenticir", "real_world")
#: Samples per bench set (the paper's CoTIR-Bench test set is about 2,000 images).
BENCH_SIZE = 2_000
#: Ten evaluated methods: six checkpoints of the runs and four baselines.
METHODS = (
    *(
        f"cotir-12b-paper-{run}-s{step}"
        for run, _, _ in RUNS[:2]
        for step in (40_000, 80_000, 120_000)
    ),
    "restormer",
    "promptir",
    "instructir",
    "identity",
)
PROMPTS = ("vague", "precise")
PAIR_DROP_REASONS = (
    "corrupt or truncated image: image file is truncated (12 bytes not processed)",
    "LQ 480x320 and HQ 1920x1080 differ in aspect ratio",
    "near-flat patch (std 0.8 < 6.0)",
)
PLAN_DROP_REASONS = (
    "unpaired: LQ file without a matching HQ file",
    "unpaired: HQ file without any LQ file",
)
ANNOTATION_FAILURES = (
    "answer is not valid JSON: Expecting ',' delimiter: line 1 column 212",
    "answer names a degradation outside the label: snow",
    "vLLM server timed out after 3 attempts",
)
FILTER_REASONS = (
    "clip consistency below threshold",
    "rule: precise prompt does not mention the labelled degradation",
)


# -- synthetic data ------------------------------------------------------------------------


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_strings(rng: np.random.Generator, count: int, digits: int) -> pa.Array:
    """``count`` random lowercase hex strings of ``digits`` characters (sha256-like)."""
    raw = rng.integers(0, 256, size=(count, digits // 2), dtype=np.uint8)
    text = np.empty((count, digits), dtype=np.uint8)
    text[:, 0::2] = _HEX[raw >> 4]
    text[:, 1::2] = _HEX[raw & 15]
    offsets = np.arange(0, count * digits + 1, digits, dtype=np.int32)
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))


def join(*parts: Any) -> pa.Array:
    """Element-wise concatenation of string arrays and constant strings."""
    values = [part if isinstance(part, pa.Array) else pa.scalar(str(part)) for part in parts]
    return pc.binary_join_element_wise(*values, "")


def padded(numbers: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")


def choose(rng: np.random.Generator, values: tuple[str, ...] | list[str], count: int) -> pa.Array:
    return pa.array(list(values), pa.string()).take(pa.array(rng.integers(0, len(values), count)))


def where_else(mask: np.ndarray, values: Any, other: Any) -> pa.Array:
    return pc.if_else(pa.array(mask), values, other)


def null_unless(mask: np.ndarray, values: Any, kind: pa.DataType | None = None) -> pa.Array:
    return pc.if_else(pa.array(mask), values, pa.scalar(None, kind or pa.string()))


@dataclass(frozen=True)
class SourceSpec:
    """One synthetic source: its name, size, labels and whether recipes make its pairs."""

    name: str
    samples: int
    labels: tuple[str, ...]
    tasks: tuple[str, ...]
    synthetic: bool
    scene_prefix: str


def source_specs(total: int, count: int, seed: int) -> list[SourceSpec]:
    """``count`` catalog sources with a skewed (Zipf-like) share of ``total`` samples."""
    catalog = load_catalog()
    chosen = [source for source in catalog.sources if not source.real_world][:count]
    if len(chosen) < count:
        raise SystemExit(f"the catalog has only {len(chosen)} sources with pairs")
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, count + 1) ** 0.9
    rng.shuffle(weights)
    sizes = np.floor(weights / weights.sum() * total).astype(np.int64)
    sizes[np.argmax(sizes)] += total - int(sizes.sum())
    specs = []
    for source, size in zip(chosen, sizes, strict=True):
        labels = tuple(source.degradations) or ("noise",)
        tasks = tuple(task_of(parse_degradation_label(label)).value for label in labels)
        specs.append(
            SourceSpec(
                name=source.name,
                samples=int(size),
                labels=labels,
                tasks=tasks,
                synthetic=source.fetch is None,
                scene_prefix=source.name.upper().replace("_", "")[:6],
            )
        )
    return specs


@dataclass
class Chunk:
    """Every stage's rows for a slice of one source."""

    plan: pa.Table
    manifest: pa.Table
    annotations: pa.Table
    filters: pa.Table
    training_shards: pa.Table
    runs: dict[str, pa.Table]
    benches: dict[str, pa.Table]
    evaluations: dict[str, pa.Table]
    sample_ids: pa.Array


def make_chunk(
    spec: SourceSpec,
    start: int,
    count: int,
    rng: np.random.Generator,
    *,
    trained_total: int,
    bench_room: dict[str, int],
) -> Chunk:
    """Rows of samples ``start .. start+count`` of ``spec`` for every stage.

    ``trained_total`` (about how many samples reach the training shards in all) sets how
    often each run draws a sample; ``bench_room`` counts down the places left per bench.
    """
    index = np.arange(start, start + count)
    ids = hex_strings(rng, count, 32)
    label_index = rng.integers(0, len(spec.labels), count)
    labels = pa.array(list(spec.labels)).take(pa.array(label_index))
    tasks = pa.array(list(spec.tasks)).take(pa.array(label_index))
    split = where_else(rng.random(count) < 0.95, pa.scalar("train"), pa.scalar("test"))
    roll = rng.random(count)
    plan_dropped = roll < 0.01
    pair_dropped = (roll >= 0.01) & (roll < 0.03)
    failed = (roll >= 0.03) & (roll < 0.0305)
    ok = ~(plan_dropped | pair_dropped | failed)
    plan, recipe_json = _plan_table(spec, index, labels, split, plan_dropped, rng)
    outcomes = (plan_dropped, pair_dropped, failed)
    manifest = _manifest_table(spec, index, ids, labels, tasks, plan, recipe_json, outcomes, rng)
    train = ok & (np.asarray(split.to_numpy(zero_copy_only=False)) == "train")
    bench = ok & ~train
    annotations, filters, training_shards = _annotation_tables(ids, labels, train, start, rng)
    kept_ids = training_shards.column("sample_id").combine_chunks()
    runs = _run_tables(kept_ids, trained_total, rng)
    benches, evaluations = _bench_tables(spec, ids.filter(pa.array(bench)), bench_room, rng)
    return Chunk(
        plan=plan,
        manifest=manifest,
        annotations=annotations,
        filters=filters,
        training_shards=training_shards,
        runs=runs,
        benches=benches,
        evaluations=evaluations,
        sample_ids=ids,
    )


def _plan_table(
    spec: SourceSpec,
    index: np.ndarray,
    labels: pa.Array,
    split: pa.Array,
    plan_dropped: np.ndarray,
    rng: np.random.Generator,
) -> tuple[pa.Table, pa.Array]:
    """The pair plan's rows (``raw_pairs``), and each sample's recipe as JSON."""
    count = len(index)
    scene = padded(index // 40, 4)
    frame = padded(index % 40 * 7 + 1, 6)
    if spec.synthetic:
        clean = join("clean/", spec.scene_prefix, "_", scene, "/", frame, ".png")
        item_key = join(spec.scene_prefix, "_", scene, "/", frame, "_x0256_y0128_s512")
        lq_path = pa.nulls(count, pa.string())
        hq_path = clean
        recipe_ref = join(spec.name, ":", labels)
        seed = pa.array(rng.integers(0, 2**62, count, dtype=np.int64))
        params = rng.random((count, 3))
        recipe_json = join(
            '[{"op": "',
            labels,
            '", "params": {"strength": ',
            pc.cast(pa.array(params[:, 0]), pa.string()),
            ', "angle": ',
            pc.cast(pa.array(params[:, 1] * 180), pa.string()),
            ', "seed": ',
            pc.cast(pa.array(rng.integers(0, 2**53, count)), pa.string()),
            '}, "quantize": false}]',
        )
    else:
        lq_path = join(split, "/input/", spec.scene_prefix, "_", scene, "/", frame, ".png")
        hq_path = join(split, "/target/", spec.scene_prefix, "_", scene, "/", frame, ".png")
        item_key = join(split, "/", lq_path)
        recipe_ref = pa.nulls(count, pa.string())
        seed = pa.nulls(count, pa.int64())
        recipe_json = pa.nulls(count, pa.string())
    plan_status = where_else(plan_dropped, pa.scalar("dropped"), pa.scalar("ok"))
    plan_reason = null_unless(plan_dropped, choose(rng, PLAN_DROP_REASONS, count))
    plan = pa.table(
        {
            "source": pa.repeat(pa.scalar(spec.name), count),
            "item_key": item_key,
            "split": split,
            "degradation": labels,
            "lq_path": lq_path,
            "hq_path": hq_path,
            "recipe": recipe_ref,
            "seed": seed,
            "status": plan_status,
            "reason": plan_reason,
        },
        schema=PLAN_SCHEMA,
    )
    return plan, recipe_json


def _manifest_table(
    spec: SourceSpec,
    index: np.ndarray,
    ids: pa.Array,
    labels: pa.Array,
    tasks: pa.Array,
    plan: pa.Table,
    recipe_json: pa.Array,
    outcomes: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> pa.Table:
    """The pair shard manifest's rows: each sample stored, dropped or failed."""
    count = len(index)
    plan_dropped, pair_dropped, failed = outcomes
    ok = ~(plan_dropped | pair_dropped | failed)
    plan_reason = plan.column("reason").combine_chunks()
    item_key = plan.column("item_key").combine_chunks()
    split = plan.column("split").combine_chunks()
    seed = plan.column("seed").combine_chunks()
    status = where_else(
        ok,
        pa.scalar("ok"),
        where_else(failed, pa.scalar("failed"), pa.scalar("dropped")),
    )
    reason = where_else(
        plan_dropped,
        plan_reason,
        null_unless(
            pair_dropped | failed,
            where_else(
                failed,
                pa.scalar("unexpected error: OSError: [Errno 28] No space left on device"),
                choose(rng, PAIR_DROP_REASONS, count),
            ),
        ),
    )
    shard = padded(index // 1000, 6)
    shard_uri = join(
        f"{BUCKET_URL}/pair_shards/{spec.name}/",
        labels,
        f"/{spec.name}-",
        labels,
        "-",
        shard,
        ".tar",
    )
    stored = pa.array(ok)
    crop = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 4 * count + 1, 4, dtype=np.int32)),
        pa.array(np.tile(np.array([0, 0, 512, 512], dtype=np.int32), count)),
    )
    manifest = pa.table(
        {
            "sample_id": ids,
            "source": plan.column("source"),
            "item_key": item_key,
            "split": split,
            "degradation": labels,
            "task": tasks,
            "status": status,
            "reason": reason,
            "shard_uri": null_unless(ok, shard_uri),
            "shard_key": null_unless(ok, ids),
            "width": null_unless(ok, pa.scalar(512, pa.int32()), pa.int32()),
            "height": null_unless(ok, pa.scalar(512, pa.int32()), pa.int32()),
            "hq_sha256": null_unless(ok, hex_strings(rng, count, 64)),
            "lq_sha256": null_unless(ok, hex_strings(rng, count, 64)),
            "recipe": null_unless(ok, recipe_json),
            "seed": seed,
            "crop_box": pc.if_else(stored, crop, pa.scalar(None, crop.type)),
            "notes": pa.nulls(count, pa.string()),
        },
        schema=MANIFEST_SCHEMA,
    )
    return manifest


def _annotation_tables(
    ids: pa.Array, labels: pa.Array, train: np.ndarray, start: int, rng: np.random.Generator
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """The annotation, filter and training-shard rows of the chunk's training samples."""
    annotated_ids = ids.filter(pa.array(train))
    annotated = len(annotated_ids)
    annotation_failed = rng.random(annotated) < 0.01
    annotations = pa.table(
        {
            "sample_id": annotated_ids,
            "status": where_else(annotation_failed, pa.scalar("failed"), pa.scalar("ok")),
            "reason": null_unless(annotation_failed, choose(rng, ANNOTATION_FAILURES, annotated)),
            "model": pa.repeat(pa.scalar("Qwen2.5-VL-72B-Instruct"), annotated),
            "template_version": pa.repeat(pa.scalar("cot-instruction-v3+9f2c41d0"), annotated),
            "response_sha256": hex_strings(rng, annotated, 64),
        }
    )
    filtered_ids = annotated_ids.filter(pa.array(~annotation_failed))
    filtered = len(filtered_ids)
    scores = rng.normal(0.31, 0.04, filtered).astype(np.float32)
    dropped = (scores < 0.24) | (rng.random(filtered) < 0.02)
    filters = pa.table(
        {
            "sample_id": filtered_ids,
            "decision": where_else(dropped, pa.scalar("drop"), pa.scalar("keep")),
            "score": pa.array(scores),
            "reason": null_unless(dropped, choose(rng, FILTER_REASONS, filtered)),
        }
    )
    kept_ids = filtered_ids.filter(pa.array(~dropped))
    kept = len(kept_ids)
    kept_labels = labels.filter(pa.array(train)).filter(pa.array(~annotation_failed))
    kept_labels = kept_labels.filter(pa.array(~dropped))
    training_shards = pa.table(
        {
            "sample_id": kept_ids,
            "shard_uri": join(
                f"{BUCKET_URL}/training_shards/",
                kept_labels,
                "/train-",
                padded((start + np.arange(kept)) // 2000, 6),
                ".tar",
            ),
            "shard_key": kept_ids,
        }
    )
    return annotations, filters, training_shards


def _run_tables(
    kept_ids: pa.Array, trained_total: int, rng: np.random.Generator
) -> dict[str, pa.Table]:
    """Which training steps of each run drew each kept sample."""
    kept = len(kept_ids)
    runs: dict[str, pa.Table] = {}
    for run, steps, batch in RUNS:
        # Each run draws steps x batch samples uniformly from the training set: a sample
        # is drawn Poisson(draws / set size) times, at uniformly spread steps.
        times = rng.poisson(steps * batch / max(trained_total, 1), kept)
        drawn = times > 0
        first = np.ceil(steps * rng.beta(1, np.maximum(times, 1))).astype(np.int32)
        last = np.maximum(first, np.ceil(steps * rng.beta(np.maximum(times, 1), 1)))
        runs[run] = pa.table(
            {
                "sample_id": kept_ids.filter(pa.array(drawn)),
                "run_id": pa.repeat(pa.scalar(f"cotir-12b/{run}"), int(drawn.sum())),
                "first_step": pa.array(np.maximum(first, 1)[drawn], pa.int32()),
                "last_step": pa.array(last.astype(np.int32)[drawn], pa.int32()),
                "times": pa.array(times[drawn], pa.int32()),
            }
        )
    return runs


def _bench_tables(
    spec: SourceSpec, bench_ids: pa.Array, bench_room: dict[str, int], rng: np.random.Generator
) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """Bench set members among the chunk's test samples, and every method's scores of them."""
    bench_of = rng.integers(0, len(BENCHES), len(bench_ids))
    benches: dict[str, pa.Table] = {}
    evaluations: dict[str, pa.Table] = {}
    for number, name in enumerate(BENCHES):
        members = bench_ids.filter(pa.array(bench_of == number))[: bench_room[name]]
        bench_room[name] -= len(members)
        if not len(members):
            continue
        # The bench manifest's columns (evaluation.bench_sets.write_bench_lineage).
        benches[name] = pa.table(
            {
                "sample_id": members,
                "bench_set": pa.repeat(pa.scalar(name), len(members)),
                "record_id": join(f"{name}-", hex_strings(rng, len(members), 10)),
                "degradation": choose(rng, list(spec.labels), len(members)),
                "origin": join("clean/", hex_strings(rng, len(members), 8), ".png"),
                "recipe": pa.repeat(pa.scalar("cotir_bench:haze+noise"), len(members)),
                "seed": pa.array(rng.integers(0, 2**31, len(members))),
            }
        )
        for method in METHODS:
            rows = len(members) * len(PROMPTS)
            evaluations[f"{method}/{name}"] = pa.table(
                {
                    "sample_id": pa.concat_arrays([members] * len(PROMPTS)),
                    "record_id": pa.concat_arrays([members] * len(PROMPTS)),
                    "bench": pa.repeat(pa.scalar(name), rows),
                    "method": pa.repeat(pa.scalar(method), rows),
                    "prompt_kind": pa.array(np.repeat(PROMPTS, len(members))),
                    "evaluation_row": pa.array(
                        [f"{name}/{method}/{prompt}" for prompt in PROMPTS for _ in members]
                    ),
                    "output_sha256": hex_strings(rng, rows, 64),
                    "score:psnr": pa.array(rng.normal(24, 3, rows)),
                    "score:ssim": pa.array(rng.uniform(0.5, 0.95, rows)),
                }
            )
    return benches, evaluations


class Writers:
    """One Parquet writer per stage file, opened on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open: dict[str, pq.ParquetWriter] = {}

    def write(self, key: str, table: pa.Table) -> None:
        writer = self.open.get(key)
        if writer is None:
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(str(path), table.schema, compression="zstd")
            self.open[key] = writer
        writer.write_table(table, row_group_size=CHUNK_ROWS)

    def close(self, prefix: str = "") -> None:
        for key in [key for key in self.open if key.startswith(prefix)]:
            self.open.pop(key).close()


def generate(store: Path, total: int, sources: int, seed: int, probes: int) -> dict[str, Any]:
    """Write every stage's files for ``total`` samples; return probe ids and a busy source."""
    rng = np.random.default_rng(seed)
    specs = source_specs(total, sources, seed)
    trained_total = int(total * 0.9)  # ok, train split, annotated and kept: about 90 %
    bench_room = dict.fromkeys(BENCHES, BENCH_SIZE)
    writers = Writers(store)
    probe_ids: list[str] = []
    probability = min(1.0, probes * 3 / max(total, 1))
    dropped_by_source: dict[str, int] = {}
    for spec in specs:
        for start in range(0, spec.samples, CHUNK_ROWS):
            count = min(CHUNK_ROWS, spec.samples - start)
            chunk = make_chunk(
                spec, start, count, rng, trained_total=trained_total, bench_room=bench_room
            )
            writers.write(f"raw_pairs/{spec.name}/pairs.parquet", chunk.plan)
            writers.write(f"pair_shards/{spec.name}/manifest.parquet", chunk.manifest)
            writers.write(f"cot_annotations/{spec.name}/manifest.parquet", chunk.annotations)
            writers.write(f"filtered_annotations/{spec.name}/manifest.parquet", chunk.filters)
            writers.write(f"training_shards/{spec.name}/manifest.parquet", chunk.training_shards)
            for run, table in chunk.runs.items():
                writers.write(f"training_runs/{run}/manifest.parquet", table)
            for name, table in chunk.benches.items():
                writers.write(f"bench_sets/{name}/manifest.parquet", table)
            for name, table in chunk.evaluations.items():
                writers.write(f"metric_scores/{name}.samples.parquet", table)
            picked = chunk.sample_ids.filter(pa.array(rng.random(count) < probability))
            probe_ids.extend(picked.to_pylist())
            dropped = pc.sum(pc.equal(chunk.manifest.column("status"), "dropped")).as_py() or 0
            dropped_by_source[spec.name] = dropped_by_source.get(spec.name, 0) + dropped
        writers.close(f"raw_pairs/{spec.name}/")
        writers.close(f"pair_shards/{spec.name}/")
        writers.close(f"cot_annotations/{spec.name}/")
        writers.close(f"filtered_annotations/{spec.name}/")
        writers.close(f"training_shards/{spec.name}/")
        print(f"  generated {spec.name:<22} {spec.samples:>9,} samples", flush=True)
    writers.close()
    # The training stage writes a run's rows sorted by sample id in small row groups
    # (models.training_stage.record_training_run); do the same with the generated ones.
    for run, _, _ in RUNS:
        path = store / "training_runs" / run / "manifest.parquet"
        if path.is_file():
            table = pq.read_table(path).sort_by("sample_id")
            pq.write_table(table, path, compression="zstd", row_group_size=16_384)
    random.Random(seed).shuffle(probe_ids)
    ranked = sorted(dropped_by_source.items(), key=lambda item: item[1])
    first_run = pq.read_table(
        store / "training_runs" / RUNS[0][0] / "manifest.parquet", columns=["sample_id"]
    )
    bench = pq.read_table(store / "bench_sets" / BENCHES[0] / "manifest.parquet")
    return {
        "run_probe": first_run.column("sample_id")[len(first_run) // 2].as_py(),
        "bench_probe": bench.column("sample_id")[0].as_py(),
        "probe_ids": probe_ids[:probes],
        "query_source": ranked[len(ranked) // 2][0],
        "query_source_dropped": ranked[len(ranked) // 2][1],
    }


# -- measurements -------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed_child(command: list[str], env: dict[str, str]) -> tuple[float, int, str, int]:
    """Run ``command``; return (wall seconds, peak RSS in bytes, stdout, exit code)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode()
        if process.returncode not in (0,):
            sys.stderr.write(err.read().decode()[-3000:])
    return elapsed, usage.ru_maxrss * 1024, text, process.returncode


def require(condition: bool, what: str) -> None:
    """Stop the benchmark when a result is wrong: a fast wrong answer is no result."""
    if not condition:
        raise SystemExit(f"check failed: {what}")


def latencies(function: Any, ids: list[str]) -> list[float]:
    values = []
    for sample_id in ids:
        started = time.perf_counter()
        function(sample_id)
        values.append((time.perf_counter() - started) * 1000)
    return values


def duckdb_lookup_factory(index: LineageIndex, store: Path) -> Any:
    import duckdb

    connection = duckdb.connect()
    connection.execute("SET threads TO 2")

    def lookup(sample_id: str) -> dict[str, Any] | None:
        part = index._part_for(sample_id)
        if part is None:
            return None
        path = str(store / part.key)
        cursor = connection.execute(
            "SELECT * FROM read_parquet(?) WHERE sample_id = ?", [path, sample_id]
        )
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([column[0] for column in cursor.description], row, strict=True))

    return lookup


def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<58} {value:>14}  {note}")


def _generate(store: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write the synthetic store and print the size of each stage's input files."""
    print("generate (every stage's per-sample rows, real schemas):", flush=True)
    started = time.perf_counter()
    generated = generate(store, args.samples, args.sources, args.seed, args.lookups)
    input_bytes = {
        stage: sum(path.stat().st_size for path in (store / stage).rglob("*.parquet"))
        for stage in (
            "raw_pairs",
            "pair_shards",
            "cot_annotations",
            "filtered_annotations",
            "training_shards",
            "training_runs",
            "bench_sets",
            "metric_scores",
        )
    }
    print(f"  generated in {time.perf_counter() - started:.0f} s; input files:")
    for stage, size in input_bytes.items():
        line(f"{stage}/ manifests", f"{size / 1e6:,.1f} MB")

    return generated


def _build(store: Path, env: dict[str, str], args: argparse.Namespace) -> tuple[int, bool]:
    """Build the index in a subprocess; print its time, memory and size. Returns the
    build's peak RSS and whether every stage stays under the per-sample size target."""
    input_bytes = {
        stage: sum(path.stat().st_size for path in (store / stage).rglob("*.parquet"))
        for stage in ("raw_pairs", "pair_shards")
    }
    print("build (`cotir lineage --build --json`, a subprocess):", flush=True)
    seconds, peak, output, code = timed_child([str(COTIR), "lineage", "--build", "--json"], env)
    if code != 0:
        raise SystemExit(f"the build failed with exit code {code}")
    report = json.loads(output)
    line("build wall time", f"{seconds:,.1f} s", f"({args.samples / seconds:,.0f} samples/s)")
    line("build peak RSS", f"{peak / 2**30:,.2f} GiB", "(target < 8 GiB)")
    line("samples indexed", f"{report['samples']:,}")
    line("parts / hex digits", f"{report['parts']} / {report['hex_digits']}")
    line("status counts", json.dumps(report["status_counts"]))
    line("furthest stage counts", "", json.dumps(report["stage_counts"]))

    print("size on disk (compressed column chunks per group, bytes per sample):")
    samples = max(report["samples"], 1)
    per_stage_ok = True
    for group, size in report["bytes_by_group"].items():
        per_sample = size / samples
        if group in {stage.name for stage in STAGES} or group in ("identity", "overall"):
            per_stage_ok &= per_sample < TARGET_BYTES_PER_STAGE
        line(f"{group}", f"{per_sample:,.1f} B", f"{size / 1e6:,.1f} MB")
    line(
        "total",
        f"{report['bytes_total'] / samples:,.1f} B",
        f"{report['bytes_total'] / 1e6:,.1f} MB",
    )
    pair_input = input_bytes["pair_shards"] + input_bytes["raw_pairs"]
    line(
        "index / (raw_pairs + pair_shards manifests)",
        f"{report['bytes_total'] / pair_input:.2f}x",
    )

    return peak, per_stage_ok


def _warm_lookups(store: Path, probes: list[str], duckdb: Any) -> dict[str, tuple[float, float]]:
    """Point look-ups in this process (pyarrow, and DuckDB when installed): p50/p99 ms."""
    index = open_lineage(store)
    misses = hex_strings(np.random.default_rng(1), 200, 32).to_pylist()
    print(f"point look-ups, warm process, {len(probes)} random ids:", flush=True)
    fresh = latencies(lambda sample_id: open_lineage(store).lookup(sample_id), probes)
    first = latencies(index.lookup, probes)
    warm = latencies(index.lookup, probes)
    require(all(index.lookup(i) is not None for i in probes[:50]), "probe ids are indexed")
    miss = latencies(index.lookup, misses)
    results: dict[str, tuple[float, float]] = {}
    for label, values in (
        ("pyarrow lookup() (opens the index every call)", fresh),
        ("pyarrow LineageIndex, first touch of each part", first),
        ("pyarrow LineageIndex, warm (footers cached)", warm),
        ("pyarrow LineageIndex, warm, ids not indexed", miss),
    ):
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        results[label] = (p50, p99)
        line(label, f"p50 {p50:6.2f} ms", f"p99 {p99:6.2f} ms")
    if duckdb is not None:
        duck = duckdb_lookup_factory(index, store)
        latencies(duck, probes[:20])
        duck_values = latencies(duck, probes)
        check = duck(probes[0])
        require(check is not None and check["sample_id"] == probes[0], "duckdb look-up")
        p50, p99 = statistics.median(duck_values), percentile(duck_values, 0.99)
        line(
            "duckdb read_parquet(part) WHERE sample_id = ?, warm",
            f"p50 {p50:6.2f} ms",
            f"p99 {p99:6.2f} ms",
        )
        base50, base99 = results["pyarrow lookup() (opens the index every call)"]
        line(
            "ratio duckdb / pyarrow lookup()",
            f"p50 {p50 / base50:5.2f}x",
            f"p99 {p99 / base99:5.2f}x",
        )
        warm50, warm99 = results["pyarrow LineageIndex, warm (footers cached)"]
        line(
            "ratio duckdb / pyarrow LineageIndex warm",
            f"p50 {p50 / warm50:5.2f}x",
            f"p99 {p99 / warm99:5.2f}x",
        )

    return results


def _cold_lookups(
    store: Path,
    env: dict[str, str],
    generated: dict[str, Any],
    args: argparse.Namespace,
    duckdb: Any,
) -> list[float]:
    """``cotir lineage <id>`` in fresh processes, and the bare costs under it."""
    probes = generated["probe_ids"]
    print(f"cold look-up, a new process per call ({args.cold_calls} calls):", flush=True)
    cold = []
    for sample_id in probes[: args.cold_calls]:
        elapsed, _, text, code = timed_child([str(COTIR), "lineage", sample_id], env)
        require(code == 0 and sample_id in text, f"cold CLI look-up: {text}")
        cold.append(elapsed)
    line(
        "`cotir lineage <id>` end to end",
        f"median {statistics.median(cold):.2f} s",
        f"max {max(cold):.2f} s",
    )
    # Chains that reach the scores and the training steps: a bench sample scored by
    # every method, and a sample the 120k-step run trained on.
    chains = (
        ("bench sample, 10 methods x 2 prompts", generated["bench_probe"], "scores:"),
        ("trained sample, its runs' steps", generated["run_probe"], "steps "),
    )
    for label, sample_id, marker in chains:
        chain = []
        for _ in range(args.cold_calls):
            elapsed, _, text, code = timed_child([str(COTIR), "lineage", sample_id], env)
            require(code == 0 and marker in text, f"cold CLI chain of a {label}: {text}")
            chain.append(elapsed)
        line(
            f"`cotir lineage <id>`, {label}",
            f"median {statistics.median(chain):.2f} s",
            f"max {max(chain):.2f} s",
        )
    cold_json = [
        timed_child([str(COTIR), "lineage", sample_id, "--json"], env)[0]
        for sample_id in probes[: args.cold_calls]
    ]
    line(
        "`cotir lineage <id> --json`",
        f"median {statistics.median(cold_json):.2f} s",
        f"max {max(cold_json):.2f} s",
    )
    _cold_baselines(store, env, probes[: args.cold_calls], duckdb)
    return cold


def _median_cold_script(script: str, store: Path, probes: list[str], env: dict[str, str]) -> float:
    """Median seconds of ``python -c script STORE ID``, a fresh process per probe id."""
    return statistics.median(
        timed_child([sys.executable, "-c", script, str(store), sample_id], env)[0]
        for sample_id in probes
    )


def _cold_baselines(store: Path, env: dict[str, str], probes: list[str], duckdb: Any) -> None:
    """What a cold look-up costs without the CLI: Python and the CLI's import, and the
    bare look-up through pyarrow and through DuckDB."""
    python = sys.executable
    bare = [
        timed_child([python, "-c", "import cotir_pipeline.cli"], env)[0] for _ in range(len(probes))
    ]
    line(
        "  of which: start Python + import cotir_pipeline.cli",
        f"median {statistics.median(bare):.2f} s",
    )
    if duckdb is not None:
        script = (
            "import json, sys, duckdb\n"
            "store, sample_id = sys.argv[1], sys.argv[2]\n"
            "meta = json.load(open(store + '/sample_lineage/_index.json'))\n"
            "digits = meta['hex_digits']\n"
            "bucket = sample_id[:digits] if digits else 'all'\n"
            "key = next(p['key'] for p in meta['parts'] if p['bucket'] == bucket)\n"
            "row = duckdb.execute('SELECT * FROM read_parquet(?) WHERE sample_id = ?',"
            " [store + '/' + key, sample_id]).fetchone()\n"
            "print(row[0])\n"
        )
        duck_cold = _median_cold_script(script, store, probes, env)
        line("python -c 'duckdb look-up' (no CLI, no settings)", f"median {duck_cold:.2f} s")
        pyarrow_script = (
            "import sys\nfrom cotir_pipeline.lineage.read import lookup\n"
            "print(lookup(sys.argv[1], sys.argv[2]).sample_id)\n"
        )
        arrow_cold = _median_cold_script(pyarrow_script, store, probes, env)
        line("python -c 'pyarrow lookup()' (no CLI, no settings)", f"median {arrow_cold:.2f} s")
        line(
            "ratio cold duckdb / cold pyarrow",
            f"{duck_cold / arrow_cold:5.2f}x",
        )


def _listings(store: Path, env: dict[str, str], generated: dict[str, Any], duckdb: Any) -> None:
    """Filtered listings, warm with pyarrow (and DuckDB) and cold through the CLI."""
    source = generated["query_source"]
    filters = [
        f"source = '{source}' and status = 'dropped'",
        "stage = 'filtered_annotations' and filter_score < 0.2",
    ]
    print("filtered listings (limit 50, count of all matches):", flush=True)
    for text in filters:
        index_q = open_lineage(store)
        started = time.perf_counter()
        result = index_q.query(text, limit=50)
        arrow_s = time.perf_counter() - started
        started = time.perf_counter()
        index_q.query(text, limit=50)
        arrow_warm = time.perf_counter() - started
        line(
            f"pyarrow: {text}",
            f"{arrow_s * 1000:,.0f} ms",
            f"warm {arrow_warm * 1000:,.0f} ms, {result.matched:,} matches",
        )
        elapsed, _, output, code = timed_child(
            [str(COTIR), "lineage", "--where", text, "--limit", "50", "--json"], env
        )
        require(code == 0 and json.loads(output)["matched"] == result.matched, "CLI --where")
        line("  cold `cotir lineage --where ... --limit 50`", f"{elapsed:,.2f} s")
        if duckdb is not None:
            import duckdb as duck_module

            connection = duck_module.connect()
            connection.execute("SET threads TO 2")
            glob = str(store / "sample_lineage" / "parts" / "*.parquet")
            columns = ", ".join(DEFAULT_QUERY_COLUMNS)
            started = time.perf_counter()
            count = connection.execute(
                f"SELECT count(*) FROM read_parquet('{glob}') WHERE {text}"
            ).fetchone()[0]
            rows = connection.execute(
                f"SELECT {columns} FROM read_parquet('{glob}') WHERE {text} "
                "ORDER BY sample_id LIMIT 50"
            ).fetchall()
            duck_s = time.perf_counter() - started
            require(count == result.matched, f"duckdb count {count} != {result.matched}")
            same = [row[0] for row in rows] == [row["sample_id"] for row in result.rows]
            require(same, "duckdb and pyarrow list the same first rows")
            line(
                "  duckdb: count + first 50 by sample_id",
                f"{duck_s * 1000:,.0f} ms",
                f"ratio duckdb / pyarrow {duck_s / arrow_s:.2f}x",
            )


def _print_targets(
    results: dict[str, tuple[float, float]], cold: list[float], per_stage_ok: bool, peak: int
) -> None:
    """PASS or MISS for each target of the lineage issue."""
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("targets:")
    warm99 = results["pyarrow lookup() (opens the index every call)"][1]
    line(
        "warm look-up p99 < 50 ms (lookup() per call)",
        "PASS" if warm99 < TARGET_WARM_MS else "MISS",
        f"{warm99:.2f} ms",
    )
    line(
        "cold CLI < 2 s",
        "PASS" if max(cold) < TARGET_COLD_S else "MISS",
        f"max {max(cold):.2f} s",
    )
    line("< 100 bytes per sample per stage", "PASS" if per_stage_ok else "MISS")
    line(
        "build peak RSS < 8 GiB",
        "PASS" if peak < 8 * 2**30 else "MISS",
        f"{peak / 2**30:.2f} GiB",
    )
    line("(this benchmark process's own peak RSS)", f"{own_peak / 2**30:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5_200_000)
    parser.add_argument("--sources", type=int, default=60)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--cold-calls", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the generated store")
    parser.add_argument("--no-duckdb", action="store_true", help="skip the DuckDB comparison")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cotir-bench-lineage-", dir=args.workdir))
    store = work / "store"
    env = {**os.environ, "COTIR_STORE": str(store), "COTIR_PROFILE": "demo"}
    duckdb: Any = None
    if not args.no_duckdb:
        try:
            duckdb = importlib.import_module("duckdb")
        except ImportError:
            duckdb = None
    print(
        f"bench_lineage: {args.samples:,} samples, {args.sources} sources; "
        f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"pyarrow {pa.__version__}, duckdb {duckdb.__version__ if duckdb else 'not installed'}"
    )
    try:
        generated = _generate(store, args)
        peak, per_stage_ok = _build(store, env, args)
        results = _warm_lookups(store, generated["probe_ids"], duckdb)
        cold = _cold_lookups(store, env, generated, args, duckdb)
        _listings(store, env, generated, duckdb)
        _print_targets(results, cold, per_stage_ok, peak)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
