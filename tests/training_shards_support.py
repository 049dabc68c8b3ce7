"""Helpers for the training tests (no tests here): synthetic training shards, bad records.

Shards follow the release layout the annotation stage writes
(``<degradation>/<degradation>-NNNNNN.tar`` with ``<key>.hq.png``, ``<key>.lq.png``,
``<key>.meta.json``). Each degradation shares one CoT answer, so a training run encodes
few distinct texts and stays fast on a CPU.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cotir_pipeline.shards import ShardSample, encode_png, write_shard

DEGRADATIONS = ("haze", "lost_color", "noise", "rain")


def answer_for(degradation: str) -> str:
    """A CoT answer in the release's prefixed format."""
    return (
        f"scene description: a small test scene. degradation description: {degradation} "
        f"covers the image. enhancement plan: remove the {degradation}. answer: done."
    )


def make_sample(key: str, degradation: str, size: int = 32, seed: int = 0) -> ShardSample:
    """One valid record with random images of ``size`` pixels."""
    rng = np.random.default_rng(seed)
    hq = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    lq = (hq // 2).astype(np.uint8)
    meta = {
        "cot": {
            "questions": [f"vague question {key}", f"precise question {key}"],
            "answers": answer_for(degradation),
        },
        "deg": degradation,
    }
    return ShardSample(key=key, hq_png=encode_png(hq), lq_png=encode_png(lq), meta=meta)


def write_shards(
    root: Path,
    degradations: Sequence[str] = DEGRADATIONS,
    *,
    samples_per_shard: int = 3,
    shards_per_degradation: int = 1,
    size: int = 32,
) -> Path:
    """Write valid shards; keys are ``<deg>x<shard>x<index>`` (no dots, as WebDataset wants)."""
    for degradation in degradations:
        folder = root / degradation
        for shard in range(shards_per_degradation):
            samples = [
                make_sample(
                    f"{degradation.replace('_', '')}x{shard}x{index}",
                    degradation,
                    size=size,
                    seed=zlib.crc32(f"{degradation}/{shard}/{index}".encode()),
                )
                for index in range(samples_per_shard)
            ]
            write_shard(samples, folder / f"{degradation}-{shard:06d}.tar")
    return root


def write_raw_tar(path: Path, members: Sequence[tuple[str, bytes]]) -> Path:
    """A tar with exactly these members (to build broken records)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def members_of(sample: ShardSample) -> list[tuple[str, bytes]]:
    """The three members of a valid record."""
    return [
        (f"{sample.key}.hq.png", sample.hq_png),
        (f"{sample.key}.lq.png", sample.lq_png),
        (f"{sample.key}.meta.json", json.dumps(dict(sample.meta)).encode()),
    ]
