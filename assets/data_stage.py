"""Data stage: the source catalog, each source's raw pairs, and its pair shards.

``raw_pairs`` and ``pair_shards`` are partitioned by source (the catalog's names),
so sources are fetched and sharded independently and in parallel. Per-sample
outcomes live in Parquet manifests in the store; Dagster sees one event per
partition.
"""

import base64
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from assets.metadata import counts_table, parquet_output_metadata
from assets.resources import ObjectStoreResource, clear_leftovers
from cotir_pipeline.pair_stage import (
    DEFAULT_PAIR_COUNT_TOLERANCE,
    PAIR_SHARDS_PREFIX,
    PLAN_SCHEMA,
    PairCount,
    PlannedPair,
    PlanSettings,
    ShardStageReport,
    count_pairs,
    files_source,
    load_plan,
    plan_source,
    save_plan,
    write_pair_shards,
)
from cotir_pipeline.shard_checks import (
    ShardVerification,
    preview_grid_png,
    verify_source_shards,
)
from cotir_pipeline.shards import MANIFEST_SCHEMA, STATUS_OK, read_manifest
from cotir_pipeline.sources.spec import SourceCatalog, SourceDataset
from cotir_pipeline.store import ObjectStore

DEMO_SOURCE = "demo"


class DataStageResource(dg.ConfigurableResource):
    """Sizes, seeds and local folders of the data stage (defaults picked by profile)."""

    stored_size: int = Field(description="Side of the stored square pairs in pixels.")
    shard_size: int = Field(description="Samples per shard.")
    workers: int = Field(default=1, description="Processes that build shards in parallel.")
    seed: int = Field(default=0, description="Base seed of every synthetic recipe.")
    demo_patch_size: int = Field(default=128, description="Patch size cut from demo photos.")
    demo_stride: int = Field(default=128, description="Stride between demo patches.")
    recipes_per_item: int = Field(default=2, description="Recipes applied to each clean item.")
    cache_dir: str = Field(description="COTIR_CACHE_DIR: downloads and extracted archives.")
    mirror_dir: str | None = Field(default=None, description="COTIR_MIRROR_DIR: local mirror.")
    verify_all_shards: bool = Field(
        default=False,
        description="Check every stored shard's member digests after a run (default: 64 "
        "shards spread over the source, a sample).",
    )
    pair_count_tolerance: float = Field(
        default=DEFAULT_PAIR_COUNT_TOLERANCE,
        ge=0.0,
        lt=1.0,
        description="Share of a fetched source's expected_pairs that may be missing: fewer "
        "pairs than that fail raw_pairs; missing pairs within it are a warning.",
    )


#: Where source_catalog stores the catalog, and its asset check.
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


def build_data_stage_assets(
    catalog: SourceCatalog,
    op_tags: Callable[[str], dict[str, str]] = lambda name: {},
    *,
    only: Sequence[str] | None = None,
) -> list[dg.AssetsDefinition]:
    """The data-stage assets, partitioned over the catalog's sources.

    ``op_tags`` gives each asset's op tags by name (the executor's queue routing).
    ``only`` limits the partitions to the sources the profile can build (the demo
    profile: ``demo``), so the UI's "Materialize all" never offers a backfill of sources
    that need the network or manual downloads.
    """
    names = [source.name for source in catalog.sources]
    if only is not None:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"sources not in the catalog: {unknown}")
        names = [name for name in names if name in set(only)]
    sources = dg.StaticPartitionsDefinition(names)
    source_catalog = _source_catalog_asset(catalog, op_tags)
    raw_pairs = _raw_pairs_asset(catalog, sources, source_catalog, op_tags)
    pair_shards = _pair_shards_asset(catalog, sources, raw_pairs, op_tags)
    return [source_catalog, raw_pairs, pair_shards]


def _source_catalog_asset(
    catalog: SourceCatalog, op_tags: Callable[[str], dict[str, str]]
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name="data",
        kinds={"yaml", "parquet"},
        op_tags=op_tags("source_catalog"),
        description="The registry of source datasets (tasks, licence, fetch method, pairing).",
        check_specs=[
            dg.AssetCheckSpec(
                CATALOG_READS_BACK_CHECK,
                asset="source_catalog",
                description="The stored catalog.json parses back to the catalog this code "
                "location loaded (the file every later stage and lineage look-up reads).",
            )
        ],
    )
    def source_catalog(store: ObjectStoreResource) -> dg.MaterializeResult:
        """Store the validated catalog as JSON and summarize its task coverage."""
        document = catalog.model_dump_json(indent=1)
        object_store = store.open()
        object_store.put_text(CATALOG_KEY, document)
        coverage = Counter(task.value for source in catalog.sources for task in source.tasks)
        methods = Counter(
            source.fetch.method if source.fetch else "synthetic" for source in catalog.sources
        )
        return dg.MaterializeResult(
            metadata={
                "sources": len(catalog.sources),
                "uri": dg.MetadataValue.url(object_store.uri(CATALOG_KEY)),
                "task_coverage": dg.MetadataValue.md(counts_table("task", coverage)),
                "fetch_methods": dg.MetadataValue.json(dict(methods)),
            },
            check_results=[stored_catalog_check(object_store, catalog)],
        )

    return source_catalog


