"""The evaluation stage's configuration resource, partition keys and error translation."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from cotir_pipeline.checkpoint_layout import CHECKPOINTS_PREFIX
from cotir_pipeline.evaluation.method_names import BUILTIN_METHODS, folder_method
from cotir_pipeline.evaluation.method_runs import CheckpointLoad, LoadedCheckpoint
from cotir_pipeline.evaluation.stage import (
    EvaluationError,
    bench_specs,
)
from cotir_pipeline.settings import CotirSettings, Profile
from models.optional_imports import without_unused_imports

EVALUATION_GROUP = "evaluation"
#: The dynamic partitions definition of the method dimension.
METHODS_PARTITIONS = "methods"
METHOD_DIMENSION = "method"
BENCH_DIMENSION = "bench"
#: The asset check of bench_sets.
BENCH_IDS_CHECK = "samples_with_distinct_lineage_ids"
#: The asset check of restorations.
RESTORED_CHECK = "every_sample_restored"
#: The asset check of metric_scores.
SCORED_CHECK = "every_sample_scored_or_explained"
#: The asset check of benchmark_tables.
TABLED_CHECK = "every_scored_method_tabled_and_stored"


# --------------------------------------------------------------------------------------------
# Partition keys


def evaluation_partitions(profile: Profile | str) -> dg.MultiPartitionsDefinition:
    """method (dynamic) x bench (the profile's sets)."""
    return dg.MultiPartitionsDefinition(
        {
            METHOD_DIMENSION: dg.DynamicPartitionsDefinition(name=METHODS_PARTITIONS),
            BENCH_DIMENSION: dg.StaticPartitionsDefinition(
                [spec.name for spec in bench_specs(profile)]
            ),
        }
    )


def evaluation_partition(method: str, bench: str) -> dg.MultiPartitionKey:
    """The partition key of one method on one bench set."""
    return dg.MultiPartitionKey({METHOD_DIMENSION: method, BENCH_DIMENSION: bench})


def split_evaluation_partition(key: str) -> tuple[str, str]:
    """(method, bench) of a partition key (a MultiPartitionKey or its string form)."""
    if isinstance(key, dg.MultiPartitionKey):
        dimensions = key.keys_by_dimension
    else:
        # Dimensions are joined in the order of their sorted names: bench|method.
        parts = str(key).split("|")
        if len(parts) != 2:
            raise ValueError(f"not a method x bench partition key: {key!r}")
        dimensions = dict(zip(sorted((METHOD_DIMENSION, BENCH_DIMENSION)), parts, strict=True))
    return dimensions[METHOD_DIMENSION], dimensions[BENCH_DIMENSION]


def ensure_builtin_methods(instance: dg.DagsterInstance, extra: Iterable[str] = ()) -> list[str]:
    """Add the built-in methods (and ``extra`` ones) as method partitions; return those added."""
    wanted = [*BUILTIN_METHODS, *extra]
    missing = [m for m in wanted if not instance.has_dynamic_partition(METHODS_PARTITIONS, m)]
    if missing:
        instance.add_dynamic_partitions(METHODS_PARTITIONS, missing)
    return missing


@contextmanager
def failing_clearly() -> Iterator[None]:
    """Turn the library's EvaluationError into a Failure with its message and no retries."""
    try:
        yield
    except EvaluationError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None


# --------------------------------------------------------------------------------------------
# Resource


class EvaluationResource(dg.ConfigurableResource):
    """Where the bench sets come from, how big the demo sets are, and where scoring runs.

    It provides :class:`cotir_pipeline.evaluation.stage.EvaluationOptions`.
    """

    profile: str = Field(default=Profile.DEMO.value, description="COTIR_PROFILE: demo or full.")
    seed: int = Field(default=0, description="Seed of every built set (and the tables' record).")
    device: str = Field(default="cpu", description="cpu, cuda or cuda:N: metrics and CoTIR.")
    cache_dir: str = Field(description="Local folder: bench sets, outputs, checkpoints.")
    demo_bench_per_recipe: int = Field(default=4, description="Demo bench: patches per recipe.")
    demo_agenticir_per_combination: int = Field(
        default=2, description="Demo AgenticIR set: test images per combination (16 of them)."
    )
    demo_seven_d_count: int = Field(default=30, description="Demo 7D subset: samples.")
    cotir_bench_dir: str | None = Field(
        default=None, description="Full: the released CoTIR-Bench test folder (test.jsonl)."
    )
    mio100_dir: str | None = Field(default=None, description="Full: MiO100 clean images.")
    mio100_depth_dir: str | None = Field(
        default=None, description="Full: MiO100 depth maps (<stem>.npy), optional."
    )
    seven_d_clean_dir: str | None = Field(
        default=None, description="Full: clean images of the 7D subset (default: mio100_dir)."
    )
    seven_d_count: int = Field(default=200, description="Full: samples of the 7D subset.")
    real_world_dir: str | None = Field(
        default=None, description="Full: real-world images (test.jsonl or <subset>/<image>)."
    )
    real_world_degradations: dict[str, str] = Field(
        default_factory=dict, description="Real-world subset folder -> degradation label."
    )
    method_folders: dict[str, str] = Field(
        default_factory=dict,
        description="Method outputs to score: name -> folder with <bench>/{vague,precise}/.",
    )
    weights_dir: str | None = Field(
        default=None, description="COTIR_WEIGHTS_DIR: base weights of full CoTIR variants."
    )
    cotir_steps: int | None = Field(
        default=None, description="Sampling steps of CoTIR restorations (default: the variant's)."
    )
    checkpoint_prefix: str = Field(
        default=CHECKPOINTS_PREFIX, description="Store prefix of the training checkpoints."
    )
    evaluate_intermediate_checkpoints: bool = Field(
        default=False,
        description="Also evaluate a run's intermediate checkpoints (default: final ones only).",
    )
    torch_threads: int | None = Field(
        default=None,
        description="CPU threads torch may use while scoring and restoring with CoTIR (the "
        "demo's small images run faster on 1, and a busy machine does not stall); None: "
        "torch's default.",
    )

    @property
    def cache(self) -> Path:
        """The local cache folder (created)."""
        folder = Path(self.cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def folder_methods(self) -> list[str]:
        """Method names of the configured output folders."""
        return [folder_method(name) for name in sorted(self.method_folders)]

    @contextmanager
    def torch_threads_limited(self) -> Iterator[None]:
        """Limit torch's CPU threads for the block (restored afterwards: in-process runs)."""
        if self.torch_threads is None:
            yield
            return
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def load_checkpoint(request: CheckpointLoad) -> LoadedCheckpoint:
    """Load a CoTIR checkpoint with the project's restorer (``models.restore``), with the
    optional packages it never uses hidden while the model code loads."""
    settings = None
    if request.weights_dir is not None:
        settings = CotirSettings(home=request.home, weights_dir=request.weights_dir)
    with without_unused_imports():
        from models.restore import CoTIRRestorer

        model = CoTIRRestorer.from_pretrained(
            request.folder, variant=request.variant, settings=settings, device=request.device
        )
    restorer = model.for_evaluation(name=request.name, version=request.version, steps=request.steps)
    parameters = sum(p.numel() for p in model.model.parameters())
    return LoadedCheckpoint(restorer, int(parameters), request.steps or model.variant.steps)
