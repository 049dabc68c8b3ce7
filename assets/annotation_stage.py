"""Annotation stage: CoT annotations per source, their filter decisions, the training shards."""

import html
import io
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from assets.metadata import counts_table, parquet_output_metadata
from assets.resources import ObjectStoreResource, clear_leftovers
from cotir_pipeline.annotation_stage import (
    ANNOTATION_SCHEMA,
    ANNOTATIONS_PREFIX,
    DECISION_SCHEMA,
    FILTERED_PREFIX,
    TRAINING_MANIFEST_SCHEMA,
    TRAINING_SHARDS_PREFIX,
    StageReport,
    annotate_source,
    filter_source,
    filtered_sources,
    write_training_shards,
)
from cotir_pipeline.sources.spec import SourceCatalog
from cotir_pipeline.store import ObjectStore

if TYPE_CHECKING:  # the backends import their HTTP and CLIP stacks only when made
    from cotir_pipeline.annotation.base import AnnotationBackend
    from cotir_pipeline.annotation.clip_filter import ConsistencyFilter


class AnnotationResource(dg.ConfigurableResource):
    """Which backend annotates, which CLIP filters, and the bounds the checks enforce."""

    backend: str = Field(description="template (no network) or vllm.")
    vllm_urls: list[str] = Field(default_factory=list, description="vLLM server base URLs.")
    vllm_model: str = Field(default="", description="Served model name.")
    max_in_flight: int = Field(default=64, description="Requests in flight over all servers.")
    api_key: str | None = Field(
        default=None,
        description="Bearer token of the vLLM servers: set it as dg.EnvVar('COTIR_VLLM_API_KEY') "
        "(from_settings does), so Dagster stores the variable's name, never the token, in "
        "run configs and the UI.",
    )
    guided_decoding: str = Field(default="response_format", description="Schema field to send.")
    cache_path: str = Field(description="SQLite request cache: a crashed run re-asks nothing.")
    clip_model: str = Field(default="", description="open_clip architecture, or empty.")
    clip_checkpoint: str = Field(default="", description="Local CLIP checkpoint, or empty.")
    clip_threshold: float = Field(default=0.0, description="Minimum consistency score to keep.")
    batch_size: int = Field(default=64, description="Samples per backend call.")
    training_shard_size: int = Field(description="Samples per training shard.")
    min_keep_rate: float = Field(default=0.5, description="Check: kept / annotated at least.")
    max_failure_rate: float = Field(default=0.1, description="Check: failed annotations at most.")

    def make_backend(self) -> "AnnotationBackend":
        """The annotation backend (imports the HTTP client only for vLLM)."""
        if self.backend == "template":
            from cotir_pipeline.annotation.template_backend import TemplateBackend

            return TemplateBackend()
        from cotir_pipeline.annotation.vllm_backend import VllmBackend, VllmConfig

        return VllmBackend(
            VllmConfig(
                base_urls=tuple(self.vllm_urls),
                model=self.vllm_model,
                max_in_flight=self.max_in_flight,
                api_key=self.api_key,
                guided_decoding=self.guided_decoding,  # type: ignore[arg-type]
                cache_path=Path(self.cache_path),
            )
        )

    def make_filter(self) -> "ConsistencyFilter":
        """Rule checks, plus CLIP scoring when a model and checkpoint are configured."""
        from cotir_pipeline.annotation.clip_filter import ClipFilterConfig, ConsistencyFilter

        clip = ClipFilterConfig(
            model_name=self.clip_model or None,
            checkpoint_path=Path(self.clip_checkpoint) if self.clip_checkpoint else None,
            threshold=self.clip_threshold,
        )
        return ConsistencyFilter(clip)


def _reasons_md(report: StageReport) -> dg.MetadataValue:
    reasons = {html.escape(reason): count for reason, count in report.reasons.items()}
    return dg.MetadataValue.md(counts_table("reason", reasons) if reasons else "none")


def _examples_md(report: StageReport) -> dg.MetadataValue:
    parts = []
    for row in report.examples:
        parts.append(
            f"**{html.escape(row['sample_id'])}**\n\n"
            f"- vague: {html.escape(row['vague_question'] or '')}\n"
            f"- precise: {html.escape(row['precise_question'] or '')}\n"
            f"- cot: {html.escape(row['cot_answers'] or '')}\n"
        )
    return dg.MetadataValue.md("\n".join(parts) or "no annotated example")


