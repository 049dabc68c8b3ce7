"""``DataStageResource`` and fetching a source's files with it (a no-op once fetched)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from cotir_pipeline.pair_stage import DEFAULT_PAIR_COUNT_TOLERANCE, files_source
from cotir_pipeline.sources.fetch.base import FetchError
from cotir_pipeline.sources.fetch.dispatch import fetch_source
from cotir_pipeline.sources.spec import SourceCatalog, SourceDataset

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


def files_root(
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
