"""``TrainingResource``: how the checkpoint assets train (variant, length, launcher,
recipe), and the environment of the trainer subprocess."""

import os
import sys
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from assets.resources import ObjectStoreResource
from models import REPOSITORY_ROOT

#: The training entry point, run as a module.
TRAIN_MODULE = "models.train"
#: The demo runs: the ``demo`` variant on its shipped prior (the variant's own schedule).
DEMO_VARIANT = "demo"
#: The demo's second training asset: the same run with the flow started at the LQ.
LQ_FLOW_ASSET = "cotir_checkpoint_lq_flow"
#: Where a rebuilt demo prior goes, under COTIR_HOME.
REBUILT_PRIOR_DIR = "base_model/rebuilt-prior"
#: Runs an entry point in a process that ends with the step that started it.
LAUNCH_MODULE = "models.launch"


class TrainingResource(dg.ConfigurableResource):
    """How ``cotir_checkpoint`` trains: variant, length, launcher and constraint mode."""

    variant: str = Field(default="demo", description="Model variant (demo, cotir-4b, ...).")
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
    paper_objective_steps: int | None = Field(
        default=None,
        ge=1,
        description="Schedule length of the paper-objective run (cotir_checkpoint) when the "
        f"LQ-start run ({LQ_FLOW_ASSET}) is the main row and `steps` is unset (a set `steps`, "
        "e.g. COTIR_TRAIN_STEPS, is every run's length); None: the variant's. The demo trains "
        "it for 300 steps, the budget of Table VII's arms (docs/TRAINING.md).",
    )
    flow_start: Literal["noise", "reference"] = Field(
        default="noise",
        description="Main run's flow start: noise (the paper's objective) or the LQ tokens.",
    )
    lq_flow_run: bool = Field(
        default=False,
        description="Also train the same run with the LQ-start recipe (the flow from the LQ "
        "tokens, the velocity as the change to the base, LoRA also on the prompt's path), "
        f"as the asset {LQ_FLOW_ASSET} "
        "(the demo's main row; docs/TRAINING.md).",
    )
    base: Literal["default", "rebuild"] = Field(
        default="default",
        description="default: the variant's base (COTIR_WEIGHTS_DIR/<FLUX folder>, or the "
        "shipped demo prior); rebuild: retrain the demo prior under COTIR_HOME first.",
    )
    prior_steps: int | None = Field(
        default=None,
        ge=1,
        description="Steps of a rebuilt prior's last stage; None keeps the shipped recipe's.",
    )
    home: str = Field(default="", description="COTIR_HOME (where a rebuilt prior goes).")
    weights_dir: str | None = Field(
        default=None, description="COTIR_WEIGHTS_DIR (the full variants' FLUX folders)."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="More models.train flags, e.g. --gradient-checkpointing."
    )

    def base_folder(self) -> Path | None:
        """The base model folder the runs start from (None: the variant's default lookup)."""
        if self.base == "rebuild":
            if not self.home:
                raise ValueError("training.home must be set to rebuild the demo prior")
            return Path(self.home) / REBUILT_PRIOR_DIR
        return None

    def launcher_prefix(self) -> list[str]:
        """The command up to the training module: python -m, or accelerate launch -m."""
        if self.launcher == "python":
            if self.num_processes != 1 or self.accelerate_config:
                raise ValueError(
                    "several processes or an accelerate config need launcher=accelerate"
                )
            return [sys.executable, "-m", TRAIN_MODULE]
        # Through models.launch: the launcher ends with the step, as its processes do.
        prefix = [sys.executable, "-m", LAUNCH_MODULE, "accelerate.commands.launch"]
        if self.accelerate_config:
            prefix += ["--config_file", self.accelerate_config]
        elif self.num_processes > 1:
            # Plain DDP; on a machine without GPUs accelerate runs it on gloo.
            prefix += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"]
        prefix += ["--num_processes", str(self.num_processes), "-m", TRAIN_MODULE]
        return prefix

    def command(
        self,
        *,
        shards: str,
        out: Path,
        store_url: str | None,
        flow_start: str | None = None,
    ) -> list[str]:
        """The full command line of one training run."""
        from models.train_config import LQ_START_FLAGS  # torch: only when a run starts

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
        lq_start = (flow_start or self.flow_start) == "reference"
        if lq_start:
            command += list(LQ_START_FLAGS)
        else:
            command += ["--flow-start", "noise"]
        base = self.base_folder()
        if base is not None:
            command += ["--base", str(base)]
        steps = self.steps
        if steps is None and self.lq_flow_run and not lq_start:
            steps = self.paper_objective_steps
        if steps is not None:
            command += ["--steps", str(steps)]
        if self.num_workers is not None:
            command += ["--num-workers", str(self.num_workers)]
        if store_url:
            command += ["--store-url", store_url]
        return [*command, *self.extra_args]


def subprocess_env(store: ObjectStoreResource) -> dict[str, str]:
    """PYTHONPATH with the repo, and the whole store config the trainer's uploads need."""
    path = os.environ.get("PYTHONPATH", "")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPOSITORY_ROOT), path) if p)}
    return {**env, **store.config().environment()}