def build_annotation_assets(
    catalog: SourceCatalog,
    pair_shards: dg.AssetsDefinition,
    op_tags: Callable[[str], dict[str, str]] = lambda name: {},
) -> list[dg.AssetsDefinition]:
    """``cot_annotations`` and ``filtered_annotations`` per source, then ``training_shards``."""
    sources = pair_shards.partitions_def
    cot_annotations = _cot_annotations_asset(sources, pair_shards, op_tags)
    filtered_annotations = _filtered_annotations_asset(sources, cot_annotations, op_tags)
    training_shards = _training_shards_asset(catalog, filtered_annotations, op_tags)
    return [cot_annotations, filtered_annotations, training_shards]


def _cot_annotations_asset(
    sources: dg.PartitionsDefinition | None,
    upstream: dg.AssetsDefinition,
    op_tags: Callable[[str], dict[str, str]],
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name="annotation",
        kinds={"parquet"},
        partitions_def=sources,
        deps=[upstream],
        op_tags=op_tags("cot_annotations"),
        description="Precise prompt and chain-of-thought triple per sample, with the model, "
        "template version and raw response recorded.",
        check_specs=[
            dg.AssetCheckSpec(
                "failure_rate_within_bounds",
                asset="cot_annotations",
                description="Failed annotations stay under the configured fraction.",
            )
        ],
    )
    def cot_annotations(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        annotation: AnnotationResource,
    ) -> dg.MaterializeResult:
        """Annotate every pair of one source; answered samples are never asked again."""
        source = context.partition_key
        object_store = store.open()
        clear_leftovers(object_store, f"{ANNOTATIONS_PREFIX}/{source}/", context)
        report = annotate_source(
            object_store,
            source,
            annotation.make_backend(),
            batch_size=annotation.batch_size,
            progress=lambda done, total: context.log.debug(f"annotated shards {done}/{total}"),
        )
        total = report.ok + report.not_ok
        failure_rate = report.not_ok / total if total else 0.0
        return dg.MaterializeResult(
            metadata={
                "annotated": report.ok,
                "failed": report.not_ok,
                "backend": annotation.backend,
                "shards_written": report.shards_written,
                "shards_skipped": report.shards_skipped,
                "failure_reasons": _reasons_md(report),
                "examples": _examples_md(report),
                # One row per sample, answered or failed.
                **parquet_output_metadata(ANNOTATION_SCHEMA, total),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="failure_rate_within_bounds",
                    passed=failure_rate <= annotation.max_failure_rate,
                    metadata={"failure_rate": failure_rate, "bound": annotation.max_failure_rate},
                )
            ],
        )

    return cot_annotations


def _filtered_annotations_asset(
    sources: dg.PartitionsDefinition | None,
    upstream: dg.AssetsDefinition,
    op_tags: Callable[[str], dict[str, str]],
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name="annotation",
        kinds={"parquet"},
        partitions_def=sources,
        deps=[upstream],
        op_tags=op_tags("filtered_annotations"),
        description="Keep or drop per sample: rule checks and CLIP image-text consistency "
        "(when configured), with the reason and the score.",
        check_specs=[
            dg.AssetCheckSpec(
                "keep_rate_within_bounds",
                asset="filtered_annotations",
                description="The kept fraction stays above the configured bound.",
            ),
            dg.AssetCheckSpec(
                "every_drop_has_a_reason",
                asset="filtered_annotations",
                description="Every dropped sample records why.",
            ),
        ],
    )
    def filtered_annotations(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        annotation: AnnotationResource,
    ) -> dg.MaterializeResult:
        """Judge one source's annotations."""
        source = context.partition_key
        object_store = store.open()
        clear_leftovers(object_store, f"{FILTERED_PREFIX}/{source}/", context)
        report = filter_source(object_store, source, annotation.make_filter())
        total = report.ok + report.not_ok
        keep_rate = report.ok / total if total else 0.0
        unexplained = report.reasons.get("unknown", 0)
        return dg.MaterializeResult(
            metadata={
                "kept": report.ok,
                "dropped": report.not_ok,
                "keep_rate": keep_rate,
                "clip": annotation.clip_model or "not configured (rule checks only)",
                "drop_reasons": _reasons_md(report),
                "uri": dg.MetadataValue.url(object_store.uri(f"{FILTERED_PREFIX}/{source}")),
                # The per-source keep/drop manifest: one row per sample.
                **parquet_output_metadata(DECISION_SCHEMA, total),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="keep_rate_within_bounds",
                    passed=keep_rate >= annotation.min_keep_rate,
                    metadata={"keep_rate": keep_rate, "bound": annotation.min_keep_rate},
                ),
                dg.AssetCheckResult(
                    check_name="every_drop_has_a_reason",
                    passed=unexplained == 0,
                    metadata={"without_reason": unexplained},
                ),
            ],
        )

    return filtered_annotations


