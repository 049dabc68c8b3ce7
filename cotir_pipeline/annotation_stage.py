"""Annotation stage over pair shards: annotate, filter, and write the training shards.

Three steps, matching three assets:

1. :func:`annotate_source` asks an annotation backend (vLLM or templates) for the
   precise prompt and CoT triple of every sample of a source's pair shards; one
   Parquet file of results per pair shard.
2. :func:`filter_source` judges each annotation (rule checks, CLIP consistency
   where configured); one Parquet file of decisions per pair shard.
3. :func:`write_training_shards` copies the kept training samples' image bytes
   (no re-encoding) into the final shards, one folder per degradation, with the
   release's CoT metadata in ``meta.json``.

Per-shard outputs make each step resumable: a finished shard's Parquet file is
its marker, and shards that recorded failures are redone on the next run.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cotir_pipeline.annotation.base import (
    ANNOTATION_SCHEMA,
    AnnotationBackend,
    AnnotationRequest,
    AnnotationResult,
    annotation_table,
)
from cotir_pipeline.pair_stage import PAIR_SHARDS_PREFIX
from cotir_pipeline.scratch import scratch_dir
from cotir_pipeline.shards import (
    STATUS_FAILED,
    STATUS_OK,
    CorruptShardError,
    ShardSample,
    parquet_bytes,
    read_manifest,
    read_shard,
    write_shard,
)
from cotir_pipeline.store import ObjectStore

ANNOTATIONS_PREFIX = "cot_annotations"
FILTERED_PREFIX = "filtered_annotations"
TRAINING_SHARDS_PREFIX = "training_shards"

#: One row per sample in the final training shards.
TRAINING_MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("degradation", pa.string(), nullable=False),
        pa.field("pair_shard_uri", pa.string(), nullable=False),
        pa.field("shard_uri", pa.string(), nullable=False),
        pa.field("shard_key", pa.string(), nullable=False),
    ]
)


def _read_table(store: ObjectStore, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(store.get_bytes(key)))


def pair_shard_keys(store: ObjectStore, source: str) -> list[str]:
    """The finished pair shards of a source (tar keys whose manifest exists), sorted."""
    prefix = f"{PAIR_SHARDS_PREFIX}/{source}/"
    keys = {info.key for info in store.list(prefix)}
    return sorted(
        key for key in keys if key.endswith(".tar") and key[: -len(".tar")] + ".parquet" in keys
    )


def _stage_key(prefix: str, pair_tar_key: str) -> str:
    """``<prefix>/<source>/<degradation>/<shard>.parquet`` for a pair shard's tar key."""
    relative = pair_tar_key.removeprefix(f"{PAIR_SHARDS_PREFIX}/").removesuffix(".tar")
    return f"{prefix}/{relative}.parquet"


def _shard_samples(store: ObjectStore, tar_key: str) -> list[ShardSample]:
    """All samples of a stored shard (downloaded to a temporary file)."""
    with scratch_dir("annotate") as work:
        local = Path(work) / "shard.tar"
        store.download_file(tar_key, local)
        return list(read_shard(local))


@dataclass
class StageReport:
    """Counts of one annotation-stage step over one source."""

    shards_total: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    ok: int = 0
    not_ok: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def count(self, rows: Sequence[dict[str, Any]], examples: int = 0) -> None:
        """Add per-sample rows (with ``status`` and ``reason``) to the counts."""
        for row in rows:
            if row["status"] == STATUS_OK:
                self.ok += 1
                if len(self.examples) < examples:
                    self.examples.append(row)
            else:
                self.not_ok += 1
                reason = str(row.get("reason") or "unknown").split(":")[0][:80]
                self.reasons[reason] = self.reasons.get(reason, 0) + 1

    @property
    def rate_ok(self) -> float:
        """Fraction of samples with status ok (0 when there are none)."""
        total = self.ok + self.not_ok
        return self.ok / total if total else 0.0