def _raw_pairs_asset(
    catalog: SourceCatalog,
    sources: dg.StaticPartitionsDefinition,
    upstream: dg.AssetsDefinition,
    op_tags: Callable[[str], dict[str, str]],
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name="data",
        kinds={"parquet"},
        partitions_def=sources,
        deps=[upstream],
        op_tags=op_tags("raw_pairs"),
        description="Every LQ/HQ pair a source yields (fetched files or seeded recipes).",
        check_specs=[
            dg.AssetCheckSpec(
                "plan_keys_unique",
                asset="raw_pairs",
                description="No two planned pairs share (item key, degradation, seed): the key "
                "lineage joins the plan on, and every dropped entry says why.",
            )
        ],
    )
    def raw_pairs(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        data_stage: DataStageResource,
    ) -> dg.MaterializeResult:
        """Fetch (or synthesize the plan of) one source and list its pairs."""
        source = catalog.get(context.partition_key)
        root = _files_root(source, catalog, data_stage, context)
        plan = PlanSettings(
            seed=data_stage.seed,
            recipes_per_item=data_stage.recipes_per_item,
            demo_patch_size=data_stage.demo_patch_size,
            demo_stride=data_stage.demo_stride,
        )
        pairs = plan_source(source, catalog, root, plan)
        object_store = store.open()
        key = save_plan(object_store, source.name, pairs)
        count = count_pairs(
            source.name,
            pairs,
            source.expected_pairs if source.fetch is not None else None,
            data_stage.pair_count_tolerance,
        )
        if count.verdict == "failed":
            # The plan is stored first: it lists every unpaired file with its reason.
            raise dg.Failure(
                description=count.message(),
                metadata={"pairs_found": count.found, "pairs_expected": count.expected},
                allow_retries=False,
            )
        if count.verdict == "short":
            context.log.warning(count.message())
        return _plan_result(pairs, count, object_store.uri(key))

    return raw_pairs


def _plan_result(pairs: Sequence[PlannedPair], count: PairCount, uri: str) -> dg.MaterializeResult:
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


def _pair_shards_asset(
    catalog: SourceCatalog,
    sources: dg.StaticPartitionsDefinition,
    upstream: dg.AssetsDefinition,
    op_tags: Callable[[str], dict[str, str]],
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name="data",
        kinds={"webdataset", "parquet"},
        partitions_def=sources,
        deps=[upstream],
        op_tags=op_tags("pair_shards"),
        description="Pairs at the stored size in WebDataset shards (one folder per "
        "degradation), with one manifest row per sample.",
        check_specs=[
            dg.AssetCheckSpec(name, asset="pair_shards", description=description, blocking=True)
            for name, description in SHARD_CHECKS.items()
        ],
    )
    def pair_shards(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        data_stage: DataStageResource,
    ) -> dg.MaterializeResult:
        """Build the shards of one source; finished shards are skipped on a re-run."""
        source = catalog.get(context.partition_key)
        object_store = store.open()
        clear_leftovers(object_store, f"{PAIR_SHARDS_PREFIX}/{source.name}/", context)
        pairs = load_plan(object_store, source.name)
        fetched_root = _files_root(source, catalog, data_stage, context)
        report = write_pair_shards(
            object_store,
            pairs,
            size=data_stage.stored_size,
            shard_size=data_stage.shard_size,
            fetched_root=fetched_root,
            workers=data_stage.workers,
            progress=lambda done, total: context.log.debug(f"shards {done}/{total}"),
        )
        context.log.info(
            f"{source.name}: {report.shards_written} shards written, "
            f"{report.shards_skipped} already finished"
        )
        if report.shards_damaged:
            context.log.warning(
                f"{source.name}: rebuilt {len(report.shards_damaged)} stored shard(s) whose "
                f"size differed from the recorded one (truncated or damaged): "
                f"{', '.join(report.shards_damaged[:5])}"
            )
        prefix = f"{PAIR_SHARDS_PREFIX}/{source.name}"
        verification = verify_source_shards(
            object_store, prefix, max_shards=None if data_stage.verify_all_shards else 64
        )
        metadata = _previews(object_store, prefix, verification)
        if report.samples_failed:
            raise dg.Failure(
                description=f"{source.name}: {report.samples_failed} samples failed with "
                f"unexpected errors ({report.drop_reasons}); they are recorded in "
                f"{object_store.uri(prefix + '/manifest.parquet')} and their shards are "
                "rebuilt on the next run",
                allow_retries=False,
            )
        metadata["uri"] = dg.MetadataValue.url(object_store.uri(f"{prefix}/manifest.parquet"))
        return _shards_result(report, verification, metadata)

    return pair_shards


def _previews(
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


def _shards_result(
    report: ShardStageReport, verification: ShardVerification, metadata: dict[str, Any]
) -> dg.MaterializeResult:
    """pair_shards' metadata (``metadata`` holds the previews and the URI) and checks."""
    return dg.MaterializeResult(
        check_results=_shard_check_results(verification),
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


def _shard_check_results(verification: ShardVerification) -> list[dg.AssetCheckResult]:
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


def _files_root(
    source: SourceDataset,
    catalog: SourceCatalog,
    data_stage: DataStageResource,
    context: dg.AssetExecutionContext,
) -> Path | None:
    """The fetched files the source is built from (a no-op once fetched; None: demo photos)."""
    files = files_source(source, catalog)
    return None if files is None else _fetch(files, data_stage, context)


def _fetch(
    source: SourceDataset, data_stage: DataStageResource, context: dg.AssetExecutionContext
) -> Path:
    """Fetch (or find already fetched) files of a source; a no-op when finished."""
    from cotir_pipeline.sources.fetch import FetchError, fetch_source

    if source.fetch is None:
        raise dg.Failure(description=f"{source.name}: synthetic source has nothing to fetch")
    try:
        result = fetch_source(
            source.name,
            source.fetch,
            cache_dir=Path(data_stage.cache_dir),
            mirror_dir=Path(data_stage.mirror_dir) if data_stage.mirror_dir else None,
            layout_globs=[glob for rule in source.splits for glob in (rule.lq_glob, rule.hq_glob)],
        )
    except FetchError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    context.log.info(f"{source.name}: {len(result.files)} files at {result.root}")
    return result.root
