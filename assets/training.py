"""Training stage: the ``cotir_checkpoint`` asset, training run as an external process (Pipes).

The asset launches ``python -m models.train`` (or ``accelerate launch ... -m models.train``
for several processes or an FSDP config) through ``dg.PipesSubprocessClient``. The
training process streams its metrics back as Pipes log lines and custom messages and
reports the materialization (final losses, multipliers, checkpoint path and hash); the
asset adds the plots of the restoration loss and the multipliers as inline images and a
table of the metrics over training.

Wiring (resource keys this asset needs): ``store`` (:class:`ObjectStoreResource`),
``training`` (:class:`TrainingResource`) and ``pipes_subprocess_client``
(``dg.PipesSubprocessClient``); :func:`training_resources` builds the last two.
"""

import html
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import dagster as dg
from pydantic import Field

from assets.resources import ObjectStoreResource
from cotir_pipeline.annotation_stage import TRAINING_SHARDS_PREFIX
from cotir_pipeline.settings import CotirSettings, Profile
from cotir_pipeline.store import ObjectStore

#: The training entry point, run as a module.
TRAIN_MODULE = "models.train"
#: Store prefix of uploaded checkpoints: ``checkpoints/<variant>/<run id>/step-NNNNNNN/``.
CHECKPOINTS_PREFIX = "checkpoints"
#: The demo run: tiny variant, this many steps (well under a minute on a 2-core CPU).
DEMO_STEPS = 16
#: Rows of the metrics table in the asset's metadata.
TABLE_ROWS = 12
#: Folder that holds the ``models`` package, put on the subprocess's PYTHONPATH.
REPO_ROOT = Path(__file__).resolve().parent.parent


class TrainingResource(dg.ConfigurableResource):
    """How ``cotir_checkpoint`` trains: variant, length, launcher and constraint mode."""

    variant: str = Field(default="tiny", description="Model variant (tiny, cotir-4b, ...).")
    steps: int | None = Field(
        default=None, description="Schedule length; None keeps the variant's (120000)."
    )
    launcher: Literal["python", "accelerate"] = Field(
        default="python", description="python (one process) or accelerate launch."
    )
    accelerate_config: str = Field(
        default="", description="accelerate config file (e.g. configs/accelerate/fsdp_12b.yaml)."
    )
    num_processes: int = Field(default=1, ge=1, description="Processes for accelerate launch.")
    constraint_mode: Literal["none", "union", "fixed", "lagrangian"] = Field(
        default="lagrangian", description="How the CoT losses enter (paper Table VII)."
    )
    seed: int = Field(default=0, ge=0, description="Training seed.")
    num_workers: int | None = Field(
        default=None, ge=0, description="Data loader workers; None keeps the variant's."
    )
    output_dir: str = Field(description="Local folder for run folders (metrics, checkpoints).")
    upload_checkpoints: bool = Field(
        default=True, description="Also copy every checkpoint into the object store."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="More models.train flags, e.g. --gradient-checkpointing."
    )

    @classmethod
    def from_settings(cls, settings: CotirSettings) -> Self:
        """Demo: the tiny variant for a few steps on the CPU; full: CoTIR-4B on 8 GPUs."""
        output_dir = str(settings.home / "training")
        if settings.profile is Profile.DEMO:
            return cls(variant="tiny", steps=DEMO_STEPS, output_dir=output_dir)
        return cls(
            variant="cotir-4b",
            launcher="accelerate",
            num_processes=8,
            output_dir=output_dir,
        )

    def launcher_prefix(self) -> list[str]:
        """The command up to the training module: python -m, or accelerate launch -m."""
        if self.launcher == "python":
            if self.num_processes != 1 or self.accelerate_config:
                raise ValueError(
                    "several processes or an accelerate config need launcher=accelerate"
                )
            return [sys.executable, "-m", TRAIN_MODULE]
        prefix = [sys.executable, "-m", "accelerate.commands.launch"]
        if self.accelerate_config:
            prefix += ["--config_file", self.accelerate_config]
        elif self.num_processes > 1:
            # Plain DDP; on a machine without GPUs accelerate runs it on gloo.
            prefix += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
        prefix += ["--num_processes", str(self.num_processes), "-m", TRAIN_MODULE]
        return prefix

    def command(self, *, shards: str, out: Path, store_url: str | None) -> list[str]:
        """The full command line of one training run."""
        command = [
            *self.launcher_prefix(),
            "--variant",
            self.variant,
            "--shards",
            shards,
            "--out",
            str(out),
            "--constraint-mode",
            self.constraint_mode,
            "--seed",
            str(self.seed),
            # A retried step continues from its own last checkpoint.
            "--resume",
            "auto",
        ]
        if self.steps is not None:
            command += ["--steps", str(self.steps)]
        if self.num_workers is not None:
            command += ["--num-workers", str(self.num_workers)]
        if store_url:
            command += ["--store-url", store_url]
        return [*command, *self.extra_args]


def training_resources(settings: CotirSettings) -> dict[str, Any]:
    """The ``training`` and ``pipes_subprocess_client`` resources for the settings."""
    return {
        "training": TrainingResource.from_settings(settings),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


def _subprocess_env(store: ObjectStoreResource) -> dict[str, str]:
    """PYTHONPATH with the repo, and the store settings the trainer's uploads need."""
    path = os.environ.get("PYTHONPATH", "")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)}
    if store.s3_endpoint_url:
        env["COTIR_S3_ENDPOINT_URL"] = store.s3_endpoint_url
    if store.s3_region:
        env["COTIR_S3_REGION"] = store.s3_region
    env["COTIR_S3_ADDRESSING_STYLE"] = store.s3_addressing_style
    return env


