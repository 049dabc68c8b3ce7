"""What the data-stage assets show in the UI (counts, previews, the manifest's first
rows) and their asset checks."""

import base64
from collections import Counter
from collections.abc import Sequence
from typing import Any

import dagster as dg

from assets.metadata import counts_table, parquet_output_metadata
from cotir_pipeline.pair_stage import PLAN_SCHEMA, PairCount, PlannedPair, ShardStageReport
from cotir_pipeline.shard_checks import ShardVerification, preview_grid_png
from cotir_pipeline.shards import MANIFEST_SCHEMA, STATUS_OK, read_manifest
from cotir_pipeline.sources.spec import SourceCatalog
from cotir_pipeline.store import ObjectStore

CATALOG_KEY = "source_catalog/catalog.json"
CATALOG_READS_BACK_CHECK = "stored_catalog_reads_back"


def stored_catalog_check(store: ObjectStore, catalog: SourceCatalog) -> dg.AssetCheckResult:
    """Read the stored catalog back and compare it with the loaded one."""
    try:
        stored = SourceCatalog.model_validate_json(store.get_text(CATALOG_KEY))
    except (OSError, ValueError) as error:  # missing, unreadable or invalid
        return dg.AssetCheckResult(
            check_name=CATALOG_READS_BACK_CHECK,
            passed=False,
            metadata={"error": f"{type(error).__name__}: {error}"[:500]},
        )
    loaded = {source.name: source for source in catalog.sources}
    read = {source.name: source for source in stored.sources}
    differing = sorted(
        name for name in loaded.keys() | read.keys() if loaded.get(name) != read.get(name)
    )
    return dg.AssetCheckResult(
        check_name=CATALOG_READS_BACK_CHECK,
        passed=stored == catalog and not differing,
        metadata={"sources": len(stored.sources), "sources_differing": differing[:20]},
    )


def plan_result(pairs: Sequence[PlannedPair], count: PairCount, uri: str) -> dg.MaterializeResult:
    """raw_pairs' metadata and check: counts per status and label, repeated keys."""
    statuses = Counter(pair.status for pair in pairs)
    labels = Counter(pair.degradation for pair in pairs if pair.status == STATUS_OK)
    keys = Counter((pair.item_key, pair.degradation, pair.seed) for pair in pairs)
    repeated = [f"{key}" for key, times in keys.items() if times > 1]
    unexplained = sum(1 for pair in pairs if pair.status != STATUS_OK and not pair.reason)
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(
                check_name="plan_keys_unique",
                passed=not repeated and not unexplained,
                metadata={
                    "repeated_keys": dg.MetadataValue.json(repeated[:20]),
                    "dropped_without_reason": unexplained,
                },
            )
        ],
        metadata={
            "pairs_ok": statuses.get(STATUS_OK, 0),
            "pairs_dropped": sum(n for s, n in statuses.items() if s != STATUS_OK),
            "degradation_types": len(labels),
            "by_degradation": dg.MetadataValue.md(counts_table("degradation", labels)),
            "uri": dg.MetadataValue.url(uri),
            "pair_count": dg.MetadataValue.json(
                {"verdict": count.verdict, "found": count.found, "expected": count.expected}
            ),
            **parquet_output_metadata(PLAN_SCHEMA, len(pairs)),
        },
    )


def previews(
    object_store: ObjectStore, prefix: str, verification: ShardVerification
) -> dict[str, Any]:
    """The manifest's first rows, and an LQ | HQ grid (also stored as preview.png)."""
    metadata: dict[str, Any] = {
        "manifest_preview": _manifest_preview(object_store.get_bytes(f"{prefix}/manifest.parquet"))
    }
    if verification.preview_samples:
        preview = preview_grid_png(verification.preview_samples)
        object_store.put_bytes(f"{prefix}/preview.png", preview)
        labels = ", ".join(label for label, _, _ in verification.preview_samples)
        encoded = base64.b64encode(preview).decode("ascii")
        metadata["preview"] = dg.MetadataValue.md(
            f"LQ | HQ, one row per degradation ({labels})\n\n"
            f"![preview](data:image/png;base64,{encoded})"
        )
    return metadata


def shards_result(
    report: ShardStageReport, verification: ShardVerification, metadata: dict[str, Any]
) -> dg.MaterializeResult:
    """pair_shards' metadata (``metadata`` holds the previews and the URI) and checks."""
    return dg.MaterializeResult(
        check_results=shard_check_results(verification),
        metadata={
            **metadata,
            "by_task": dg.MetadataValue.md(counts_table("task", Counter(verification.by_task))),
            "samples_ok": report.samples_ok,
            "samples_dropped": report.samples_dropped,
            "samples_failed": report.samples_failed,
            "shards": report.shards_total,
            "shards_written": report.shards_written,
            "shards_skipped": report.shards_skipped,
            "shards_rebuilt_damaged": dg.MetadataValue.json(report.shards_damaged[:50]),
            "shards_verified": f"{verification.shards_checked} of {verification.shards_total}",
            "by_degradation": dg.MetadataValue.md(
                counts_table("degradation", Counter(report.by_degradation))
            ),
            "by_split": dg.MetadataValue.json(report.by_split),
            "drop_reasons": dg.MetadataValue.json(report.drop_reasons),
            **parquet_output_metadata(
                MANIFEST_SCHEMA,
                report.samples_ok + report.samples_dropped + report.samples_failed,
            ),
        },
    )


_PREVIEW_COLUMNS = ("sample_id", "item_key", "split", "degradation", "task", "status", "reason")


def _manifest_preview(manifest: bytes, rows: int = 8) -> dg.TableMetadataValue:
    """The first manifest rows as a table in the asset's metadata."""
    table = read_manifest(manifest).slice(0, rows).select(list(_PREVIEW_COLUMNS))
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {name: "" if value is None else str(value) for name, value in row.items()}
            )
            for row in table.to_pylist()
        ],
        schema=dg.TableSchema(
            columns=[dg.TableColumn(name, "string") for name in _PREVIEW_COLUMNS]
        ),
    )


SHARD_CHECKS = {
    "manifest_matches_shards": "Every ok manifest row is a sample in the shard it names, "
    "every shard sample has its row, and its PNGs have the sha256 digests the row recorded "
    "(shards read back from the store: 64 spread over the source, or all with "
    "data_stage.verify_all_shards). A truncated or altered shard is named and loses its "
    "completion marker, so the next run rebuilds it.",
    "unique_sample_ids": "No sample id appears twice in the source's manifest.",
    "failures_have_reasons": "Every dropped or failed sample records why.",
}


def shard_check_results(verification: ShardVerification) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name="manifest_matches_shards",
            passed=verification.manifest_matches_shards,
            metadata={
                "shards_checked": verification.shards_checked,
                "shards_total": verification.shards_total,
                "problems": dg.MetadataValue.json(verification.mismatches[:20]),
                # Their completion markers are gone: the next run rebuilds them.
                "marked_for_rebuild": dg.MetadataValue.json(verification.damaged_shards[:20]),
            },
        ),
        dg.AssetCheckResult(
            check_name="unique_sample_ids",
            passed=not verification.duplicate_ids,
            metadata={"duplicates": dg.MetadataValue.json(verification.duplicate_ids[:20])},
        ),
        dg.AssetCheckResult(
            check_name="failures_have_reasons",
            passed=not verification.rows_without_reason,
            metadata={
                "without_reason": dg.MetadataValue.json(verification.rows_without_reason[:20])
            },
        ),
    ]