def _finished(store: ObjectStore, key: str) -> list[dict[str, Any]] | None:
    """Rows of a finished per-shard output, or None when it must be (re)done."""
    if not store.exists(key):
        return None
    rows = _read_table(store, key).to_pylist()
    if any(row["status"] == STATUS_FAILED for row in rows):
        return None
    return rows


def annotate_source(
    store: ObjectStore,
    source: str,
    backend: AnnotationBackend,
    *,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> StageReport:
    """Annotate every sample of ``source``'s pair shards; resumable per shard."""
    tar_keys = pair_shard_keys(store, source)
    if not tar_keys:
        raise FileNotFoundError(f"{source}: no finished pair shards in {store.url}")
    report = StageReport(shards_total=len(tar_keys))
    tables: list[pa.Table] = []
    for done, tar_key in enumerate(tar_keys, start=1):
        out_key = _stage_key(ANNOTATIONS_PREFIX, tar_key)
        rows = _finished(store, out_key)
        if rows is None:
            requests = [
                AnnotationRequest.from_shard_sample(s.key, s.hq_png, s.lq_png, s.meta)
                for s in _shard_samples(store, tar_key)
            ]
            results: list[AnnotationResult] = []
            for start in range(0, len(requests), batch_size):
                results += backend.annotate(requests[start : start + batch_size])
            table = annotation_table(results)
            store.put_bytes(out_key, parquet_bytes(table))
            rows = table.to_pylist()
            report.shards_written += 1
        else:
            report.shards_skipped += 1
        tables.append(pa.Table.from_pylist(rows, schema=ANNOTATION_SCHEMA))
        report.count(rows, examples=3)
        if progress is not None:
            progress(done, len(tar_keys))
    # One file per source for lineage and inspection, written after every shard.
    combined = pa.concat_tables(tables).sort_by("sample_id")
    store.put_bytes(f"{ANNOTATIONS_PREFIX}/{source}/manifest.parquet", parquet_bytes(combined))
    return report


def load_annotations(store: ObjectStore, tar_key: str) -> dict[str, AnnotationResult]:
    """Annotation results of one pair shard by sample id."""
    table = _read_table(store, _stage_key(ANNOTATIONS_PREFIX, tar_key))
    return {row["sample_id"]: AnnotationResult.from_row(row) for row in table.to_pylist()}


def filter_source(
    store: ObjectStore,
    source: str,
    consistency_filter: Any,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> StageReport:
    """Judge every annotation of ``source`` (rules, CLIP where configured); resumable."""
    from cotir_pipeline.annotation.clip_filter import FilterItem, filter_table

    tar_keys = pair_shard_keys(store, source)
    report = StageReport(shards_total=len(tar_keys))
    decisions: list[dict[str, Any]] = []
    for done, tar_key in enumerate(tar_keys, start=1):
        out_key = _stage_key(FILTERED_PREFIX, tar_key)
        rows = _finished(store, out_key)
        if rows is None:
            annotations = load_annotations(store, tar_key)
            items = []
            for sample in _shard_samples(store, tar_key):
                request = AnnotationRequest.from_shard_sample(
                    sample.key, sample.hq_png, sample.lq_png, sample.meta
                )
                result = annotations.get(request.sample_id)
                if result is None:
                    raise ValueError(
                        f"{source}: sample {request.sample_id} of {tar_key} has no annotation; "
                        "materialize cot_annotations for this source first"
                    )
                items.append(FilterItem.from_annotation(request, result))
            table = filter_table(consistency_filter.run(items))
            store.put_bytes(out_key, parquet_bytes(table))
            rows = table.to_pylist()
            report.shards_written += 1
        else:
            report.shards_skipped += 1
        decisions += rows
        report.count(rows)
        if progress is not None:
            progress(done, len(tar_keys))
    store.put_bytes(
        f"{FILTERED_PREFIX}/{source}/manifest.parquet", parquet_bytes(decision_manifest(decisions))
    )
    return report


#: The per-source summary of the filter: keep/drop, score and reason per sample.
DECISION_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("reason", pa.string()),
        pa.field("clip_status", pa.string()),
    ]
)