def _image_md(path: Any, alt: str) -> dg.MetadataValue:
    from models.metrics_plots import png_markdown

    file = Path(str(path))
    if not file.is_file():
        return dg.MetadataValue.md(f"*{html.escape(alt)}: no plot was written*")
    return dg.MetadataValue.md(png_markdown(file, alt))


def metrics_table(records: Sequence[Mapping[str, Any]], rows: int = TABLE_ROWS) -> str:
    """Markdown table of about ``rows`` evenly spaced metric records (first and last kept)."""
    if not records:
        return "no metrics were reported"
    stride = max(1, math.ceil(len(records) / rows))
    picked = list(records[::stride])
    if picked[-1] is not records[-1]:
        picked.append(records[-1])
    lambdas = sorted({k for r in records for k in r if k.startswith("lambda_")})
    columns = ["step", "lr", "loss_fm", "loss_scene", "loss_degradation", "loss_plan", *lambdas]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    for record in picked:
        cells = []
        for column in columns:
            value = record.get(column, "")
            cells.append(f"{value:.4g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _value(metadata: Mapping[str, Any], key: str) -> Any:
    item = metadata.get(key)
    return getattr(item, "value", item)


def record_training_run(store: ObjectStore, run_id: str, variant: str) -> int:
    """Write which samples this run trained on (``training_runs/<run>/manifest.parquet``).

    Lineage reads it to list the runs that consumed each sample. The run draws from
    every sample of the training shards, so the rows are the shards' manifest.
    """
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cotir_pipeline.shards import parquet_bytes

    shards = pq.read_table(
        io.BytesIO(store.get_bytes(f"{TRAINING_SHARDS_PREFIX}/manifest.parquet")),
        columns=["sample_id"],
    )
    label = f"{variant}/{run_id}"
    table = pa.table(
        {
            "sample_id": shards.column("sample_id"),
            "run_id": pa.array([label] * shards.num_rows, pa.string()),
        }
    )
    store.put_bytes(f"training_runs/{run_id}/manifest.parquet", parquet_bytes(table))
    return shards.num_rows


def build_training_assets(
    op_tags: Callable[[str], dict[str, str]] = lambda name: {},
) -> list[dg.AssetsDefinition]:
    """The ``cotir_checkpoint`` asset (``op_tags`` routes it, e.g. to a GPU queue)."""

    @dg.asset(
        name="cotir_checkpoint",
        group_name="training",
        kinds={"pytorch"},
        deps=[dg.AssetKey("training_shards")],
        op_tags=op_tags("cotir_checkpoint"),
        description="A trained CoTIR checkpoint (adapter + LoRA): flow matching under "
        "Lagrangian CoT constraints with the paper's curriculum and progressive stages, "
        "trained by an external process (models.train) launched through Dagster Pipes.",
        check_specs=[
            dg.AssetCheckSpec(
                "losses_are_finite",
                asset="cotir_checkpoint",
                description="The final flow-matching and CoT losses are finite numbers.",
            )
        ],
    )
    def cotir_checkpoint(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        training: TrainingResource,
        pipes_subprocess_client: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        """Train on the training shards and report metrics, plots and the checkpoint."""
        object_store = store.open()
        if not any(True for _ in object_store.list(f"{TRAINING_SHARDS_PREFIX}/")):
            raise dg.Failure(
                description="no training shards in the store: materialize training_shards first",
                allow_retries=False,
            )
        run_folder = Path(training.output_dir) / training.variant / context.run.run_id
        store_url = None
        if training.upload_checkpoints:
            key = f"{CHECKPOINTS_PREFIX}/{training.variant}/{context.run.run_id}"
            store_url = object_store.uri(key)
        command = training.command(
            shards=object_store.uri(TRAINING_SHARDS_PREFIX), out=run_folder, store_url=store_url
        )
        context.log.info("training: " + " ".join(command))
        invocation = pipes_subprocess_client.run(
            command=command, context=context, env=_subprocess_env(store)
        )
        reported = invocation.get_materialize_result()
        metadata: dict[str, Any] = dict(reported.metadata or {})
        records = [
            message
            for message in invocation.get_custom_messages()
            if isinstance(message, dict) and message.get("kind") == "metrics"
        ]
        metadata["metrics"] = dg.MetadataValue.md(metrics_table(records))
        metadata["metric_records_streamed"] = len(records)
        metadata["restoration_loss_plot"] = _image_md(
            _value(metadata, "plot_loss"), "restoration (flow-matching) loss over training"
        )
        metadata["multipliers_plot"] = _image_md(
            _value(metadata, "plot_multipliers"), "Lagrange multipliers over training"
        )
        metadata["run_folder"] = dg.MetadataValue.path(str(run_folder))
        consumed = record_training_run(object_store, context.run.run_id, training.variant)
        metadata["samples_in_training_shards"] = consumed
        finals = {key: _value(metadata, key) for key in metadata if key.startswith("final_loss")}
        finite = bool(finals) and all(
            isinstance(v, int | float) and math.isfinite(v) for v in finals.values()
        )
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name="losses_are_finite",
                    passed=finite,
                    metadata={"final_losses": dg.MetadataValue.json(finals)},
                )
            ],
        )

    return [cotir_checkpoint]
