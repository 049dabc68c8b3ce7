"""``source_catalog``, ``raw_pairs`` and ``pair_shards``.

``raw_pairs`` and ``pair_shards`` are partitioned by source (the catalog's names),
so sources are fetched and sharded independently and in parallel. Per-sample
outcomes live in Parquet manifests in the store; Dagster sees one event per
partition.
"""

from collections import Counter
from collections.abc import Callable, Sequence

import dagster as dg

from assets.data_stage.metadata import (
    CATALOG_KEY,
    CATALOG_READS_BACK_CHECK,
    SHARD_CHECKS,
    plan_result,
    previews,
    shards_result,
    stored_catalog_check,
)
from assets.data_stage.resource import DataStageResource, files_root
from assets.metadata import counts_table
from assets.resources import ObjectStoreResource, clear_leftovers
from cotir_pipeline.pair_stage import (
    PAIR_SHARDS_PREFIX,
    PlanSettings,
    count_pairs,
    load_plan,
    plan_source,
    save_plan,
    write_pair_shards,
)
from cotir_pipeline.shard_checks import verify_source_shards
from cotir_pipeline.sources.spec import SourceCatalog


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
        root = files_root(source, catalog, data_stage, context)
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
        return plan_result(pairs, count, object_store.uri(key))

    return raw_pairs


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
        fetched_root = files_root(source, catalog, data_stage, context)
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
        metadata = previews(object_store, prefix, verification)
        if report.samples_failed:
            raise dg.Failure(
                description=f"{source.name}: {report.samples_failed} samples failed with "
                f"unexpected errors ({report.drop_reasons}); they are recorded in "
                f"{object_store.uri(prefix + '/manifest.parquet')} and their shards are "
                "rebuilt on the next run",
                allow_retries=False,
            )
        metadata["uri"] = dg.MetadataValue.url(object_store.uri(f"{prefix}/manifest.parquet"))
        return shards_result(report, verification, metadata)

    return pair_shards
