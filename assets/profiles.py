"""The code location's resources, per profile: every profile-dependent choice in one table.

The two profiles differ only in the values of :data:`PROFILE_VALUES`, side by side (as in
Dagster's ``project_fully_featured``, whose resources are keyed by deployment).
:func:`resources_for` builds every resource from the settings and that table. The resource
classes hold no profile policy of their own.
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from assets.annotation_stage import AnnotationResource
from assets.data_stage.resource import DataStageResource
from assets.evaluation.resource import EvaluationResource
from assets.resources import ObjectStoreResource, ProfileResource
from assets.training.resource import DEMO_VARIANT, TrainingResource
from assets.training.table_vii import TableVIIResource
from cotir_pipeline.evaluation.stage import (
    MIRROR_COTIR_BENCH,
    MIRROR_METHOD_OUTPUTS,
    MIRROR_MIO100,
    MIRROR_MIO100_DEPTH,
    MIRROR_REAL_WORLD,
)
from cotir_pipeline.settings import CotirSettings, Profile, env_name


@dataclass(frozen=True)
class Per:
    """One field's value on the demo profile and on the full one."""

    demo: Any
    full: Any

    def on(self, profile: Profile) -> Any:
        """The value for ``profile``."""
        return self.demo if profile is Profile.DEMO else self.full


#: resource -> field -> value per profile. Everything else comes from the settings.
PROFILE_VALUES: dict[str, dict[str, Per]] = {
    # 128 px pairs in small shards on one worker; the release's 512 px pairs, 1000 a shard.
    "data_stage": {
        "stored_size": Per(128, 512),
        "shard_size": Per(64, 1000),
        "workers": Per(1, 8),
    },
    "annotation": {"training_shard_size": Per(64, 1000)},
    # The demo's small images restore and score faster on one thread.
    "evaluation": {"torch_threads": Per(1, None)},
    # The demo variant on its shipped prior, with the LQ-start run (its main row);
    # CoTIR-4B on 8 GPUs.
    "training": {
        "variant": Per(DEMO_VARIANT, "cotir-4b"),
        "lq_flow_run": Per(True, False),
        # The paper-objective row at Table VII's budget (300 steps: 16.74 +- 0.10 dB over
        # three seeds against 16.80 at 600), so that make demo fits its time.
        "paper_objective_steps": Per(300, None),
        "launcher": Per("python", "accelerate"),
        "num_processes": Per(1, 8),
    },
}


def _values(resource: str, profile: Profile) -> dict[str, Any]:
    return {field: per.on(profile) for field, per in PROFILE_VALUES[resource].items()}


def _mirrored_evaluation_data(settings: CotirSettings) -> dict[str, Any]:
    """Full profile: the bench data folders found under COTIR_MIRROR_DIR (demo: none)."""
    mirror = settings.mirror_dir
    if settings.profile is not Profile.FULL or mirror is None:
        return {}
    values: dict[str, Any] = {}
    for field_name, folder in (
        ("cotir_bench_dir", MIRROR_COTIR_BENCH),
        ("mio100_dir", MIRROR_MIO100),
        ("mio100_depth_dir", MIRROR_MIO100_DEPTH),
        ("real_world_dir", MIRROR_REAL_WORLD),
    ):
        if (mirror / folder).is_dir():
            values[field_name] = str(mirror / folder)
    outputs = mirror / MIRROR_METHOD_OUTPUTS
    if outputs.is_dir():
        values["method_folders"] = {p.name: str(p) for p in sorted(outputs.iterdir()) if p.is_dir()}
    return values


def evaluation_resource(settings: CotirSettings) -> EvaluationResource:
    """The ``evaluation`` resource of the settings' profile."""
    assert settings.cache_dir is not None  # the settings fill it in
    return EvaluationResource(
        profile=settings.profile.value,
        cache_dir=str(settings.cache_dir / "evaluation"),
        weights_dir=str(settings.weights_dir) if settings.weights_dir else None,
        **_values("evaluation", settings.profile),
        **_mirrored_evaluation_data(settings),
    )


def training_resource(settings: CotirSettings) -> TrainingResource:
    """The ``training`` resource of the settings' profile."""
    return TrainingResource(
        steps=settings.train_steps,
        output_dir=str(settings.home / "training"),
        home=str(settings.home),
        weights_dir=str(settings.weights_dir) if settings.weights_dir else None,
        **_values("training", settings.profile),
    )


def annotation_resource(settings: CotirSettings) -> AnnotationResource:
    """The ``annotation`` resource: template answers on the demo, vLLM on the full profile."""
    return AnnotationResource(
        backend=settings.effective_annotation_backend,
        vllm_urls=list(settings.vllm_url_list),
        vllm_model=settings.vllm_model,
        max_in_flight=settings.vllm_max_in_flight,
        # The variable's name goes into the run config; Dagster reads the value when the
        # step runs (a literal would sit in runs.db and show in the UI).
        api_key=dg.EnvVar(env_name("vllm_api_key")) if settings.vllm_api_key else None,
        guided_decoding=settings.vllm_guided_decoding,
        cache_path=str((settings.cache_dir or settings.home) / "annotation" / "vllm-cache.sqlite"),
        clip_model=settings.clip_model,
        clip_checkpoint=str(settings.clip_checkpoint or ""),
        clip_threshold=settings.clip_threshold,
        **_values("annotation", settings.profile),
    )


def resources_for(settings: CotirSettings) -> dict[str, Any]:
    """Every resource of the code location, for the settings' profile."""
    return {
        "store": ObjectStoreResource.from_settings(settings),
        "profile": ProfileResource(profile=settings.profile.value, home=str(settings.home)),
        "data_stage": DataStageResource(
            cache_dir=str(settings.cache_dir),
            mirror_dir=str(settings.mirror_dir) if settings.mirror_dir else None,
            **_values("data_stage", settings.profile),
        ),
        "annotation": annotation_resource(settings),
        "evaluation": evaluation_resource(settings),
        "training": training_resource(settings),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        "table_vii_config": TableVIIResource(output_dir=str(settings.home / "table_vii")),
    }
