"""Read the ``sample_lineage`` index: point look-ups and filtered listings, with pyarrow.

A look-up reads ``_index.json`` once, picks the part by the sample id's first hex
digits, reads that part's footer, picks the row group by its sample-id statistics
(the rows are sorted) and decodes that one row group. On a local store the part is
memory-mapped; on S3 the reads are ranged GETs through the store, with the footer's
tail fetched once. A :class:`LineageIndex` keeps the index file and the footers it
has read, so repeated look-ups in one process cost one row group each.
"""

from __future__ import annotations

import bisect
import io
import json
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cotir_pipeline.lineage.schema import (
    DEFAULT_QUERY_COLUMNS,
    INDEX_KEY,
    LINEAGE_PREFIX,
    LINEAGE_SCHEMA,
    LINEAGE_SCHEMA_VERSION,
    STAGES,
    StageSpec,
)
from cotir_pipeline.store import LocalObjectStore, ObjectNotFoundError, ObjectStore, parse_store_url

if TYPE_CHECKING:
    from cotir_pipeline.lineage.where import Where

_SAMPLE_ID = re.compile(r"^[0-9a-f]{8,64}$")
#: Bytes fetched from the end of a remote part to read its footer in one request.
_TAIL_BYTES = 256 * 1024
_SCAN_THREADS = 8
_FLOAT32_COLUMNS = frozenset(
    field.name for field in LINEAGE_SCHEMA if pa.types.is_float32(field.type)
)


class LineageIndexError(RuntimeError):
    """The lineage index is missing, unreadable or newer than this code."""


class LineageIndexMissingError(LineageIndexError, FileNotFoundError):
    """No ``sample_lineage/_index.json`` where the index was expected."""


