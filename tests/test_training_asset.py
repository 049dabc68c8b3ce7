"""The cotir_checkpoint asset: training through Dagster Pipes on real demo training shards."""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.profiles import resources_for, training_resource
from assets.resources import ObjectStoreResource
from assets.training.assets import build_training_assets
from assets.training.metadata import metrics_table
from assets.training.resource import TrainingResource
from assets.training.serving import build_onnx_export_asset
from cotir_pipeline.annotation.clip_filter import ConsistencyFilter
from cotir_pipeline.annotation.template_backend import TemplateBackend
from cotir_pipeline.annotation_stage import annotate_source, filter_source, write_training_shards
from cotir_pipeline.checkpoint_layout import CHECKPOINTS_PREFIX
from cotir_pipeline.pair_stage import plan_demo_pairs, recipe_refs, write_pair_shards
from cotir_pipeline.settings import CotirSettings
from cotir_pipeline.store import LocalObjectStore


@pytest.fixture(scope="module")
def shard_store(tmp_path_factory: pytest.TempPathFactory) -> LocalObjectStore:
    """Demo pairs -> template annotations -> filter -> training shards (a few seconds)."""
    plan = plan_demo_pairs(
        recipes=recipe_refs("demo"), patch_size=128, stride=128, recipes_per_patch=2, seed=0
    )
    train_pairs = [pair for pair in plan if pair.status == "ok" and pair.split == "train"]
    store = LocalObjectStore(tmp_path_factory.mktemp("store"))
    write_pair_shards(store, train_pairs[:16], size=64, shard_size=8)
    annotate_source(store, "demo", TemplateBackend())
    filter_source(store, "demo", ConsistencyFilter())
    report = write_training_shards(store, ["demo"], shard_size=4)
    assert report.samples > 8
    return store


