"""Build the ``sample_lineage`` index from every stage's per-sample rows, in bounded memory.

The build is an external hash join, so 5.2 M samples never sit in memory at once:

1. Each stage's rows are streamed in batches, reduced to the columns lineage keeps
   and spilled to local Arrow files, one per bucket (the first two hex digits of the
   sample id). The raw pair plan has no sample id yet (it is written before the image
   bytes are hashed), so it and the pair manifest are first spilled per source and
   joined there on (source, item_key, degradation, seed).
2. Per bucket, every stage's rows are aligned on the sorted sample ids, the overall
   status (the furthest stage reached) is computed, and the rows are written as one
   Parquet part: sorted by sample id, small row groups, statistics on the sample id
   only, so a point look-up reads one footer and one row group.
3. Parts are content-addressed (their name holds their sha256), so a rebuild over the
   same rows uploads nothing; ``_index.json``, written last, switches readers to the
   new parts, and parts no index names any more are deleted.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cotir_pipeline.digests import file_sha256
from cotir_pipeline.lineage.schema import (
    DICTIONARY_COLUMNS,
    FILTER_DROP,
    FILTER_KEEP,
    INDEX_KEY,
    LINEAGE_SCHEMA,
    LINEAGE_SCHEMA_VERSION,
    PARTS_PREFIX,
    STAGE_BY_NAME,
    STAGE_LOCATIONS,
    STAGES,
    STATUS_DROPPED,
    STATUS_OK,
    StageSpec,
    column_group,
    is_stage_file,
)
from cotir_pipeline.store import LocalObjectStore, ObjectStore

#: Rows per row group: a point look-up decodes one row group of every column.
DEFAULT_ROW_GROUP_SIZE = 1024
#: zstd level of the part files (measured: level 3 is ~10% smaller than 1 at
#: little cost, since the build's time goes to the join, not the codec).
ZSTD_LEVEL = 3
#: Spill buckets: the first two hex digits of the sample id.
SPILL_BUCKETS = 256
#: Parts assembled and encoded at once (bounded by the CPU count).
BUILD_THREADS = 2
#: Rows a spill buffers before writing them out per bucket (bounds the build's memory).
SPILL_FLUSH_ROWS = 1_000_000
#: Batches read from a stage's Parquet files.
READ_BATCH_ROWS = 262_144

#: A stage's rows: one table or batch, or an iterable of them (streamed).
StageInput = pa.Table | pa.RecordBatch | Iterable[pa.Table | pa.RecordBatch]
#: ``progress(phase, done, total)``; ``total`` is None when it is not known yet.
Progress = Callable[[str, int, int | None], None]

_RAW_KEY = ("source", "item_key", "degradation")
_HEX_PAIRS = [f"{value:02x}" for value in range(SPILL_BUCKETS)]
_SAMPLE_ID_PATTERN = "^[0-9a-f]{8,64}$"
_SPILL_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


class LineageInputError(ValueError):
    """A stage's rows break the stage's contract (missing columns, bad ids, duplicates)."""


@dataclass
class LineageReport:
    """What a build read and wrote."""

    samples: int = 0
    hex_digits: int = 0
    parts: int = 0
    parts_written: int = 0
    parts_unchanged: int = 0
    parts_deleted: int = 0
    index_written: bool = False
    bytes_total: int = 0
    #: Compressed bytes per column group (identity, each stage, overall, file overhead).
    bytes_by_group: dict[str, int] = field(default_factory=dict)
    #: Rows read per stage (stages not given are absent).
    stage_rows: dict[str, int] = field(default_factory=dict)
    #: Samples per overall status and per furthest stage reached.
    status_counts: dict[str, int] = field(default_factory=dict)
    stage_counts: dict[str, int] = field(default_factory=dict)
    #: Sample ids with rows in later stages but none in ``pair_shards``.
    orphans: int = 0
    #: Planned pairs (``raw_pairs``) that no ``pair_shards`` row matched; not indexed.
    raw_unmatched: int = 0
    index_key: str = INDEX_KEY
    seconds: float = 0.0

    def bytes_per_sample(self) -> dict[str, float]:
        """Compressed bytes per sample, per column group and in total."""
        count = max(self.samples, 1)
        values = {group: size / count for group, size in self.bytes_by_group.items()}
        values["total"] = self.bytes_total / count
        return values


# -- stage rows -> lineage columns ------------------------------------------------------


def _iter_tables(rows: StageInput) -> Iterator[pa.Table]:
    if isinstance(rows, pa.Table):
        yield rows
    elif isinstance(rows, pa.RecordBatch):
        yield pa.Table.from_batches([rows])
    else:
        for item in rows:
            if isinstance(item, pa.RecordBatch):
                yield pa.Table.from_batches([item])
            elif isinstance(item, pa.Table):
                yield item
            else:
                raise TypeError(f"stage rows must be Arrow tables or batches, got {type(item)}")


def _as_plain(data: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(data.type):
        return data.cast(data.type.value_type)
    return data


def _cast(stage: str, name: str, data: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    data = _as_plain(data)
    if data.type == target:
        return data
    try:
        return data.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise LineageInputError(
            f"{stage}: column {name!r} has type {data.type}, which does not convert to "
            f"{target}: {error}"
        ) from None


def _check_sample_ids(stage: str, ids: pa.ChunkedArray) -> None:
    if ids.null_count:
        raise LineageInputError(f"{stage}: {ids.null_count} rows have no sample_id")
    good = pc.match_substring_regex(ids, _SAMPLE_ID_PATTERN)
    if not pc.all(good).as_py():
        bad = pc.filter(ids, pc.invert(good))[0].as_py()
        raise LineageInputError(
            f"{stage}: sample id {bad!r} is not a content hash (8-64 lowercase hex digits)"
        )


def _stage_table(spec: StageSpec, table: pa.Table) -> pa.Table:
    """The rows of one stage as lineage columns (plus the join keys)."""
    present = set(table.column_names)
    missing = [name for name in spec.required if name not in present]
    if missing:
        raise LineageInputError(
            f"{spec.name}: rows lack required columns {missing} (they have {sorted(present)})"
        )
    columns: dict[str, pa.ChunkedArray] = {}
    if spec.name == "raw_pairs":
        for name in _RAW_KEY:
            columns[name] = _cast(spec.name, name, table.column(name), pa.string())
        seed = (
            _cast(spec.name, "seed", table.column("seed"), pa.int64())
            if "seed" in present
            else pa.chunked_array([pa.nulls(len(table), pa.int64())])
        )
        columns["seed"] = seed
    else:
        ids = _cast(spec.name, "sample_id", table.column("sample_id"), pa.string())
        _check_sample_ids(spec.name, ids)
        columns["sample_id"] = ids
    for source, target in spec.inputs:
        kind = LINEAGE_SCHEMA.field(target).type
        if spec.many:
            kind = kind.value_type
        if source in present:
            columns[target] = _cast(spec.name, source, table.column(source), kind)
        else:
            columns[target] = pa.chunked_array([pa.nulls(len(table), kind)])
    if spec.name == "filtered_annotations":
        decisions = columns["filter_decision"]
        unknown = pc.invert(pc.is_in(decisions, value_set=pa.array([FILTER_KEEP, FILTER_DROP])))
        if pc.any(unknown).as_py():
            bad = pc.filter(decisions, unknown)[0].as_py()
            raise LineageInputError(
                f"filtered_annotations: decision {bad!r} is neither {FILTER_KEEP!r} nor "
                f"{FILTER_DROP!r}"
            )
    if spec.many:
        target = spec.output_columns[0]
        if columns[target].null_count:
            raise LineageInputError(f"{spec.name}: {columns[target].null_count} rows lack a value")
    return pa.table(columns)


def _buckets(ids: pa.ChunkedArray) -> np.ndarray:
    prefix = pc.utf8_slice_codeunits(ids, 0, 2)
    buckets = pc.index_in(prefix, value_set=pa.array(_HEX_PAIRS, pa.string()))
    return buckets.to_numpy(zero_copy_only=False)


def _partition(table: pa.Table, keys: np.ndarray, count: int) -> Iterator[tuple[int, pa.Table]]:
    """Slices of ``table`` per key value (keys are ints in [0, count))."""
    order = np.argsort(keys, kind="stable")
    ordered = table.take(pa.array(order))
    sizes = np.bincount(keys, minlength=count)
    start = 0
    for key in np.flatnonzero(sizes):
        size = int(sizes[key])
        yield int(key), ordered.slice(start, size)
        start += size


class _Spill:
    """Arrow IPC files per key under one folder (lz4-compressed, streamed).

    Slices are buffered and written per key once :data:`SPILL_FLUSH_ROWS` rows are
    pending, so each file holds a few large batches instead of thousands of small
    ones (small IPC batches cost more in per-message overhead than in bytes).
    """

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        self.folder = folder
        self.schema = schema
        self.rows = 0
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._pending: dict[int, list[pa.Table]] = {}
        self._pending_rows = 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, key: int, table: pa.Table) -> None:
        if table.schema != self.schema:
            table = table.cast(self.schema)
        self._pending.setdefault(key, []).append(table)
        self._pending_rows += len(table)
        self.rows += len(table)
        if self._pending_rows >= SPILL_FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        for key, tables in sorted(self._pending.items()):
            writer = self._writers.get(key)
            if writer is None:
                sink = pa.OSFile(str(self.folder / f"{key:05d}.arrow"), "wb")
                writer = pa.ipc.new_stream(sink, self.schema, options=_SPILL_OPTIONS)
                self._writers[key] = writer
            writer.write_table(pa.concat_tables(tables).combine_chunks())
        self._pending.clear()
        self._pending_rows = 0

    def close(self) -> None:
        self.flush()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def read(self, keys: Iterable[int]) -> pa.Table:
        tables = []
        for key in keys:
            path = self.folder / f"{key:05d}.arrow"
            if path.exists():
                with pa.OSFile(str(path), "rb") as source:
                    tables.append(pa.ipc.open_stream(source).read_all())
        if not tables:
            return self.schema.empty_table()
        return pa.concat_tables(tables)


# -- the build --------------------------------------------------------------------------


def _auto_hex_digits(rows: int) -> int:
    """Parts of roughly 6k-100k rows: one part, 16 or 256 (the spill's granularity)."""
    if rows <= 100_000:
        return 0
    if rows <= 1_600_000:
        return 1
    return 2


def _composite_key(table: pa.Table) -> pa.ChunkedArray:
    seed = pc.cast(pc.fill_null(table.column("seed"), -1), pa.string())
    parts = [table.column(name) for name in _RAW_KEY] + [seed]
    return pc.binary_join_element_wise(*parts, "\x1f")


class _Builder:
    def __init__(self, work: Path, progress: Progress | None) -> None:
        self.work = work
        self.progress = progress
        self.report = LineageReport()
        self.spills: dict[str, _Spill] = {}

    def _tick(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    def _spill_for(self, name: str, schema: pa.Schema) -> _Spill:
        if name not in self.spills:
            self.spills[name] = _Spill(self.work / name, schema)
        return self.spills[name]

    def spill_by_bucket(self, spec: StageSpec, rows: StageInput, spill_name: str) -> None:
        done = 0
        for table in _iter_tables(rows):
            prepared = _stage_table(spec, table)
            self._bucket_write(spill_name, prepared)
            done += len(table)
            self._tick(f"read {spec.name}", done, None)
        self.report.stage_rows[spec.name] = self.report.stage_rows.get(spec.name, 0) + done

    def _bucket_write(self, spill_name: str, prepared: pa.Table) -> None:
        if not len(prepared):
            self._spill_for(spill_name, prepared.schema)
            return
        spill = self._spill_for(spill_name, prepared.schema)
        keys = _buckets(prepared.column("sample_id"))
        for bucket, part in _partition(prepared, keys, SPILL_BUCKETS):
            spill.write(bucket, part)

    def spill_by_source(self, spec: StageSpec, rows: StageInput, sources: dict[str, int]) -> None:
        done = 0
        for table in _iter_tables(rows):
            prepared = _stage_table(spec, table)
            spill = self._spill_for(f"by_source_{spec.name}", prepared.schema)
            if len(prepared):
                encoded = pc.dictionary_encode(prepared.column("source")).combine_chunks()
                mapping = np.array(
                    [
                        sources.setdefault(name, len(sources))
                        for name in encoded.dictionary.to_pylist()
                    ],
                    dtype=np.int64,
                )
                indices = encoded.indices.to_numpy(zero_copy_only=False)
                for key, part in _partition(prepared, mapping[indices], len(sources)):
                    spill.write(key, part)
            done += len(table)
            self._tick(f"read {spec.name}", done, None)
        self.report.stage_rows[spec.name] = self.report.stage_rows.get(spec.name, 0) + done

    def join_raw_pairs(self, sources: dict[str, int]) -> None:
        """Per source: attach the plan's columns to the pair rows, then spill by bucket."""
        pairs = self.spills.get("by_source_pair_shards")
        raw = self.spills.get("by_source_raw_pairs")
        for spill in (pairs, raw):
            if spill is not None:
                spill.close()
        raw_columns = STAGE_BY_NAME["raw_pairs"].output_columns
        for done, (name, key) in enumerate(sorted(sources.items()), start=1):
            pair_rows = pairs.read([key]) if pairs is not None else None
            raw_rows = raw.read([key]) if raw is not None else None
            if pair_rows is None or not len(pair_rows):
                self.report.raw_unmatched += len(raw_rows) if raw_rows is not None else 0
                continue
            if raw_rows is None or not len(raw_rows):
                for column in raw_columns:
                    pair_rows = pair_rows.append_column(
                        column, pa.nulls(len(pair_rows), LINEAGE_SCHEMA.field(column).type)
                    )
            else:
                raw_keys = _composite_key(raw_rows)
                if pc.count_distinct(raw_keys).as_py() != len(raw_rows):
                    raise LineageInputError(
                        f"raw_pairs: source {name!r} plans the same (item_key, degradation, "
                        "seed) more than once"
                    )
                positions = pc.index_in(_composite_key(pair_rows), value_set=raw_keys)
                matched = raw_rows.select(raw_columns).take(positions)
                for column in raw_columns:
                    pair_rows = pair_rows.append_column(column, matched.column(column))
                self.report.raw_unmatched += len(raw_rows) - pc.count_distinct(positions).as_py()
            self._bucket_write("pair_shards", pair_rows)
            self._tick("join raw_pairs", done, len(sources))

    def close_spills(self) -> None:
        for spill in self.spills.values():
            spill.close()


def _unique_ids(tables: list[pa.Table]) -> pa.Array:
    ids = pa.chunked_array(
        [chunk for table in tables for chunk in table.column("sample_id").chunks],
        type=pa.string(),
    )
    unique = pc.unique(ids)
    return pc.take(unique, pc.array_sort_indices(unique))


def _aggregate_many(spec: StageSpec, table: pa.Table) -> pa.Table:
    """One row per sample with the sorted, distinct values of a many-rows stage."""
    target = spec.output_columns[0]
    ordered = table.sort_by([("sample_id", "ascending"), (target, "ascending")])
    grouped = ordered.group_by("sample_id", use_threads=False).aggregate([(target, "distinct")])
    return grouped.rename_columns(["sample_id", target])


def _stage_status(spec: StageSpec, table: pa.Table) -> tuple[Any, Any]:
    length = len(table)
    if spec.name == "raw_pairs":
        return table.column("raw_status"), pa.nulls(length, pa.string())
    if spec.name == "pair_shards":
        return table.column("pair_status"), table.column("pair_reason")
    if spec.name == "cot_annotations":
        return table.column("annotation_status"), table.column("annotation_reason")
    if spec.name == "filtered_annotations":
        keep = pc.equal(table.column("filter_decision"), FILTER_KEEP)
        status = pc.if_else(keep, STATUS_OK, STATUS_DROPPED)
        return status, table.column("filter_reason")
    return pa.repeat(pa.scalar(STATUS_OK), length), pa.nulls(length, pa.string())


def _with_overall(table: pa.Table) -> pa.Table:
    """Add ``stage``, ``status`` and ``reason`` of the furthest stage with a row."""
    length = len(table)
    stage: Any = pa.nulls(length, pa.string())
    status: Any = pa.nulls(length, pa.string())
    reason: Any = pa.nulls(length, pa.string())
    for spec in STAGES:
        present = pc.is_valid(table.column(spec.presence))
        stage_status, stage_reason = _stage_status(spec, table)
        stage = pc.if_else(present, pa.scalar(spec.name), stage)
        status = pc.if_else(present, stage_status, status)
        reason = pc.if_else(present, stage_reason, reason)
    return (
        table.append_column("stage", stage)
        .append_column("status", status)
        .append_column("reason", reason)
    )


def _assemble(stage_tables: dict[str, pa.Table]) -> tuple[pa.Table, int]:
    """The lineage rows of one part from each stage's rows for it; also count orphans."""
    present = [table for table in stage_tables.values() if len(table)]
    ids = _unique_ids(present) if present else pa.array([], pa.string())
    columns: dict[str, Any] = {"sample_id": ids}
    orphans = 0
    for name, table in stage_tables.items():
        spec = STAGE_BY_NAME[name]
        if spec.many:
            table = _aggregate_many(spec, table)
        elif len(table) and pc.count_distinct(table.column("sample_id")).as_py() != len(table):
            counts = table.group_by("sample_id").aggregate([([], "count_all")])
            repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
            example = repeated.column("sample_id")[0].as_py()
            raise LineageInputError(
                f"{name}: sample {example!r} has more than one row ({len(repeated)} samples do); "
                "a stage keeps one row per sample"
            )
        positions = pc.index_in(ids, value_set=table.column("sample_id"))
        aligned = table.take(positions)
        for column in aligned.column_names:
            if column != "sample_id":
                columns[column] = aligned.column(column)
        if name == "pair_shards":
            orphans = positions.null_count
    if "pair_shards" not in stage_tables:
        orphans = len(ids)
    length = len(ids)
    for lineage_field in LINEAGE_SCHEMA:
        if lineage_field.name not in columns and lineage_field.name not in (
            "stage",
            "status",
            "reason",
        ):
            columns[lineage_field.name] = pa.nulls(length, lineage_field.type)
    names = [name for name in LINEAGE_SCHEMA.names if name in columns]
    table = pa.table({name: columns[name] for name in names})
    table = _with_overall(table)
    return table.select(LINEAGE_SCHEMA.names).cast(LINEAGE_SCHEMA), orphans


def _write_part(table: pa.Table, path: Path, row_group_size: int) -> None:
    pq.write_table(
        table,
        str(path),
        row_group_size=row_group_size,
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        use_dictionary=list(DICTIONARY_COLUMNS),
        write_statistics=["sample_id"],
        sorting_columns=[pq.SortingColumn(0)],
    )


def _group_bytes(path: Path) -> dict[str, int]:
    metadata = pq.ParquetFile(str(path)).metadata
    sizes: dict[str, int] = {}
    in_columns = 0
    for group_index in range(metadata.num_row_groups):
        row_group = metadata.row_group(group_index)
        for column_index in range(row_group.num_columns):
            chunk = row_group.column(column_index)
            name = chunk.path_in_schema.split(".")[0]
            group = column_group(name)
            sizes[group] = sizes.get(group, 0) + chunk.total_compressed_size
            in_columns += chunk.total_compressed_size
    sizes["file overhead"] = path.stat().st_size - in_columns
    return sizes


def build_lineage(
    store: ObjectStore,
    *,
    raw_pairs: StageInput | None = None,
    pair_shards: StageInput | None = None,
    cot_annotations: StageInput | None = None,
    filtered_annotations: StageInput | None = None,
    training_shards: StageInput | None = None,
    training_runs: StageInput | None = None,
    bench_sets: StageInput | None = None,
    evaluation: StageInput | None = None,
    hex_digits: int | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    work_dir: Path | None = None,
    progress: Progress | None = None,
) -> LineageReport:
    """Build (or rebuild) the lineage index in ``store`` from each stage's per-sample rows.

    Every stage is optional: give the rows of the stages that exist (see
    :data:`~cotir_pipeline.lineage.schema.STAGES` for each one's columns). Rows
    stream through local spill files under ``work_dir`` (a temporary folder by
    default), so memory stays bounded by one bucket and one source. ``hex_digits``
    (0, 1 or 2) sets the parts to 1, 16 or 256; by default it follows the row count.
    """
    given: dict[str, StageInput] = {
        name: rows
        for name, rows in (
            ("raw_pairs", raw_pairs),
            ("pair_shards", pair_shards),
            ("cot_annotations", cot_annotations),
            ("filtered_annotations", filtered_annotations),
            ("training_shards", training_shards),
            ("training_runs", training_runs),
            ("bench_sets", bench_sets),
            ("evaluation", evaluation),
        )
        if rows is not None
    }
    if not given:
        raise ValueError("build_lineage needs the rows of at least one stage")
    if "raw_pairs" in given and "pair_shards" not in given:
        raise ValueError("raw_pairs rows join on pair_shards rows: give both")
    if hex_digits is not None and hex_digits not in (0, 1, 2):
        raise ValueError(f"hex_digits must be 0, 1 or 2, got {hex_digits}")
    if row_group_size < 16:
        raise ValueError(f"row_group_size must be >= 16, got {row_group_size}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cotir-lineage-", dir=work_dir) as folder:
        builder = _Builder(Path(folder), progress)
        if "raw_pairs" in given:
            sources: dict[str, int] = {}
            builder.spill_by_source(STAGE_BY_NAME["pair_shards"], given["pair_shards"], sources)
            builder.spill_by_source(STAGE_BY_NAME["raw_pairs"], given["raw_pairs"], sources)
            builder.join_raw_pairs(sources)
        elif "pair_shards" in given:
            pair_spec = STAGE_BY_NAME["pair_shards"]
            builder.spill_by_bucket(pair_spec, given["pair_shards"], "pair_shards")
        for spec in STAGES[2:]:
            if spec.name in given:
                builder.spill_by_bucket(spec, given[spec.name], spec.name)
        builder.close_spills()
        report = builder.report
        stage_spills = {name: spill for name, spill in builder.spills.items() if name in given}
        largest = max((spill.rows for spill in stage_spills.values()), default=0)
        digits = _auto_hex_digits(largest) if hex_digits is None else hex_digits
        report.hex_digits = digits
        _write_parts(store, stage_spills, digits, row_group_size, Path(folder), report, builder)
    report.seconds = time.perf_counter() - started
    return report


@dataclass(frozen=True)
class _LocalPart:
    """A part file written locally, before its upload."""

    bucket: str
    path: Path
    rows: int
    orphans: int
    group_bytes: dict[str, int]
    status_counts: dict[str, int]
    stage_counts: dict[str, int]


def _write_parts(
    store: ObjectStore,
    spills: Mapping[str, _Spill],
    digits: int,
    row_group_size: int,
    folder: Path,
    report: LineageReport,
    builder: _Builder,
) -> None:
    parts_total = 16**digits
    per_part = SPILL_BUCKETS // parts_total
    entries: list[dict[str, Any]] = []
    existing = {info.key: info.size for info in store.list(PARTS_PREFIX)}

    def make(part: int) -> _LocalPart | None:
        buckets = range(part * per_part, (part + 1) * per_part)
        table, orphans = _assemble({name: spill.read(buckets) for name, spill in spills.items()})
        if not len(table):
            return None
        bucket = f"{part:0{digits}x}" if digits else "all"
        local = folder / f"part-{bucket}.parquet"
        _write_part(table, local, row_group_size)
        status: dict[str, int] = {}
        stage: dict[str, int] = {}
        _count(status, table.column("status"))
        _count(stage, table.column("stage"))
        return _LocalPart(bucket, local, len(table), orphans, _group_bytes(local), status, stage)

    # Parts are independent: assemble and encode two at a time (pyarrow releases the
    # GIL), upload in order. The pool runs ahead by at most `threads` parts.
    threads = max(1, min(BUILD_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = [pool.submit(make, part) for part in range(min(threads, parts_total))]
        for part in range(parts_total):
            made = pending.pop(0).result()
            if part + threads < parts_total:
                pending.append(pool.submit(make, part + threads))
            builder._tick("write parts", part + 1, parts_total)
            if made is not None:
                entries.append(_store_part(store, made, existing, report))
    report.parts = len(entries)
    _commit_index(store, entries, digits, row_group_size, report)
    keep = {entry["key"] for entry in entries}
    for key in existing:
        if key not in keep:
            store.delete(key)
            report.parts_deleted += 1


def _store_part(
    store: ObjectStore, made: _LocalPart, existing: Mapping[str, int], report: LineageReport
) -> dict[str, Any]:
    """Upload one part under its content-addressed key (unless stored already), add its
    counts to the report; its index entry."""
    report.orphans += made.orphans
    digest = file_sha256(made.path)
    key = f"{PARTS_PREFIX}{made.bucket}-{digest[:16]}.parquet"
    size = made.path.stat().st_size
    if existing.get(key) == size:
        report.parts_unchanged += 1
    else:
        store.put_file(key, made.path)
        report.parts_written += 1
    made.path.unlink()
    for group, group_size in made.group_bytes.items():
        report.bytes_by_group[group] = report.bytes_by_group.get(group, 0) + group_size
    for counts, new in (
        (report.status_counts, made.status_counts),
        (report.stage_counts, made.stage_counts),
    ):
        for name, count in new.items():
            counts[name] = counts.get(name, 0) + count
    report.samples += made.rows
    report.bytes_total += size
    return {"bucket": made.bucket, "key": key, "rows": made.rows, "bytes": size, "sha256": digest}


def _commit_index(
    store: ObjectStore,
    entries: list[dict[str, Any]],
    digits: int,
    row_group_size: int,
    report: LineageReport,
) -> None:
    """Write the index that names the parts (only when it changed): the commit point."""
    index = {
        "format": "cotir-sample-lineage",
        "schema_version": LINEAGE_SCHEMA_VERSION,
        "hex_digits": digits,
        "row_group_size": row_group_size,
        "samples": report.samples,
        "columns": {field.name: str(field.type) for field in LINEAGE_SCHEMA},
        "stage_rows": dict(sorted(report.stage_rows.items())),
        "status_counts": dict(sorted(report.status_counts.items())),
        "stage_counts": dict(sorted(report.stage_counts.items())),
        "orphans": report.orphans,
        "raw_unmatched": report.raw_unmatched,
        "bytes_total": report.bytes_total,
        "bytes_by_group": dict(sorted(report.bytes_by_group.items())),
        "parts": entries,
    }
    text = json.dumps(index, indent=1, sort_keys=True) + "\n"
    try:
        unchanged = store.get_text(INDEX_KEY) == text
    except KeyError:
        unchanged = False
    if not unchanged:
        store.put_text(INDEX_KEY, text)  # the commit point: readers switch to the new parts
        report.index_written = True


def _count(counts: dict[str, int], column: pa.ChunkedArray) -> None:
    values = pc.value_counts(pc.fill_null(column, "none").combine_chunks())
    for item in values.to_pylist():
        counts[item["values"]] = counts.get(item["values"], 0) + int(item["counts"])


# -- reading the stages' rows from the store ----------------------------------------------


def discover_stage_inputs(store: ObjectStore) -> dict[str, list[str]]:
    """Keys of every stage's per-sample row files in ``store`` (see :func:`is_stage_file`)."""
    found: dict[str, list[str]] = {}
    for stage, (prefix, _) in STAGE_LOCATIONS.items():
        keys = [info.key for info in store.list(f"{prefix}/") if is_stage_file(stage, info.key)]
        if keys:
            found[stage] = keys
    return found


def _open_parquet(store: ObjectStore, key: str) -> pq.ParquetFile:
    if isinstance(store, LocalObjectStore):
        return pq.ParquetFile(str(store.root / key))
    return pq.ParquetFile(io.BytesIO(store.get_bytes(key)))


def read_stage_rows(store: ObjectStore, stage: str, keys: Iterable[str]) -> Iterator[pa.Table]:
    """Stream the rows lineage needs from a stage's Parquet files in the store."""
    spec = STAGE_BY_NAME[stage]
    wanted = {"sample_id", "seed", *spec.required, *spec.input_columns}
    for key in keys:
        parquet = _open_parquet(store, key)
        columns = [name for name in parquet.schema_arrow.names if name in wanted]
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
            yield pa.Table.from_batches([batch])


def build_lineage_from_store(
    store: ObjectStore,
    *,
    progress: Progress | None = None,
    hex_digits: int | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    work_dir: Path | None = None,
) -> LineageReport:
    """Find every stage's rows in ``store`` and build the index there."""
    found = discover_stage_inputs(store)
    if "pair_shards" not in found:
        raise LineageInputError(
            f"no pair_shards/<source>/manifest.parquet in {store.url}: run the pair stage first"
        )
    inputs = {stage: read_stage_rows(store, stage, keys) for stage, keys in found.items()}
    return build_lineage(
        store,
        hex_digits=hex_digits,
        row_group_size=row_group_size,
        work_dir=work_dir,
        progress=progress,
        **inputs,  # type: ignore[arg-type]
    )


def report_json(report: LineageReport) -> str:
    """The report as JSON (for the CLI and the asset's metadata)."""
    return json.dumps({**asdict(report), "bytes_per_sample": report.bytes_per_sample()}, indent=1)
