"""The single Definitions object of the cotir code location (``dagster dev -w workspace.yaml``).

It only assembles: settings are read and validated when Dagster loads the code
location (not at import), and resources are picked by the profile.
"""

import contextlib
import warnings
from collections.abc import Iterator

import dagster as dg

# The tag by which the UI lists a job's runs (runs launched through the workspace get it
# from their code origin); Dagster keeps the constant in an internal module.
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

from assets import environment
from assets.annotation_stage import build_annotation_assets
from assets.data_stage.assets import build_data_stage_assets
from assets.data_stage.resource import DEMO_SOURCE
from assets.evaluation.automation import build_evaluation_definitions, evaluation_run_selection
from assets.execution import build_executor, queue_tags
from assets.lineage import build_lineage_assets, lineage_lookup
from assets.monitoring import build_dead_run_worker_sensor
from assets.profiles import resources_for
from assets.training.assets import build_training_assets
from assets.training.resource import LQ_FLOW_ASSET, TrainingResource
from assets.training.serving import ONNX_EXPORT_JOB, build_onnx_export_asset
from assets.training.table_vii import TABLE_VII_JOB, build_table_vii_asset
from cotir_pipeline.settings import CotirSettings, Profile, load_settings
from cotir_pipeline.sources.catalog import load_catalog
from models.variants import get_variant

#: Materializes every asset of the DAG except the method x bench evaluation and the tables
#: (an asset job takes one partitions definition); the README's first command runs it with
#: the demo partition on the demo profile, then ``evaluation`` and ``reporting`` follow.
DEMO_JOB_NAME = "demo"
#: Rebuilds the lineage index (after evaluation and reporting in the demo runner).
LINEAGE_JOB_NAME = "lineage"
#: The code location's name, as workspace.yaml and pyproject.toml's [tool.dagster] give it.
CODE_LOCATION_NAME = "cotir"
#: Owner of every asset, shown in the UI's catalog and asset pages.
OWNER = "team:cotir-pipeline"


def code_location_run_tags(definitions: dg.Definitions) -> dict[str, str]:
    """Tags that file a run started outside the UI (``execute_in_process``) under its job.

    The UI's job page and the overview timeline list runs by the repository label that
    runs launched through the workspace carry. An in-process run has no code origin, so
    without this tag ``make demo``'s runs would be missing from Jobs -> demo -> Runs.
    """
    repository = definitions.get_repository_def().name
    return {REPOSITORY_LABEL_TAG: f"{repository}@{CODE_LOCATION_NAME}"}


def build_definitions(
    settings: CotirSettings, *, training: TrainingResource | None = None
) -> dg.Definitions:
    """The code location for the given settings (tests pass their own, and may pass a
    shorter ``training`` resource)."""
    catalog = load_catalog()
    tags = lambda name: queue_tags(name, settings)  # noqa: E731 - one-line routing rule
    # The demo profile builds the embedded demo source only; the full profile every source.
    buildable = [DEMO_SOURCE] if settings.profile is Profile.DEMO else None
    source_catalog, raw_pairs, pair_shards = build_data_stage_assets(catalog, tags, only=buildable)
    annotation_assets = build_annotation_assets(catalog, pair_shards, tags)
    resources = resources_for(settings)
    training_resource = training or resources["training"]
    training_assets = build_training_assets(tags, lq_flow_run=training_resource.lq_flow_run)
    checkpoints = [asset.key for asset in training_assets if asset.key.path[-1] != "base_model"]
    # The main row's ONNX export, where the variant exports (the CPU demo variants).
    serving_assets = (
        [build_onnx_export_asset(tags(LQ_FLOW_ASSET))]
        if training_resource.lq_flow_run and get_variant(training_resource.variant).exports_to_onnx
        else []
    )
    evaluation = build_evaluation_definitions(
        settings, tags, evaluation=resources["evaluation"], checkpoints=checkpoints
    )
    lineage_assets = build_lineage_assets(
        [
            raw_pairs.key,
            pair_shards.key,
            *(asset.key for asset in annotation_assets),
            *(asset.key for asset in training_assets),
            *(asset.key for asset in evaluation.assets),
        ],
        queue_tags("sample_lineage", settings),
    )
    table_vii = build_table_vii_asset(tags)
    table_vii_job = dg.define_asset_job(
        name=TABLE_VII_JOB,
        selection=dg.AssetSelection.assets(table_vii),
        description="Table VII at demo scale: the ablation arms over seeds (about 30 minutes "
        "on 2 CPU cores for 4 arms x 3 seeds); run after the demo job.",
    )
    lineage_job = dg.define_asset_job(
        name=LINEAGE_JOB_NAME,
        selection=dg.AssetSelection.assets(*lineage_assets),
        description="Rebuild the sample lineage index from every stage's manifests.",
    )
    serving_jobs = []
    if serving_assets:
        serving_jobs.append(
            dg.define_asset_job(
                name=ONNX_EXPORT_JOB,
                selection=dg.AssetSelection.assets(*serving_assets),
                description="Export the demo's main-row checkpoint to ONNX (about 40 s on "
                "one core); `make demo` runs it beside the evaluation.",
            )
        )
    demo_job = dg.define_asset_job(
        name=DEMO_JOB_NAME,
        selection=dg.AssetSelection.all()
        - evaluation_run_selection()
        - dg.AssetSelection.assets(*lineage_assets, table_vii, *serving_assets),
        description="Every asset of the DAG up to the bench sets, end to end; run it with the "
        f"partition '{DEMO_SOURCE}' on the demo profile (minutes on a CPU), then the "
        "'evaluation' job per method x bench partition and 'reporting'.",
    )
    with _quiet_beta_features():
        # Code references: the UI links each asset to the function that computes it.
        assets = dg.with_source_code_references(
            [
                *dg.load_assets_from_modules([environment]),
                source_catalog,
                raw_pairs,
                pair_shards,
                *annotation_assets,
                *training_assets,
                *serving_assets,
                table_vii,
                *evaluation.assets,
                *lineage_assets,
            ]
        )
    definitions = dg.Definitions(
        assets=assets,
        asset_checks=dg.load_asset_checks_from_modules([environment]),
        jobs=[
            demo_job,
            *evaluation.jobs,
            lineage_job,
            lineage_lookup,
            table_vii_job,
            *serving_jobs,
        ],
        schedules=evaluation.schedules,
        sensors=[*evaluation.sensors, build_dead_run_worker_sensor()],
        executor=build_executor(settings),
        resources={**resources, **evaluation.resources, "training": training_resource},
    )
    with _quiet_beta_features():
        return definitions.map_asset_specs(
            func=lambda spec: spec if spec.owners else spec.replace_attributes(owners=[OWNER])
        )


@contextlib.contextmanager
def _quiet_beta_features() -> Iterator[None]:
    """Code references and spec mapping are beta/preview in Dagster 1.13: their warnings
    would be printed on every load of the code location."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        yield


@dg.definitions
def defs() -> dg.Definitions:
    """Entry point Dagster calls when it loads the code location."""
    return build_definitions(load_settings())