@pytest.mark.slow
def test_the_asset_trains_through_pipes_and_reports_metrics_and_plots(
    shard_store: LocalObjectStore, tmp_path: Path
) -> None:
    assets = build_training_assets()
    training = TrainingResource(variant="tiny", steps=6, output_dir=str(tmp_path / "training"))
    resources = {
        "store": ObjectStoreResource(url=shard_store.url),
        "training": training,
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
    definitions = dg.Definitions(assets=assets, resources=resources)
    job = definitions.resolve_implicit_global_asset_job_def()
    assert (
        dg.AssetKey("training_shards")
        in job.asset_layer.asset_graph.get(dg.AssetKey("cotir_checkpoint")).parent_keys
    )

    result = dg.materialize(assets, resources=resources)
    assert result.success
    events = {
        e.materialization.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert events["base_model"]["kind"].value == "random (test toy, no base)"
    metadata = events["cotir_checkpoint"]
    assert metadata["variant"].value == "tiny"
    assert metadata["steps"].value == 6
    assert metadata["metric_records_streamed"].value == 6
    for key in ("final_loss_fm", "final_loss_scene", "final_lambda_plan", "final_lr"):
        assert isinstance(metadata[key].value, float), key
    assert metadata["final_lambda_plan"].value > 0
    assert metadata["restoration_loss_plot"].value.startswith("![restoration")
    assert "data:image/png;base64," in metadata["multipliers_plot"].value
    assert "| step |" in metadata["metrics"].value
    checkpoint = Path(metadata["checkpoint"].value)
    assert (checkpoint / "cotir.json").is_file()
    assert len(metadata["checkpoint_sha256"].value) == 64
    # The UI's columns and rows of training_runs/<run>/manifest.parquet.
    columns = [column.name for column in metadata["dagster/column_schema"].schema.columns]
    assert columns == ["sample_id", "run_id", "first_step", "last_step", "times"]
    assert metadata["dagster/row_count"].value == metadata["samples_trained_on"].value > 0
    # The checkpoint was uploaded to the store under checkpoints/tiny/<run id>/, the run id
    # derived from what determines the weights (command, shards, base).
    run_id = metadata["run_id"].value
    assert run_id.startswith("r")
    assert len(run_id) == 11
    run_prefix = f"{CHECKPOINTS_PREFIX}/tiny/{run_id}"
    assert shard_store.get_text(f"{run_prefix}/latest").strip() == "step-0000006"
    assert shard_store.exists(f"{run_prefix}/step-0000006/model/cotir.json")
    assert metadata["checkpoint_uri"].value.endswith(f"{run_prefix}/step-0000006/model")
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert checks["losses_are_finite"].passed
    # The tiny toy has no base model record: its copy fidelity is "not measured".
    assert checks["prior_copy_fidelity"].passed
    marker = shard_store.get_text(f"{run_prefix}/step-0000006/checkpoint.json")
    assert '"final": true' in marker
    assert f'"run": "{run_id}"' in marker

    # Nothing changed: the same run folder is found finished, nothing is trained again.
    again = dg.materialize(assets, resources=resources)
    assert again.success
    (repeat,) = [
        e.materialization.metadata
        for e in again.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "cotir_checkpoint"
    ]
    assert repeat["run_id"].value == run_id
    assert repeat["checkpoint_sha256"].value == metadata["checkpoint_sha256"].value
    assert repeat["metric_records_streamed"].value == 0


def test_missing_shards_fail_the_asset_clearly(tmp_path: Path) -> None:
    resources = {
        "store": ObjectStoreResource(url=str(tmp_path / "empty-store")),
        "training": TrainingResource(variant="tiny", output_dir=str(tmp_path / "training")),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
    result = dg.materialize(build_training_assets(), resources=resources, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "materialize training_shards first" in str(failure)


def test_commands_for_each_launcher(tmp_path: Path) -> None:
    single = TrainingResource(output_dir=str(tmp_path), steps=5, constraint_mode="union")
    command = single.command(shards="/data/ts", out=tmp_path / "run", store_url=None)
    assert command[:3] == [sys.executable, "-m", "models.train"]
    assert command[command.index("--constraint-mode") + 1] == "union"
    assert command[command.index("--steps") + 1] == "5"
    assert "--store-url" not in command

    ddp = TrainingResource(output_dir=str(tmp_path), launcher="accelerate", num_processes=8)
    command = ddp.command(shards="s3://b/ts", out=tmp_path / "run", store_url="s3://b/ck")
    # The launcher runs through models.launch, so it ends with the step that started it.
    assert command[1:4] == ["-m", "models.launch", "accelerate.commands.launch"]
    assert "--multi_gpu" in command
    assert command[command.index("--num_processes") + 1] == "8"
    assert command[command.index("--store-url") + 1] == "s3://b/ck"
    assert "--steps" not in command  # the variant's full schedule

    fsdp = TrainingResource(
        output_dir=str(tmp_path),
        launcher="accelerate",
        num_processes=8,
        variant="cotir-12b",
        accelerate_config="configs/accelerate/fsdp_12b.yaml",
        extra_args=["--gradient-checkpointing"],
    )
    command = fsdp.command(shards="s3://b/ts", out=tmp_path / "run", store_url=None)
    assert command[command.index("--config_file") + 1] == "configs/accelerate/fsdp_12b.yaml"
    assert "--multi_gpu" not in command
    assert command[-1] == "--gradient-checkpointing"

    with pytest.raises(ValueError, match="launcher=accelerate"):
        TrainingResource(output_dir=str(tmp_path), num_processes=2).launcher_prefix()


def test_resources_from_settings(tmp_path: Path) -> None:
    demo = resources_for(CotirSettings(home=tmp_path))
    assert demo["training"].variant == "demo"
    assert demo["training"].launcher == "python"
    # The demo's main run is the paper's objective; the LQ-flow comparison is its own asset.
    assert demo["training"].flow_start == "noise"
    assert demo["training"].lq_flow_run
    assert demo["training"].output_dir == str(tmp_path.resolve() / "training")
    assert isinstance(demo["pipes_subprocess_client"], dg.PipesSubprocessClient)
    full = training_resource(
        CotirSettings(home=tmp_path, profile="full", annotation_backend="template")
    )
    assert (full.variant, full.launcher, full.num_processes, full.steps) == (
        "cotir-4b",
        "accelerate",
        8,
        None,
    )
    assert full.flow_start == "noise"
    assert not full.lq_flow_run
    names = [a.key.to_user_string() for a in build_training_assets(lq_flow_run=True)]
    assert names == ["base_model", "cotir_checkpoint", "cotir_checkpoint_lq_flow"]
    command = demo["training"].command(shards="/s", out=tmp_path / "r", store_url=None)
    assert command[command.index("--flow-start") + 1] == "noise"
    command = demo["training"].command(
        shards="/s", out=tmp_path / "r", store_url=None, flow_start="reference"
    )
    # The LQ-start row is the demo's LQ-start recipe, not only its flow start.
    assert command[command.index("--flow-start") + 1] == "reference"
    assert command[command.index("--velocity") + 1] == "delta"
    assert command[command.index("--flow-times") + 1] == "start"
    assert command[command.index("--fm-weighting") + 1] == "relative"
    assert command[command.index("--fm-relative-floor") + 1] == "1e-2"
    assert command[command.index("--lora-scope") + 1] == "text_path"
    assert "--base" not in command  # the variant's own (shipped) base
    paper = demo["training"].command(shards="/s", out=tmp_path / "r", store_url=None)
    assert "--lora-scope" not in paper  # the paper-objective row keeps the paper's LoRA


def test_the_demo_trains_its_paper_objective_row_at_table_vii_budget(tmp_path: Path) -> None:
    """The demo's second row trains 300 steps (as Table VII's arms), its main row the
    variant's schedule; COTIR_TRAIN_STEPS sets both; the full profile keeps the variant's."""

    def steps_of(command: list[str]) -> str | None:
        return command[command.index("--steps") + 1] if "--steps" in command else None

    def commands(settings: CotirSettings) -> tuple[str | None, str | None]:
        training = training_resource(settings)
        paper = training.command(shards="/s", out=tmp_path / "p", store_url=None)
        lq = training.command(
            shards="/s", out=tmp_path / "l", store_url=None, flow_start="reference"
        )
        return steps_of(paper), steps_of(lq)

    assert commands(CotirSettings(home=tmp_path)) == ("300", None)
    assert commands(CotirSettings(home=tmp_path, train_steps=40)) == ("40", "40")
    full = CotirSettings(home=tmp_path, profile="full", annotation_backend="template")
    assert (
        steps_of(training_resource(full).command(shards="/s", out=tmp_path, store_url=None)) is None
    )


def test_metrics_table_samples_rows() -> None:
    records = [
        {"step": s, "lr": 1e-4, "loss_fm": 1.0 / s, "lambda_scene": s * 1e-4} for s in range(1, 50)
    ]
    table = metrics_table(records, rows=5).splitlines()
    assert table[0].startswith("| step | lr | loss_fm")
    assert "lambda_scene" in table[0]
    assert table[2].startswith("| 1 |")
    assert table[-1].startswith("| 49 |")
    assert len(table) <= 2 + 6
    assert metrics_table([]) == "no metrics were reported"


def test_the_export_asset_says_what_to_train_first_and_where_the_checkpoint_is_missing(
    tmp_path: Path,
) -> None:
    asset = build_onnx_export_asset({})
    with dg.instance_for_test() as instance:
        untrained = dg.materialize([asset], instance=instance, raise_on_error=False)
        assert not untrained.success
        assert "cotir_checkpoint_lq_flow has not been materialized" in _failure(untrained)
        gone = tmp_path / "elsewhere" / "model"
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key="cotir_checkpoint_lq_flow",
                metadata={"checkpoint": dg.MetadataValue.path(str(gone))},
            )
        )
        elsewhere = dg.materialize([asset], instance=instance, raise_on_error=False)
        assert not elsewhere.success
        assert f"{gone} is not on this machine" in _failure(elsewhere)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return " ".join(str(e.event_specific_data) for e in result.all_events if e.is_failure)
