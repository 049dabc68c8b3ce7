"""Benchmark the shard stage against the PNG codec floor, and its 2-process speed-up.

For N fetched-style LQ/HQ pairs of real photo content it measures, in one run:

- floor: decode both PNG files and encode both as PNG (the codec work alone);
- stage, 1 process: ``write_pair_shards`` end to end (decode, crop/resize, encode,
  hash, tar, atomic store write, manifest);
- stage, 2 processes: the same with ``workers=2``.

It prints samples/s and the ratios stage/floor and 2-process/1-process, and a
projection of the hours to shard 5.2 M pairs on a 64-core node.

    .venv/bin/python scripts/bench_shard_stage.py --pairs 96 --size 512 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cotir_pipeline import demo_photos
from cotir_pipeline.images import load_rgb8
from cotir_pipeline.pair_stage import plan_fetched_pairs, write_pair_shards
from cotir_pipeline.shards import encode_png
from cotir_pipeline.sources.spec import SplitRule
from cotir_pipeline.store import LocalObjectStore

TOTAL_PAIRS = 5_200_000
NODE_CORES = 64


def make_pairs(root: Path, count: int, size: int) -> None:
    """Write ``count`` LQ/HQ PNG pairs of photo content at ``size`` x ``size``."""
    photos = [demo_photos.load_photo(photo) for photo in demo_photos.DEMO_PHOTOS]
    generator = np.random.default_rng(0)
    (root / "hq").mkdir(parents=True)
    (root / "lq").mkdir(parents=True)
    for index in range(count):
        photo = photos[index % len(photos)]
        image = Image.fromarray(photo).resize((size, size), Image.Resampling.BICUBIC)
        hq = np.asarray(image, dtype=np.int16)
        noise = generator.normal(0, 12, hq.shape)
        lq = np.clip(hq + noise, 0, 255).astype(np.uint8)
        Image.fromarray(hq.astype(np.uint8)).save(root / "hq" / f"{index:05d}.png")
        Image.fromarray(lq).save(root / "lq" / f"{index:05d}.png")


def codec_floor(root: Path) -> float:
    """Seconds to decode and re-encode every pair, nothing else."""
    started = time.perf_counter()
    for hq_path in sorted((root / "hq").iterdir()):
        for path in (hq_path, root / "lq" / hq_path.name):
            encode_png(load_rgb8(path).pixels)
    return time.perf_counter() - started


def stage(root: Path, workers: int, size: int, shard_size: int) -> float:
    """Seconds for the shard stage over every pair into a fresh local store."""
    rules = [SplitRule(name="train", lq_glob="lq/*.png", hq_glob="hq/*.png")]
    plan = plan_fetched_pairs("bench", root, rules, "noise")
    with tempfile.TemporaryDirectory(prefix="cotir-bench-store-") as store_dir:
        started = time.perf_counter()
        report = write_pair_shards(
            LocalObjectStore(Path(store_dir)),
            plan,
            size=size,
            shard_size=shard_size,
            fetched_root=root,
            workers=workers,
        )
        elapsed = time.perf_counter() - started
    if report.samples_ok != len(plan):
        raise RuntimeError(f"only {report.samples_ok} of {len(plan)} pairs were sharded")
    return elapsed


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=96, help="pairs to process per variant")
    parser.add_argument("--size", type=int, default=512, help="stored size (and source size)")
    parser.add_argument(
        "--shard-size", type=int, default=8,
        help="samples per shard (small, so 2 workers get an even share of shards)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant; best is kept")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cotir-bench-pairs-") as work:
        root = Path(work)
        make_pairs(root, arguments.pairs, arguments.size)
        floor = min(codec_floor(root) for _ in range(arguments.repeats))
        one = min(
            stage(root, 1, arguments.size, arguments.shard_size) for _ in range(arguments.repeats)
        )
        two = min(
            stage(root, 2, arguments.size, arguments.shard_size) for _ in range(arguments.repeats)
        )

    rate = {name: arguments.pairs / seconds for name, seconds in
            (("floor", floor), ("stage_1", one), ("stage_2", two))}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"pairs: {arguments.pairs} at {arguments.size}x{arguments.size}, "
          f"best of {arguments.repeats}")
    print(f"codec floor (1 process):  {rate['floor']:7.2f} pairs/s")
    print(f"shard stage (1 process):  {rate['stage_1']:7.2f} pairs/s")
    print(f"shard stage (2 processes):{rate['stage_2']:7.2f} pairs/s")
    print(f"ratio stage/floor:        {rate['stage_1'] / rate['floor']:.3f}")
    print(f"speed-up 2 processes:     {rate['stage_2'] / rate['stage_1']:.3f}x")
    # Per-process efficiency at 2 processes, capped at 1: a 64-core node is not assumed
    # to scale better than linearly.
    efficiency = min(1.0, rate["stage_2"] / rate["stage_1"] / 2)
    per_node = rate["stage_1"] * NODE_CORES * efficiency
    hours = TOTAL_PAIRS / per_node / 3600
    print(
        f"projection: {TOTAL_PAIRS:,} pairs on a {NODE_CORES}-core node at the measured "
        f"per-core rate and 2-process efficiency ({efficiency:.2f}): {hours:.1f} h"
    )


if __name__ == "__main__":
    main()
