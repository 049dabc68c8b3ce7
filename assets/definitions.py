"""The single Definitions object of the cotir code location (``dagster dev -w workspace.yaml``).

It only assembles: settings are read and validated when Dagster loads the code
location (not at import), and resources are picked by the profile.
"""

import dagster as dg

from assets import environment
from assets.annotation_stage import AnnotationResource, build_annotation_assets
from assets.data_stage import DEMO_SOURCE, DataStageResource, build_data_stage_assets
from assets.execution import build_executor, queue_tags
from assets.resources import ObjectStoreResource, ProfileResource
from cotir_pipeline.settings import CotirSettings, load_settings
from cotir_pipeline.sources.catalog import load_catalog

#: Materializes every asset of the DAG; the README's first command runs it with the
#: demo partition (partitioned assets) on the demo profile.
DEMO_JOB_NAME = "demo"


def build_definitions(settings: CotirSettings) -> dg.Definitions:
    """The code location for the given settings (tests pass their own)."""
    catalog = load_catalog()
    tags = lambda name: queue_tags(name, settings)  # noqa: E731 - one-line routing rule
    source_catalog, raw_pairs, pair_shards = build_data_stage_assets(catalog, tags)
    demo_job = dg.define_asset_job(
        name=DEMO_JOB_NAME,
        selection=dg.AssetSelection.all(),
        description="Every asset of the DAG, end to end; run it with the partition "
        f"'{DEMO_SOURCE}' on the demo profile (minutes on a CPU).",
    )
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules([environment]),
            source_catalog,
            raw_pairs,
            pair_shards,
            *build_annotation_assets(catalog, pair_shards, tags),
        ],
        asset_checks=dg.load_asset_checks_from_modules([environment]),
        jobs=[demo_job],
        executor=build_executor(settings),
        resources={
            "store": ObjectStoreResource.from_settings(settings),
            "profile": ProfileResource.from_settings(settings),
            "data_stage": DataStageResource.from_settings(settings),
            "annotation": AnnotationResource.from_settings(settings),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Entry point Dagster calls when it loads the code location."""
    return build_definitions(load_settings())