def _training_shards_asset(
    catalog: SourceCatalog,
    upstream: dg.AssetsDefinition,
    op_tags: Callable[[str], dict[str, str]],
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name="annotation",
        kinds={"webdataset", "parquet"},
        deps=[upstream],
        op_tags=op_tags("training_shards"),
        description="Final training shards in the public release's format (CoT metadata in "
        "meta.json), one folder per degradation, from every source with filtered annotations.",
        check_specs=[
            dg.AssetCheckSpec(
                "manifest_matches_shards",
                asset="training_shards",
                description="Every manifest row names a shard in the store, and each "
                "degradation's sizes.json counts exactly its manifest rows.",
            )
        ],
    )
    def training_shards(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        annotation: AnnotationResource,
    ) -> dg.MaterializeResult:
        """Copy the kept training pairs of every filtered source into the final shards."""
        object_store = store.open()
        clear_leftovers(object_store, f"{TRAINING_SHARDS_PREFIX}/", context)
        ready = filtered_sources(object_store, [source.name for source in catalog.sources])
        if not ready:
            raise dg.Failure(
                description="no source has filtered annotations yet: materialize "
                "filtered_annotations for at least one partition first"
            )
        context.log.info(f"training shards from {len(ready)} sources: {', '.join(ready)}")
        report = write_training_shards(
            object_store, ready, shard_size=annotation.training_shard_size
        )
        if report.stale_removed:
            context.log.info(
                f"removed {len(report.stale_removed)} shard file(s) of an earlier build that "
                f"the kept set no longer has: {', '.join(report.stale_removed[:5])}"
            )
        problems = _training_shard_problems(object_store)
        return dg.MaterializeResult(
            check_results=[
                dg.AssetCheckResult(
                    check_name="manifest_matches_shards",
                    passed=not problems,
                    metadata={"problems": dg.MetadataValue.json(problems[:20])},
                )
            ],
            metadata={
                "samples": report.samples,
                "shards": report.shards_total,
                "shards_written": report.shards_written,
                "stale_files_removed": dg.MetadataValue.json(report.stale_removed[:50]),
                "sources": dg.MetadataValue.json(report.by_source),
                "by_degradation": dg.MetadataValue.json(dict(Counter(report.by_degradation))),
                "uri": dg.MetadataValue.url(
                    object_store.uri(f"{TRAINING_SHARDS_PREFIX}/manifest.parquet")
                ),
                **parquet_output_metadata(TRAINING_MANIFEST_SCHEMA, report.samples),
            },
        )

    return training_shards


def _training_shard_problems(store: ObjectStore) -> list[str]:
    """What disagrees between the training manifest, the shards and each sizes.json."""

    import pyarrow.parquet as pq

    manifest = pq.read_table(
        io.BytesIO(store.get_bytes(f"{TRAINING_SHARDS_PREFIX}/manifest.parquet")),
        columns=["shard_uri", "degradation"],
    )
    problems = []
    stored = {store.uri(info.key) for info in store.list(f"{TRAINING_SHARDS_PREFIX}/")}
    for uri in sorted(set(manifest.column("shard_uri").to_pylist())):
        if uri not in stored:
            problems.append(f"missing shard {uri}")
    rows = Counter(manifest.column("degradation").to_pylist())
    for degradation, count in sorted(rows.items()):
        key = f"{TRAINING_SHARDS_PREFIX}/{degradation}/sizes.json"
        sizes = json.loads(store.get_text(key)) if store.exists(key) else {}
        if sum(sizes.values()) != count:
            problems.append(f"{key}: {sum(sizes.values())} samples, the manifest {count}")
    return problems