# -- records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LineageStep:
    """One stage of a sample's chain: whether it has a row there, and what the row says."""

    stage: str
    description: str
    reached: bool
    status: str | None
    reason: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class LineageRecord:
    """Everything the index knows about one sample, as a chain from source to evaluation."""

    sample_id: str
    source: str | None
    item_key: str | None
    split: str | None
    degradation: str | None
    task: str | None
    stage: str | None
    status: str | None
    reason: str | None
    steps: tuple[LineageStep, ...]
    row: dict[str, Any] = field(repr=False)

    def step(self, stage: str) -> LineageStep:
        """The step of ``stage`` (KeyError for an unknown stage name)."""
        for step in self.steps:
            if step.stage == stage:
                return step
        raise KeyError(stage)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: identity, overall status, and the chain of steps."""
        return {
            "sample_id": self.sample_id,
            "source": self.source,
            "item_key": self.item_key,
            "split": self.split,
            "degradation": self.degradation,
            "task": self.task,
            "stage": self.stage,
            "status": self.status,
            "reason": self.reason,
            "chain": [
                {
                    "stage": step.stage,
                    "reached": step.reached,
                    "status": step.status,
                    "reason": step.reason,
                    **step.details,
                }
                for step in self.steps
            ],
        }

    def format(self) -> str:
        """Human-readable chain, one line per stage."""
        task = f" (task {self.task})" if self.task else ""
        lines = [
            f"sample {self.sample_id}",
            f"  source {self.source}  item {self.item_key}  split {self.split}  "
            f"degradation {self.degradation}{task}",
            f"  furthest stage: {self.stage}  status: {self.status}"
            + (f"  reason: {self.reason}" if self.reason else ""),
            "",
        ]
        width = max(len(step.stage) for step in self.steps)
        for number, step in enumerate(self.steps, start=1):
            if not step.reached:
                lines.append(f"  {number}. {step.stage:<{width}}  -        (no row)")
                continue
            summary = _summary(step)
            lines.append(f"  {number}. {step.stage:<{width}}  {step.status or '':<8} {summary}")
        return "\n".join(lines)


def _summary(step: LineageStep) -> str:
    details = step.details
    parts: list[str] = []
    if step.stage == "raw_pairs":
        if details.get("recipe"):
            parts.append(f"recipe {details['recipe']}")
        if details.get("seed") is not None:
            parts.append(f"seed {details['seed']}")
        if details.get("lq_path"):
            parts.append(f"lq {details['lq_path']}")
        if details.get("hq_path"):
            parts.append(f"hq {details['hq_path']}")
    elif step.stage in ("pair_shards", "training_shards"):
        uri = details.get("shard_uri") or details.get("train_shard_uri")
        key = details.get("shard_key") or details.get("train_shard_key")
        if uri:
            parts.append(f"{uri}#{key}" if key else uri)
    elif step.stage == "cot_annotations":
        for label, name in (
            ("model", "annotation_model"),
            ("template", "annotation_template_version"),
            ("response sha256", "annotation_response_sha256"),
        ):
            if details.get(name):
                parts.append(f"{label} {details[name]}")
    elif step.stage == "filtered_annotations":
        if details.get("filter_score") is not None:
            parts.append(f"score {details['filter_score']:.4f}")
    else:
        values = next(iter(details.values()), None) or []
        parts.append(f"{len(values)}: {', '.join(values)}")
    if step.reason:
        parts.append(f"reason: {step.reason}")
    return "  ".join(parts)


def _stage_details(spec: StageSpec, row: dict[str, Any]) -> dict[str, Any]:
    names = [
        name
        for name in LINEAGE_SCHEMA.names
        if (LINEAGE_SCHEMA.field(name).metadata or {}).get(b"group", b"").decode() == spec.name
    ]
    return {name: row.get(name) for name in names}


def record_from_row(row: dict[str, Any]) -> LineageRecord:
    """Turn one lineage row (a dict of the schema's columns) into a record with its chain."""
    steps = []
    for spec in STAGES:
        reached = row.get(spec.presence) is not None
        details = _stage_details(spec, row)
        status: str | None
        reason: str | None = None
        if spec.name == "raw_pairs":
            status = row.get("raw_status")
        elif spec.name == "pair_shards":
            status, reason = row.get("pair_status"), row.get("pair_reason")
        elif spec.name == "cot_annotations":
            status, reason = row.get("annotation_status"), row.get("annotation_reason")
        elif spec.name == "filtered_annotations":
            status, reason = row.get("filter_decision"), row.get("filter_reason")
        else:
            status = "ok" if reached else None
        if not reached:
            status, reason = None, None
        steps.append(
            LineageStep(
                stage=spec.name,
                description=spec.description,
                reached=reached,
                status=status,
                reason=reason,
                details={k: v for k, v in details.items() if k not in ("raw_status",)},
            )
        )
    return LineageRecord(
        sample_id=row["sample_id"],
        source=row.get("source"),
        item_key=row.get("item_key"),
        split=row.get("split"),
        degradation=row.get("degradation"),
        task=row.get("task"),
        stage=row.get("stage"),
        status=row.get("status"),
        reason=row.get("reason"),
        steps=tuple(steps),
        row=row,
    )


@dataclass(frozen=True)
class QueryResult:
    """Rows of a filtered listing (at most ``limit``) and how many rows matched in all."""

    rows: list[dict[str, Any]]
    matched: int
    columns: tuple[str, ...]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


# -- reading parts -----------------------------------------------------------------------


class _StoreReader(io.RawIOBase):
    """A seekable, read-only file over ranged GETs of one object; the tail is cached."""

    def __init__(self, store: ObjectStore, key: str, size: int) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._size = size
        self._position = 0
        tail_start = max(0, size - _TAIL_BYTES)
        self._tail_start = tail_start
        self._tail = store.get_range(key, tail_start, size - tail_start)
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._position = offset
        elif whence == io.SEEK_CUR:
            self._position += offset
        else:
            self._position = self._size + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        length = min(len(view), max(0, self._size - self._position))
        if length == 0:
            return 0
        start = self._position
        if start >= self._tail_start:
            offset = start - self._tail_start
            data = self._tail[offset : offset + length]
        else:
            data = self._store.get_range(self._key, start, length)
        view[: len(data)] = data
        self._position += len(data)
        return len(data)


@dataclass
class _Part:
    bucket: str
    key: str
    rows: int
    size: int
    parquet: pq.ParquetFile | None = None
    #: (min, max) sample id and first row of each row group.
    bounds: list[tuple[str, str, int]] | None = None


class LineageIndex:
    """An opened lineage index: look up samples and list filtered rows.

    Open it with :func:`open_lineage`. It caches the part footers it reads, so keep
    one per process for repeated look-ups.
    """

    def __init__(self, meta: dict[str, Any], store: ObjectStore | None, root: Path | None) -> None:
        version = int(meta.get("schema_version", 0))
        if version > LINEAGE_SCHEMA_VERSION:
            raise LineageIndexError(
                f"the lineage index has schema version {version}; this code reads up to "
                f"{LINEAGE_SCHEMA_VERSION}: upgrade cotir-pipeline or rebuild the index"
            )
        self.meta = meta
        self.schema_version = version
        self.hex_digits = int(meta["hex_digits"])
        self.samples = int(meta["samples"])
        self._store = store
        self._root = root
        self._parts = {
            entry["bucket"]: _Part(entry["bucket"], entry["key"], entry["rows"], entry["bytes"])
            for entry in meta["parts"]
        }
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        """Where the index lives (a URL)."""
        if self._root is not None:
            return (self._root / LINEAGE_PREFIX).as_uri()
        assert self._store is not None
        return self._store.uri(LINEAGE_PREFIX)

    @property
    def parts(self) -> list[str]:
        """Store keys of the part files, in bucket order."""
        return [self._parts[bucket].key for bucket in sorted(self._parts)]

    def part_path(self, key: str) -> Path | None:
        """Local path of a part file (None for a remote store)."""
        return None if self._root is None else self._root.joinpath(*key.split("/"))

    def _parquet(self, part: _Part) -> pq.ParquetFile:
        with self._lock:
            if part.parquet is None:
                path = self.part_path(part.key)
                try:
                    if path is not None:
                        source: Any = pa.memory_map(str(path))
                    else:
                        assert self._store is not None
                        source = pa.PythonFile(
                            _StoreReader(self._store, part.key, part.size), mode="r"
                        )
                except (FileNotFoundError, ObjectNotFoundError):
                    raise LineageIndexError(
                        f"lineage part {part.key} is missing: the index was rebuilt or "
                        "damaged; open it again (or rebuild it)"
                    ) from None
                part.parquet = pq.ParquetFile(source, pre_buffer=path is None)
                metadata = part.parquet.metadata
                bounds = []
                first = 0
                for index in range(metadata.num_row_groups):
                    group = metadata.row_group(index)
                    stats = group.column(0).statistics
                    bounds.append((str(stats.min), str(stats.max), first))
                    first += group.num_rows
                part.bounds = bounds
            return part.parquet

    def _part_for(self, sample_id: str) -> _Part | None:
        bucket = sample_id[: self.hex_digits] if self.hex_digits else "all"
        return self._parts.get(bucket)

    def lookup_row(self, sample_id: str) -> dict[str, Any] | None:
        """The lineage row of ``sample_id`` as a dict, or None when the index lacks it."""
        if not isinstance(sample_id, str) or not _SAMPLE_ID.match(sample_id):
            raise ValueError(
                f"{sample_id!r} is not a sample id (8-64 lowercase hex digits, e.g. "
                "'1e72b94efbd4bd93dff1bf06ba4743bd')"
            )
        part = self._part_for(sample_id)
        if part is None:
            return None
        parquet = self._parquet(part)
        assert part.bounds is not None
        minimums = [low for low, _, _ in part.bounds]
        index = bisect.bisect_right(minimums, sample_id) - 1
        if index < 0 or sample_id > part.bounds[index][1]:
            return None
        table = parquet.read_row_group(index)
        ids = table.column("sample_id").to_pylist()
        position = bisect.bisect_left(ids, sample_id)
        if position >= len(ids) or ids[position] != sample_id:
            return None
        return _rows(table.slice(position, 1))[0]

    def lookup(self, sample_id: str) -> LineageRecord | None:
        """The chain of ``sample_id`` from source to evaluation, or None if not indexed."""
        row = self.lookup_row(sample_id)
        return None if row is None else record_from_row(row)

    def query(
        self,
        where: str | Where | None,
        limit: int = 50,
        columns: Sequence[str] | None = None,
    ) -> QueryResult:
        """Rows matching ``where`` (see :mod:`~cotir_pipeline.lineage.where`), by sample id.

        Returns at most ``limit`` rows of ``columns`` and the number of all matches.
        Only the filter's columns are read from every part; the output columns are
        read only from the row groups that hold returned rows.
        """
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        from cotir_pipeline.lineage.where import parse_where  # pyarrow.compute: only here

        parsed = parse_where(where) if isinstance(where, str) else where
        wanted = tuple(columns) if columns is not None else DEFAULT_QUERY_COLUMNS
        unknown = [name for name in wanted if name not in LINEAGE_SCHEMA.names]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; known: {', '.join(LINEAGE_SCHEMA.names)}")
        parts = [self._parts[bucket] for bucket in sorted(self._parts)]
        if parsed is None:
            matches = [np.arange(part.rows) for part in parts]
        else:
            threads = min(_SCAN_THREADS, max(1, len(parts)))
            with ThreadPoolExecutor(max_workers=threads) as pool:
                matches = list(pool.map(lambda part: self._match(part, parsed), parts))
        matched = sum(len(found) for found in matches)
        rows: list[dict[str, Any]] = []
        for part, found in zip(parts, matches, strict=True):
            if len(rows) >= limit:
                break
            if len(found):
                rows.extend(self._take(part, found[: limit - len(rows)], wanted))
        return QueryResult(rows=rows, matched=matched, columns=wanted)

    def _match(self, part: _Part, where: Where) -> np.ndarray:
        table = self._parquet(part).read(columns=where.columns, use_threads=False)
        mask = where.mask(table)
        return np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))

    def _take(self, part: _Part, positions: np.ndarray, columns: Sequence[str]) -> list[dict]:
        parquet = self._parquet(part)
        assert part.bounds is not None
        starts = np.array([first for _, _, first in part.bounds])
        groups = np.searchsorted(starts, positions, side="right") - 1
        chosen = sorted(set(groups.tolist()))
        table = parquet.read_row_groups(chosen, columns=list(columns), use_threads=False)
        # Row positions within the concatenation of the chosen row groups.
        offsets: dict[int, int] = {}
        running = 0
        for group in chosen:
            offsets[group] = running
            running += parquet.metadata.row_group(group).num_rows
        local = [offsets[g] + int(p - starts[g]) for g, p in zip(groups, positions, strict=True)]
        return _rows(table.take(pa.array(local, pa.int64())))


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts; float32 scores at float32 precision (0.3, not 0.30000001192092896).

    No cast to the schema: Python values are the same, and a cast would load
    pyarrow.compute (and with it pandas), a third of a cold look-up's time.
    """
    rows = table.to_pylist()
    floats = [name for name in table.column_names if name in _FLOAT32_COLUMNS]
    for row in rows:
        for name in floats:
            if row[name] is not None:
                row[name] = float(f"{row[name]:.7g}")
    return rows


def _local_root(path: Path) -> Path:
    path = path.expanduser().resolve()
    if (path / INDEX_KEY).is_file():
        return path
    if path.name == LINEAGE_PREFIX and (path / "_index.json").is_file():
        return path.parent
    raise LineageIndexMissingError(
        f"no lineage index at {path} (expected {path / INDEX_KEY}): build it with "
        "`cotir lineage --build`"
    )


def open_lineage(store_or_path: ObjectStore | str | Path) -> LineageIndex:
    """Open the index in a store, or in a local folder (a store root or its ``sample_lineage``)."""
    if isinstance(store_or_path, LocalObjectStore):
        store_or_path = store_or_path.root
    if isinstance(store_or_path, ObjectStore):
        try:
            text = store_or_path.get_text(INDEX_KEY)
        except ObjectNotFoundError:
            raise LineageIndexMissingError(
                f"no lineage index at {store_or_path.uri(INDEX_KEY)}: build it with "
                "`cotir lineage --build`"
            ) from None
        return LineageIndex(_parse_index(text, INDEX_KEY), store_or_path, None)
    if isinstance(store_or_path, str) and "://" in store_or_path:
        if not store_or_path.startswith("file://"):
            raise ValueError(
                f"{store_or_path!r}: open a remote index through its ObjectStore "
                "(cotir_pipeline.store.open_store)"
            )

        location = parse_store_url(store_or_path)
        assert location.path is not None
        store_or_path = location.path
    root = _local_root(Path(store_or_path))
    text = (root / INDEX_KEY).read_text(encoding="utf-8")
    return LineageIndex(_parse_index(text, str(root / INDEX_KEY)), None, root)


def _parse_index(text: str, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as error:
        raise LineageIndexError(f"{where} is not valid JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != "cotir-sample-lineage":
        raise LineageIndexError(f"{where} is not a cotir lineage index")
    return meta


def lookup(store_or_path: ObjectStore | str | Path, sample_id: str) -> LineageRecord | None:
    """Look up one sample's chain (opens the index; reuse :func:`open_lineage` for many)."""
    return open_lineage(store_or_path).lookup(sample_id)


def query(
    store_or_path: ObjectStore | str | Path,
    where: str | None,
    limit: int = 50,
    columns: Sequence[str] | None = None,
) -> QueryResult:
    """Rows matching ``where`` such as ``source = 'X' and status = 'dropped'`` (at most limit)."""
    return open_lineage(store_or_path).query(where, limit=limit, columns=columns)
