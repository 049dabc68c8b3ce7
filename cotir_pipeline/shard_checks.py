"""Read a source's shards back and check them against its manifest; draw a preview grid.

The checks re-read what was written instead of trusting the writer: every ``ok``
manifest row must be a sample in the shard it names and every shard sample must
have its row, sample ids are unique, and every sample that is not ``ok`` says why.
"""

from __future__ import annotations

import io
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cotir_pipeline.shards import STATUS_OK, decode_png, read_manifest, read_shard
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

    @property
    def manifest_matches_shards(self) -> bool:
        """Rows and shard contents agree on every checked shard."""
        return not self.mismatches


def verify_source_shards(
    store: ObjectStore, prefix: str, *, max_shards: int = 64, preview_count: int = 8
) -> ShardVerification:
    """Check the shards under ``prefix`` (``pair_shards/<source>``) against its manifest.

    At most ``max_shards`` shards are downloaded and compared (spread evenly over
    the sorted list, so a large source is sampled, not skipped); the id and reason
    checks always cover the whole manifest.
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
    expected: dict[str, set[str]] = defaultdict(set)
    degradation_of: dict[str, str] = {}
    for row in rows:
        if row["status"] == STATUS_OK:
            expected[row["shard_uri"]].add(row["shard_key"])
            degradation_of[row["shard_key"]] = row["degradation"]
    tar_keys = sorted(info.key for info in store.list(f"{prefix}/") if info.key.endswith(".tar"))
    result.shards_total = len(tar_keys)
    unknown = set(expected) - {store.uri(key) for key in tar_keys}
    result.mismatches += [f"manifest names a missing shard {uri}" for uri in sorted(unknown)]
    if len(tar_keys) > max_shards:
        step = len(tar_keys) / max_shards
        tar_keys = [tar_keys[int(index * step)] for index in range(max_shards)]
    shown_degradations: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="cotir-verify-") as work_dir:
        local = Path(work_dir) / "shard.tar"
        for key in tar_keys:
            store.download_file(key, local)
            keys = []
            for sample in read_shard(local):
                keys.append(sample.key)
                label = degradation_of.get(sample.key, "?")
                if len(result.preview_samples) < preview_count and label not in shown_degradations:
                    shown_degradations.add(label)
                    result.preview_samples.append((label, sample.lq_png, sample.hq_png))
            wanted = expected.get(store.uri(key), set())
            if len(keys) != len(set(keys)):
                result.mismatches.append(f"{key}: repeated sample keys")
            if set(keys) != wanted:
                missing, extra = len(wanted - set(keys)), len(set(keys) - wanted)
                result.mismatches.append(
                    f"{key}: {missing} manifest rows without a sample, "
                    f"{extra} samples without a row"
                )
            result.shards_checked += 1
    return result


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
