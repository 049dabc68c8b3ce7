"""Benchmark the training run id's data part at the full benchmark's size: ``shards_digest``.

Every materialization of a ``cotir_checkpoint`` asset computes the run id, which hashes
the training shards' manifest (one row per kept sample; 5.2 M rows for the full
benchmark). This script writes a manifest of that size with the real columns (sample
ids, sources, degradations, shard keys and the two store-URI columns the digest leaves
out) into a local store, then times, in one process:

- baseline: reading the manifest from the store into an Arrow table;
- the digest by its definition, value by value in Python (what ``shards_digest`` did
  until 2026-12-07);
- ``models.training_stage.shards_digest`` (Arrow kernels) on the same store;

each in a fresh process, and prints both, their ratio and each process's peak RSS.

    PYTHONPATH=. .venv/bin/python scripts/bench_run_key.py --rows 5200000
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cotir_pipeline.annotation_stage import TRAINING_SHARDS_PREFIX
from cotir_pipeline.store import LocalObjectStore
from models.training_stage import _reference_table_digest, shards_digest

SHARD_SIZE = 1000
DEGRADATIONS = 22
SOURCES = 83
CHUNK = 200_000
MANIFEST_KEY = f"{TRAINING_SHARDS_PREFIX}/manifest.parquet"


def manifest_chunk(start: int, rows: int, root: str) -> pa.Table:
    """Rows ``start`` .. ``start + rows`` of a training-shards manifest shaped like the stage's."""
    generator = np.random.default_rng(start)
    numbers = generator.integers(0, 2**63, size=rows, dtype=np.int64)
    ids = [f"{value:032x}" for value in numbers]
    indexes = range(start, start + rows)
    degradation = [f"degradation_{index % DEGRADATIONS:02d}" for index in indexes]
    shard = [
        f"{root}/training_shards/{d}/{d}-{index // SHARD_SIZE:06d}.tar"
        for d, index in zip(degradation, indexes, strict=True)
    ]
    return pa.table(
        {
            "sample_id": ids,
            "source": [f"source_{index % SOURCES:02d}" for index in indexes],
            "degradation": degradation,
            "pair_shard_uri": [uri.replace("training_shards", "pair_shards") for uri in shard],
            "shard_uri": shard,
            "shard_key": ids,
        }
    )


def write_manifest(store: LocalObjectStore, rows: int) -> float:
    """Write the manifest in chunks (little memory); its size in MB."""
    path = store.root / MANIFEST_KEY
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for start in range(0, rows, CHUNK):
        chunk = manifest_chunk(start, min(CHUNK, rows - start), store.url)
        writer = writer or pq.ParquetWriter(path, chunk.schema)
        writer.write_table(chunk)
    if writer is not None:
        writer.close()
    return path.stat().st_size / 1e6


def measure(store_dir: str, what: str) -> None:
    """In a fresh process: time one operation, print seconds and the peak RSS in MB."""
    store = LocalObjectStore(Path(store_dir))
    started = time.perf_counter()
    if what == "read":
        pq.read_table(io.BytesIO(store.get_bytes(MANIFEST_KEY)))
        result = ""
    elif what == "definition":
        table = pq.read_table(io.BytesIO(store.get_bytes(MANIFEST_KEY)))
        kept = sorted(name for name in table.column_names if not name.endswith("_uri"))
        result = _reference_table_digest(table.select(kept), kept)
    else:
        result = shards_digest(store)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{seconds} {peak} {result}", flush=True)


def run_child(store_dir: str, what: str) -> tuple[float, float, str]:
    """Seconds, peak RSS (MB) and output of :func:`measure` in a new process."""
    completed = subprocess.run(
        [sys.executable, __file__, "--measure", what, "--store", store_dir],
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"measuring {what} failed: {completed.stderr[-2000:]}")
    seconds, peak, *rest = completed.stdout.split()
    return float(seconds), float(peak), (rest[0] if rest else "")


def main() -> None:
    """Write the manifest, time the baseline and the digest in fresh processes, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_200_000)
    parser.add_argument(
        "--measure", choices=("read", "definition", "digest"), help=argparse.SUPPRESS
    )
    parser.add_argument("--store", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.measure:
        measure(arguments.store, arguments.measure)
        # Skip the interpreter's teardown: with its output on a pipe, a library's thread
        # pool aborted the child at exit ("terminate called without an active
        # exception") after the result was printed.
        os._exit(0)
    with tempfile.TemporaryDirectory(prefix="cotir-bench-run-key-") as folder:
        size_mb = write_manifest(LocalObjectStore(Path(folder)), arguments.rows)
        read_seconds, read_peak, _ = run_child(folder, "read")
        old_seconds, old_peak, old_digest = run_child(folder, "definition")
        digest_seconds, digest_peak, digest = run_child(folder, "digest")
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(f"manifest: {arguments.rows:,} rows, {size_mb:.1f} MB Parquet; digest {digest[:16]}...")
    print("fresh process each   | seconds | peak RSS MB")
    print(f"read the manifest    | {read_seconds:7.2f} | {read_peak:11.0f}")
    print(f"digest, in Python    | {old_seconds:7.2f} | {old_peak:11.0f}")
    print(f"shards_digest        | {digest_seconds:7.2f} | {digest_peak:11.0f}")
    print(f"same digest both ways: {digest == old_digest}")
    print(
        f"shards_digest / in Python: {digest_seconds / old_seconds:.2f}x time, "
        f"{digest_peak / old_peak:.2f}x memory; / read: {digest_seconds / read_seconds:.1f}x time"
    )


if __name__ == "__main__":
    main()
