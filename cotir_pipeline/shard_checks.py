"""Read a source's shards back and check them against its manifest; draw a preview grid.

The checks re-read what was written instead of trusting the writer: every ``ok``
manifest row must be a sample in the shard it names and every shard sample must
have its row, each sample's PNGs must have the sha256 digests its row recorded, sample
ids are unique, and every sample that is not ``ok`` says why. A shard that fails (a
truncated tar, a flipped bit) loses its completion marker, so the next run rebuilds it.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cotir_pipeline.scratch import scratch_dir
from cotir_pipeline.shards import (
    STATUS_OK,
    CorruptShardError,
    ShardSample,
    decode_png,
    read_manifest,
    read_shard,
)
from cotir_pipeline.store import ObjectStore


@dataclass
class ShardVerification:
    """Outcome of :func:`verify_source_shards`."""

    manifest_rows: int = 0
    shards_checked: int = 0
    shards_total: int = 0
    mismatches: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    rows_without_reason: list[str] = field(default_factory=list)
    by_task: dict[str, int] = field(default_factory=dict)
    preview_samples: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    #: Tar keys that are truncated or whose samples differ from their recorded digests.
    damaged_shards: list[str] = field(default_factory=list)

    @property
    def manifest_matches_shards(self) -> bool:
        """Rows and shard contents agree on every checked shard."""
        return not self.mismatches


def verify_source_shards(
    store: ObjectStore,
    prefix: str,
    *,
    max_shards: int | None = 64,
    preview_count: int = 8,
    mark_damaged_for_rebuild: bool = True,
) -> ShardVerification:
    """Check the shards under ``prefix`` (``pair_shards/<source>``) against its manifest.

    At most ``max_shards`` shards (None: all) are downloaded and compared, keys and
    member digests (spread evenly over the sorted list, so a large source is sampled,
    not skipped); the id and reason checks always cover the whole manifest. With
    ``mark_damaged_for_rebuild`` a damaged shard's per-shard manifest (its completion
    marker) is removed, so the next run of the stage rebuilds that shard.
    """
    rows = read_manifest(store.get_bytes(f"{prefix}/manifest.parquet")).to_pylist()
    result = ShardVerification(manifest_rows=len(rows))
    ids = Counter(row["sample_id"] for row in rows)
    result.duplicate_ids = sorted(sample for sample, count in ids.items() if count > 1)
    result.rows_without_reason = sorted(
        row["sample_id"] for row in rows if row["status"] != STATUS_OK and not row["reason"]
    )
    result.by_task = dict(
        sorted(Counter(row["task"] for row in rows if row["status"] == STATUS_OK).items())
    )
    expected, degradation_of, digests = _recorded_members(rows)
    tar_keys = sorted(info.key for info in store.list(f"{prefix}/") if info.key.endswith(".tar"))
    result.shards_total = len(tar_keys)
    unknown = set(expected) - {store.uri(key) for key in tar_keys}
    result.mismatches += [f"manifest names a missing shard {uri}" for uri in sorted(unknown)]
    if max_shards is not None and len(tar_keys) > max_shards:
        step = len(tar_keys) / max_shards
        tar_keys = [tar_keys[int(index * step)] for index in range(max_shards)]
    shown_degradations: set[str] = set()
    with scratch_dir("verify") as work_dir:
        local = Path(work_dir) / "shard.tar"
        for key in tar_keys:
            store.download_file(key, local)
            try:
                samples = list(read_shard(local))
            except CorruptShardError as error:
                result.mismatches.append(f"{key}: {str(error).split(' is ', 1)[-1]}")
                result.damaged_shards.append(key)
                result.shards_checked += 1
                continue
            changed = _changed_members(samples, digests)
            if changed:
                result.mismatches.append(
                    f"{key}: {len(changed)} member(s) differ from their manifest sha256, "
                    f"e.g. {changed[0]}"
                )
                result.damaged_shards.append(key)
            for sample in samples:
                label = degradation_of.get(sample.key, "?")
                if len(result.preview_samples) < preview_count and label not in shown_degradations:
                    shown_degradations.add(label)
                    result.preview_samples.append((label, sample.lq_png, sample.hq_png))
            keys = [sample.key for sample in samples]
            result.mismatches += _key_mismatches(key, keys, expected.get(store.uri(key), set()))
            result.shards_checked += 1
    if mark_damaged_for_rebuild and result.damaged_shards:
        for key in result.damaged_shards:
            store.delete(key.removesuffix(".tar") + ".parquet")
        store.delete(f"{prefix}/_SUCCESS.json")
    return result


def _recorded_members(
    rows: list[dict[str, Any]],
) -> tuple[dict[str, set[str]], dict[str, str], dict[str, tuple[str | None, str | None]]]:
    """From the manifest's ok rows: the sample keys per shard URI, each key's degradation,
    and its recorded (HQ, LQ) sha256 digests."""
    expected: dict[str, set[str]] = defaultdict(set)
    degradation_of: dict[str, str] = {}
    digests: dict[str, tuple[str | None, str | None]] = {}
    for row in rows:
        if row["status"] == STATUS_OK:
            expected[row["shard_uri"]].add(row["shard_key"])
            degradation_of[row["shard_key"]] = row["degradation"]
            digests[row["shard_key"]] = (row.get("hq_sha256"), row.get("lq_sha256"))
    return expected, degradation_of, digests


def _changed_members(
    samples: list[ShardSample], digests: dict[str, tuple[str | None, str | None]]
) -> list[str]:
    """Members whose bytes no longer have the sha256 the manifest recorded."""
    return [
        f"{sample.key}.{name}"
        for sample in samples
        for name, data, recorded in (
            ("hq.png", sample.hq_png, digests.get(sample.key, (None, None))[0]),
            ("lq.png", sample.lq_png, digests.get(sample.key, (None, None))[1]),
        )
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded
    ]


def _key_mismatches(shard: str, keys: list[str], wanted: set[str]) -> list[str]:
    """A shard's sample keys against its manifest rows: repeats, rows or samples missing."""
    problems = []
    if len(keys) != len(set(keys)):
        problems.append(f"{shard}: repeated sample keys")
    if set(keys) != wanted:
        missing, extra = len(wanted - set(keys)), len(set(keys) - wanted)
        problems.append(
            f"{shard}: {missing} manifest rows without a sample, {extra} samples without a row"
        )
    return problems


def preview_grid_png(samples: list[tuple[str, bytes, bytes]], tile: int = 96) -> bytes:
    """A PNG with one row per sample: LQ | HQ, each resized to ``tile`` pixels."""
    if not samples:
        raise ValueError("no samples to preview")
    rows = []
    for _, lq_png, hq_png in samples:
        tiles = [
            np.asarray(
                Image.fromarray(decode_png(data)).resize((tile, tile), Image.Resampling.BILINEAR)
            )
            for data in (lq_png, hq_png)
        ]
        rows.append(np.concatenate([tiles[0], np.full((tile, 4, 3), 255, np.uint8), tiles[1]], 1))
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buffer, format="PNG")
    return buffer.getvalue()