def decision_manifest(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Filter rows as keep/drop decisions, sorted by sample id."""
    table = pa.Table.from_pylist(
        [
            {
                "sample_id": row["sample_id"],
                "decision": "keep" if row["status"] == STATUS_OK else "drop",
                "score": row.get("clip_score"),
                "reason": row.get("reason"),
                "clip_status": row.get("clip_status"),
            }
            for row in rows
        ],
        schema=DECISION_SCHEMA,
    )
    return table.sort_by("sample_id")


# -- training shards -----------------------------------------------------------------


@dataclass(frozen=True)
class TrainingItem:
    """One kept training sample: where its pair lives and its CoT metadata."""

    sample_id: str
    source: str
    degradation: str
    pair_tar_key: str
    vague_question: str
    precise_question: str
    cot_answers: str
    #: The pair manifest's sha256 of the HQ and LQ PNGs: checked when the bytes are copied.
    hq_sha256: str | None = None
    lq_sha256: str | None = None


def plan_training_items(
    store: ObjectStore, sources: Sequence[str]
) -> dict[str, list[TrainingItem]]:
    """Kept samples of the train split, grouped by degradation, in a stable order.

    A sample is kept when its pair is ``ok`` in the pair manifest, its split is
    ``train`` (bench photos never reach the training shards), its annotation is
    ``ok`` and the filter kept it.
    """
    grouped: dict[str, list[TrainingItem]] = defaultdict(list)
    for source in sorted(sources):
        manifest = read_manifest(store.get_bytes(f"{PAIR_SHARDS_PREFIX}/{source}/manifest.parquet"))
        ids = manifest.column("sample_id").to_pylist()
        split_of = dict(zip(ids, manifest.column("split").to_pylist(), strict=True))
        digests_of = dict(
            zip(
                ids,
                zip(
                    manifest.column("hq_sha256").to_pylist(),
                    manifest.column("lq_sha256").to_pylist(),
                    strict=True,
                ),
                strict=True,
            )
        )
        for tar_key in pair_shard_keys(store, source):
            annotations = _read_table(store, _stage_key(ANNOTATIONS_PREFIX, tar_key)).to_pylist()
            decisions = _read_table(store, _stage_key(FILTERED_PREFIX, tar_key)).to_pylist()
            kept = {row["sample_id"] for row in decisions if row["status"] == STATUS_OK}
            for row in annotations:
                sample = row["sample_id"]
                if row["status"] != STATUS_OK or sample not in kept:
                    continue
                if split_of.get(sample) != "train":
                    continue
                degradation = tar_key.split("/")[-2]
                grouped[degradation].append(
                    TrainingItem(
                        sample_id=sample,
                        source=source,
                        degradation=degradation,
                        pair_tar_key=tar_key,
                        vague_question=row["vague_question"],
                        precise_question=row["precise_question"],
                        cot_answers=row["cot_answers"],
                        hq_sha256=digests_of.get(sample, (None, None))[0],
                        lq_sha256=digests_of.get(sample, (None, None))[1],
                    )
                )
    for items in grouped.values():
        items.sort(key=lambda item: (item.source, item.pair_tar_key, item.sample_id))
    return dict(sorted(grouped.items()))


def training_meta(item: TrainingItem, source_meta: dict[str, Any]) -> dict[str, Any]:
    """``meta.json`` of a training sample in the public release's layout, plus lineage."""
    meta: dict[str, Any] = {
        "cot": {
            "questions": [item.vague_question, item.precise_question],
            "answers": item.cot_answers,
        },
        "deg": item.degradation,
        "sample_id": item.sample_id,
        "source": item.source,
        "item_key": source_meta.get("item_key"),
    }
    for step in source_meta.get("recipe") or []:
        if step.get("op") == "jpeg" and "quality" in step.get("params", {}):
            meta["jpeg_type"] = f"q{int(step['params']['quality'])}"
    return meta


@dataclass
class TrainingShardReport:
    """What :func:`write_training_shards` did."""

    shards_total: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    samples: int = 0
    by_degradation: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    #: Store keys of an earlier build's shards (and their markers) that the current kept
    #: set no longer has: removed, so no reader of the folder trains on them.
    stale_removed: list[str] = field(default_factory=list)


def _iter_training_shards(
    plan: dict[str, list[TrainingItem]], shard_size: int
) -> Iterator[tuple[str, int, list[TrainingItem]]]:
    for degradation, items in plan.items():
        for index, start in enumerate(range(0, len(items), shard_size)):
            yield degradation, index, items[start : start + shard_size]


def filtered_sources(store: ObjectStore, names: Sequence[str]) -> list[str]:
    """The sources among ``names`` that have pair shards, each with its filter decisions
    (what ``training_shards`` can be built from), in the given order."""

    def decided(key: str) -> bool:
        decisions = key.replace("pair_shards/", f"{FILTERED_PREFIX}/", 1).removesuffix(".tar")
        return store.exists(decisions + ".parquet")

    ready = []
    for name in names:
        keys = pair_shard_keys(store, name)
        if keys and all(decided(key) for key in keys):
            ready.append(name)
    return ready


def write_training_shards(
    store: ObjectStore,
    sources: Sequence[str],
    *,
    shard_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> TrainingShardReport:
    """Write the final shards of the kept training samples of ``sources`` (resumable).

    Image bytes are copied from the pair shards unchanged. Each output shard is
    followed by its manifest (the completion marker); ``sizes.json`` per folder
    and ``manifest.parquet`` for all come last.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    plan = plan_training_items(store, sources)
    jobs = list(_iter_training_shards(plan, shard_size))
    report = TrainingShardReport(shards_total=len(jobs))
    manifest_rows: list[dict[str, Any]] = []
    sizes: dict[str, dict[str, int]] = defaultdict(dict)
    pair_shards = _PairShardReader(store)
    for done, (degradation, index, items) in enumerate(jobs, start=1):
        name = f"{degradation}-{index:06d}"
        tar_key = f"{TRAINING_SHARDS_PREFIX}/{degradation}/{name}.tar"
        marker_key = f"{TRAINING_SHARDS_PREFIX}/{degradation}/{name}.parquet"
        rows = _finished_training_rows(store, tar_key, marker_key, items)
        if rows is None:
            samples = [pair_shards.training_sample(item) for item in items]
            rows = _store_training_shard(store, degradation, tar_key, marker_key, items, samples)
            report.shards_written += 1
        else:
            report.shards_skipped += 1
        manifest_rows += rows
        sizes[degradation][f"{name}.tar"] = len(rows)
        if progress is not None:
            progress(done, len(jobs))
    for degradation, counts in sizes.items():
        store.put_text(
            f"{TRAINING_SHARDS_PREFIX}/{degradation}/sizes.json", json.dumps(counts, indent=1)
        )
    table = pa.Table.from_pylist(manifest_rows, schema=TRAINING_MANIFEST_SCHEMA)
    store.put_bytes(f"{TRAINING_SHARDS_PREFIX}/manifest.parquet", parquet_bytes(table))
    report.stale_removed = _remove_stale_training_shards(store, sizes)
    report.samples = len(manifest_rows)
    report.by_degradation = dict(Counter(row["degradation"] for row in manifest_rows))
    report.by_source = dict(Counter(row["source"] for row in manifest_rows))
    store.put_text(f"{TRAINING_SHARDS_PREFIX}/report.json", json.dumps(asdict(report), indent=1))
    return report


def _finished_training_rows(
    store: ObjectStore, tar_key: str, marker_key: str, items: Sequence[TrainingItem]
) -> list[dict[str, Any]] | None:
    """A finished shard's manifest rows; None when it is missing or holds another set."""
    if not (store.exists(marker_key) and store.exists(tar_key)):
        return None
    rows = _read_table(store, marker_key).to_pylist()
    if [row["sample_id"] for row in rows] != [item.sample_id for item in items]:
        return None  # the kept set changed: rebuild this shard
    return rows


class _PairShardReader:
    """The pair shard samples come from, one shard read at a time (items arrive grouped)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.key: str | None = None
        self.samples: dict[str, ShardSample] = {}

    def training_sample(self, item: TrainingItem) -> ShardSample:
        """The item's pair with unchanged image bytes (checked) and its training metadata."""
        if self.key != item.pair_tar_key:
            loaded = _shard_samples(self.store, item.pair_tar_key)
            self.key, self.samples = item.pair_tar_key, {s.key: s for s in loaded}
        source_sample = self.samples.get(item.sample_id)
        if source_sample is None:
            raise ValueError(f"{item.pair_tar_key} lacks sample {item.sample_id}")
        _check_copied_bytes(self.store, item, source_sample)
        return ShardSample(
            key=item.sample_id,
            hq_png=source_sample.hq_png,
            lq_png=source_sample.lq_png,
            meta=training_meta(item, dict(source_sample.meta)),
        )


def _store_training_shard(
    store: ObjectStore,
    degradation: str,
    tar_key: str,
    marker_key: str,
    items: Sequence[TrainingItem],
    samples: list[ShardSample],
) -> list[dict[str, Any]]:
    """Write one training shard, then its manifest (the completion marker); its rows."""
    rows = [
        {
            "sample_id": item.sample_id,
            "source": item.source,
            "degradation": degradation,
            "pair_shard_uri": store.uri(item.pair_tar_key),
            "shard_uri": store.uri(tar_key),
            "shard_key": item.sample_id,
        }
        for item in items
    ]
    with store.staging_dir() as staging:
        local = staging / tar_key.rsplit("/", 1)[-1]
        write_shard(samples, local)
        store.put_file(tar_key, local, move=True)
    table = pa.Table.from_pylist(rows, schema=TRAINING_MANIFEST_SCHEMA)
    store.put_bytes(marker_key, parquet_bytes(table))
    return rows


def _check_copied_bytes(store: ObjectStore, item: TrainingItem, sample: ShardSample) -> None:
    """Refuse to copy a pair whose PNGs differ from the pair manifest's digests (a
    damaged pair shard): its completion marker is removed, so re-running pair_shards
    rebuilds it, and the error names it."""
    for name, data, recorded in (
        ("hq.png", sample.hq_png, item.hq_sha256),
        ("lq.png", sample.lq_png, item.lq_sha256),
    ):
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
            store.delete(item.pair_tar_key.removesuffix(".tar") + ".parquet")
            raise CorruptShardError(
                f"{store.uri(item.pair_tar_key)}: {item.sample_id}.{name} differs from the "
                "sha256 its manifest recorded; the shard is marked for rebuilding: "
                f"materialize pair_shards for '{item.source}' again, then training_shards"
            )


def _remove_stale_training_shards(
    store: ObjectStore, current: Mapping[str, Mapping[str, int]]
) -> list[str]:
    """Delete shards, markers and size lists of degradations or shard numbers the
    current build (``{degradation: {tar name: samples}}``) does not have; the new
    manifest is written first, so a reader never sees a set without its list."""
    keep = {
        f"{TRAINING_SHARDS_PREFIX}/{degradation}/{name}"
        for degradation, names in current.items()
        for tar in names
        for name in (tar, tar.removesuffix(".tar") + ".parquet")
    }
    keep |= {f"{TRAINING_SHARDS_PREFIX}/{degradation}/sizes.json" for degradation in current}
    removed = []
    for info in store.list(TRAINING_SHARDS_PREFIX + "/"):
        inside = info.key[len(TRAINING_SHARDS_PREFIX) + 1 :]
        if "/" in inside and info.key not in keep:  # top-level files are the set's own
            store.delete(info.key)
            removed.append(info.key)
    return sorted(removed)


__all__ = [
    "ANNOTATIONS_PREFIX",
    "ANNOTATION_SCHEMA",
    "DECISION_SCHEMA",
    "FILTERED_PREFIX",
    "TRAINING_SHARDS_PREFIX",
    "StageReport",
    "TrainingItem",
    "TrainingShardReport",
    "annotate_source",
    "filter_source",
    "load_annotations",
    "pair_shard_keys",
    "plan_training_items",
    "training_meta",
    "write_training_shards",
]
