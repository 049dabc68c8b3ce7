"""WebDataset shards of LQ/HQ pairs and the per-sample manifest that describes them.

A shard is a plain tar (the WebDataset convention) whose samples are
``<key>.hq.png``, ``<key>.lq.png`` and ``<key>.meta.json``, the layout of the
public CoTIR release, so its loader and ``webdataset.WebDataset`` read our shards
as they are. Shards live in one folder per degradation label with a
``sizes.json`` (shard file name -> sample count) beside them.

Every sample also has one manifest row (:data:`MANIFEST_SCHEMA`), including the
samples that failed, with the reason: per-sample status is data, not a log line.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# The PNG codecs live in cotir_pipeline.png (fpng / libspng, Pillow as the fallback);
# they are re-exported here, where the shard code has always found them.
from cotir_pipeline.png import decode_png, encode_png  # noqa: F401 - re-exported

# Tar members are copied into the archive in one piece up to this size, so a PNG costs
# one write instead of one per 16 KiB (tarfile's default).
_MEMBER_COPY_CHUNK = 16 * 1024 * 1024

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_DROPPED = "dropped"

#: One row per sample of a source, whatever its fate.
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("item_key", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("degradation", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("shard_uri", pa.string()),
        pa.field("shard_key", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("hq_sha256", pa.string()),
        pa.field("lq_sha256", pa.string()),
        pa.field("recipe", pa.string()),
        pa.field("seed", pa.int64()),
        # [left, top, right, bottom] of the stored square in the source image's pixels.
        pa.field("crop_box", pa.list_(pa.int32())),
        # Conversions applied to the inputs (16-bit, grayscale, EXIF rotation, ...).
        pa.field("notes", pa.string()),
    ]
)


def sample_id(
    source: str, item_key: str, content_digests: Iterable[str], recipe: str, seed: int | None
) -> str:
    """Content hash of a sample: the project's one sample-id rule (docs/LINEAGE.md).

    Stable across re-runs, so nothing is written twice, and the same for a sample that
    was dropped, failed or made. ``content_digests`` are the sha256 digests of the input
    files' bytes (LQ and HQ for fetched pairs, the clean image for synthetic ones, the
    stored LQ and HQ of a bench sample); ``recipe`` is the recipe reference
    (``<set>:<name>``, "" for fetched pairs).
    """
    hasher = hashlib.sha256()
    for part in (source, item_key, *content_digests, recipe, "" if seed is None else str(seed)):
        hasher.update(part.encode("utf-8"))
        hasher.update(b"\0")
    return hasher.hexdigest()[:32]


@dataclass(frozen=True)
class ShardSample:
    """One pair as stored in a shard."""

    key: str
    hq_png: bytes
    lq_png: bytes
    meta: Mapping[str, Any]


@dataclass(frozen=True)
class ShardInfo:
    """What was written: sample count and size of the tar.

    The integrity record is per member, in the manifest (``hq_sha256``, ``lq_sha256``);
    a digest of the whole tar would hash every PNG a second time and is not kept.
    """

    samples: int
    size_bytes: int


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # fixed, so the same samples give byte-identical shards
    archive.addfile(info, io.BytesIO(data))


def write_shard(samples: Iterable[ShardSample], destination: Path) -> ShardInfo:
    """Write ``samples`` as a WebDataset tar at ``destination`` (deterministic bytes).

    Keys must not contain '.' (WebDataset splits member names at the first dot).
    """
    count = 0
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(destination, "wb") as handle:
        with tarfile.open(
            fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=_MEMBER_COPY_CHUNK
        ) as archive:
            for sample in samples:
                if "." in sample.key or "/" in sample.key or not sample.key:
                    raise ValueError(
                        f"shard key {sample.key!r} must be non-empty, without '.' or '/'"
                    )
                _add_member(archive, f"{sample.key}.hq.png", sample.hq_png)
                _add_member(archive, f"{sample.key}.lq.png", sample.lq_png)
                meta = json.dumps(dict(sample.meta), sort_keys=True).encode("utf-8")
                _add_member(archive, f"{sample.key}.meta.json", meta)
                count += 1
        size = handle.tell()
    return ShardInfo(samples=count, size_bytes=size)


class CorruptShardError(ValueError):
    """A stored shard cannot be read whole (truncated, damaged); the message names it."""


def read_shard(path: Path) -> Iterator[ShardSample]:
    """Samples of a shard written by :func:`write_shard`, in order.

    Raises :class:`CorruptShardError` naming ``path`` when the tar is truncated or
    damaged (instead of tarfile's bare error, which names no file).
    """
    parts: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, suffix = member.name.partition(".")
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                if key not in parts:
                    parts[key] = {}
                    order.append(key)
                parts[key][suffix] = handle.read()
    except (tarfile.TarError, EOFError) as error:
        raise CorruptShardError(f"shard {path} is truncated or damaged ({error})") from None
    for key in order:
        fields = parts[key]
        missing = {"hq.png", "lq.png", "meta.json"} - set(fields)
        if missing:
            raise ValueError(f"shard {path} sample {key!r} lacks {sorted(missing)}")
        yield ShardSample(
            key=key,
            hq_png=fields["hq.png"],
            lq_png=fields["lq.png"],
            meta=json.loads(fields["meta.json"]),
        )


def manifest_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with the schema's fields) as a typed Arrow table; unknown keys are errors."""
    names = set(MANIFEST_SCHEMA.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"manifest row has unknown fields {sorted(extra)}")
    columns = {name: [row.get(name) for row in rows] for name in MANIFEST_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def parquet_bytes(table: pa.Table, *, row_group_size: int | None = None) -> bytes:
    """A table as zstd Parquet bytes: the one encoding of every per-sample file we store.

    ``row_group_size`` (rows) keeps row groups small where readers look up single rows.
    """
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=row_group_size)
    return buffer.getvalue()


#: Parquet metadata key of a per-shard manifest: the byte size of its tar, so a resumed
#: run spots a truncated shard with one HEAD request instead of re-reading it.
SHARD_BYTES_KEY = b"cotir.shard_bytes"


def manifest_bytes(rows: list[dict[str, Any]], *, shard_bytes: int | None = None) -> bytes:
    """The manifest rows as Parquet bytes (zstd), sorted by sample id for point look-ups;
    ``shard_bytes`` (a per-shard manifest) records its tar's size."""
    table = manifest_table(rows).sort_by("sample_id")
    if shard_bytes is not None:
        metadata = dict(table.schema.metadata or {})
        metadata[SHARD_BYTES_KEY] = str(shard_bytes).encode()
        table = table.replace_schema_metadata(metadata)
    return parquet_bytes(table)


def recorded_shard_bytes(manifest: pa.Table) -> int | None:
    """The tar size a per-shard manifest recorded (None for manifests that predate it)."""
    value = (manifest.schema.metadata or {}).get(SHARD_BYTES_KEY)
    return int(value) if value is not None else None


def read_manifest(data: bytes) -> pa.Table:
    """Parse manifest Parquet bytes."""
    return pq.read_table(io.BytesIO(data))
