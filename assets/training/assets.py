"""``base_model`` and the ``cotir_checkpoint`` asset(s), trained through Dagster Pipes.

``base_model`` is the editing model CoTIR starts from: the local FLUX folder in the full
profile, the shipped demo prior (checked against its sha256) in the demo profile, or
the demo prior retrained from scratch (``TrainingResource.base = "rebuild"``).

The asset launches ``python -m models.train`` (or ``accelerate launch ... -m models.train``
for several processes or an FSDP config) through ``dg.PipesSubprocessClient``. The
training process streams its metrics back as Pipes log lines and custom messages and
reports the materialization (final losses, multipliers, checkpoint path and hash); the
asset adds the plots of the restoration loss and the multipliers as inline images and a
table of the metrics over training.

Wiring (resource keys this asset needs): ``store`` (:class:`ObjectStoreResource`),
``training`` (:class:`TrainingResource`) and ``pipes_subprocess_client``
(``dg.PipesSubprocessClient``); ``assets/profiles.py`` builds them. The work without
Dagster (the base model's check, run ids, what a run trained on) is in
:mod:`models.training_stage`.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from assets.resources import ObjectStoreResource
from assets.training.metadata import checkpoint_result
from assets.training.resource import LQ_FLOW_ASSET, TrainingResource, subprocess_env
from cotir_pipeline.annotation_stage import TRAINING_SHARDS_PREFIX
from cotir_pipeline.checkpoint_layout import CHECKPOINTS_PREFIX

#: Retries of a failed training step: each continues from the last checkpoint.
TRAINING_RETRY_POLICY = dg.RetryPolicy(
    max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
#: base_model's check: the demo prior's held-out copy PSNR against the project's target.
COPY_FIDELITY_CHECK = "prior_copy_fidelity"
COPY_TARGET_DB = 30.0
#: table_vii's check.


def _described_base(training: TrainingResource) -> dict[str, Any]:
    """The base model the runs start from, checked; a Failure naming what to fix."""
    from models.training_stage import BaseModelError, describe_base

    weights = Path(training.weights_dir) if training.weights_dir else None
    try:
        return describe_base(training.variant, training.base_folder(), weights)
    except BaseModelError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None


def build_training_assets(
    op_tags: Callable[[str], dict[str, str]] = lambda name: {},
    *,
    lq_flow_run: bool = False,
) -> list[dg.AssetsDefinition]:
    """``base_model``, ``cotir_checkpoint`` and, for the demo, the LQ-flow comparison run.

    ``op_tags`` routes each asset (e.g. training to a GPU queue).
    """

    @dg.asset(
        name="base_model",
        group_name="training",
        kinds={"pytorch"},
        op_tags=op_tags("base_model"),
        code_version="1",
        description="The editing model CoTIR fine-tunes: the local FLUX.1 Kontext / FLUX.2 "
        "klein folder (full profile) or the demo's small editing prior, shipped in "
        "models/demo_prior and checked against its sha256 (or retrained: base=rebuild).",
        check_specs=[
            dg.AssetCheckSpec(
                COPY_FIDELITY_CHECK,
                asset="base_model",
                description=f"A demo prior copies held-out photos at {COPY_TARGET_DB:g} dB PSNR "
                "or better (its recorded measurement); below that, every fine-tuned row is "
                "capped by it. A warning, not a failure: the runs can still go on. FLUX "
                "folders carry no such record and pass with 'not measured'.",
                blocking=False,
            )
        ],
    )
    def base_model(
        context: dg.AssetExecutionContext, training: TrainingResource
    ) -> dg.MaterializeResult:
        """Check (or rebuild) the base model and record its identity and measured quality."""
        from models.training_stage import rebuild_prior

        folder = training.base_folder()
        if training.base == "rebuild" and folder is not None:
            rebuild_prior(folder, training.prior_steps, context.log.info)
        described = _described_base(training)
        metadata: dict[str, Any] = {
            "variant": described["variant"],
            "kind": described.get("kind", ""),
            "details": dg.MetadataValue.json(described),
        }
        if "path" in described:
            metadata["path"] = dg.MetadataValue.path(described["path"])
        if "bundled" in described:
            metadata["bundled"] = described["bundled"]
        if "sha256" in described:
            metadata["sha256"] = described["sha256"]
        quality = described.get("quality", {})
        copy_psnr = quality.get("psnr", {}).get("copy")
        if isinstance(copy_psnr, int | float):
            metadata["copy_psnr_held_out_db"] = float(copy_psnr)
        copy_from_reference = quality.get("psnr_reference_start", {}).get("copy")
        if isinstance(copy_from_reference, int | float):
            metadata["copy_psnr_held_out_reference_start_db"] = float(copy_from_reference)
        measured = float(copy_psnr) if isinstance(copy_psnr, int | float) else None
        check = dg.AssetCheckResult(
            check_name=COPY_FIDELITY_CHECK,
            passed=measured is None or measured >= COPY_TARGET_DB,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "copy_psnr_held_out_db": measured if measured is not None else "not measured",
                "target_db": COPY_TARGET_DB,
            },
        )
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    assets = [base_model, _checkpoint_asset("cotir_checkpoint", None, op_tags)]
    if lq_flow_run:
        assets.append(_checkpoint_asset(LQ_FLOW_ASSET, "reference", op_tags))
    return assets


def _checkpoint_description(flow_start: str | None) -> str:
    """What a checkpoint asset trains, for the UI."""
    objective = (
        "the demo's LQ-start recipe (its main row: the flow from the LQ tokens to the HQ "
        "ones, trained at its start and sampled in one step, the velocity as the change to "
        "the frozen prior, each pair's error relative to its own target)"
        if flow_start == "reference"
        else "the profile's recipe (TrainingResource.flow_start; by default the paper's "
        "objective: flow from noise to HQ, the LQ as reference tokens)"
    )
    return (
        f"A trained CoTIR checkpoint (adapter + LoRA) with {objective}: flow matching under "
        "Lagrangian CoT constraints with the paper's curriculum and progressive stages, "
        "trained by an external process (models.train) launched through Dagster Pipes. The "
        "run folder is named by what determines the weights, not by the Dagster run, so a "
        "retried step or a later run continues from the last checkpoint."
    )


def _checkpoint_asset(
    name: str, flow_start: str | None, op_tags: Callable[[str], dict[str, str]]
) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        group_name="training",
        kinds={"pytorch"},
        deps=[dg.AssetKey("training_shards"), dg.AssetKey("base_model")],
        op_tags=op_tags(name),
        description=_checkpoint_description(flow_start),
        # A crashed training process (out of memory, a lost node) is retried; the retry
        # resumes from the last checkpoint of the same run folder (--resume auto).
        retry_policy=TRAINING_RETRY_POLICY,
        check_specs=[
            dg.AssetCheckSpec(
                "losses_are_finite",
                asset=name,
                description="The final flow-matching and CoT losses are finite numbers.",
            )
        ],
    )
    def checkpoint_asset(
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
        from models.training_stage import record_training_run, run_key, shards_digest

        base = _described_base(training)
        # The run id hashes the command with placeholders for the data (its identity is
        # the shards' digest) and the run folder, so it does not depend on where they lie.
        probe = training.command(
            shards="SHARDS",
            out=Path("RUN"),
            store_url=None,
            flow_start=flow_start,
        )
        run_id = run_key(training.variant, probe, shards_digest(object_store), base)
        run_folder = Path(training.output_dir) / training.variant / run_id
        store_url = None
        if training.upload_checkpoints:
            key = f"{CHECKPOINTS_PREFIX}/{training.variant}/{run_id}"
            store_url = object_store.uri(key)
        command = training.command(
            shards=object_store.uri(TRAINING_SHARDS_PREFIX),
            out=run_folder,
            store_url=store_url,
            flow_start=flow_start,
        )
        context.log.info(f"training run {run_id}: " + " ".join(command))
        invocation = pipes_subprocess_client.run(
            command=command, context=context, env=subprocess_env(store)
        )
        trained_on = record_training_run(object_store, run_id, training.variant, run_folder)
        facts = {
            "run_id": run_id,
            "flow_start": flow_start or training.flow_start,
            "base_model": dg.MetadataValue.json(base),
            "run_folder": dg.MetadataValue.path(str(run_folder)),
        }
        return checkpoint_result(invocation, facts, trained_on)

    return checkpoint_asset
