"""The four evaluation assets: bench_sets, restorations, metric_scores, benchmark_tables."""

import datetime
import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg

from assets.evaluation.metadata import (
    bench_sets_metadata,
    restorations_result,
    scores_result,
    tables_result,
)
from assets.evaluation.resource import (
    BENCH_IDS_CHECK,
    EVALUATION_GROUP,
    RESTORED_CHECK,
    SCORED_CHECK,
    TABLED_CHECK,
    EvaluationResource,
    evaluation_partitions,
    failing_clearly,
    load_checkpoint,
    split_evaluation_partition,
)
from assets.resources import ObjectStoreResource
from cotir_pipeline.evaluation.bench_sets import (
    LINEAGE_MANIFEST_NAME,
    bench_lineage_rows,
    write_bench_lineage,
)
from cotir_pipeline.evaluation.method_names import COTIR_METHOD_PREFIX
from cotir_pipeline.evaluation.method_runs import restore_partition, score_partition
from cotir_pipeline.evaluation.reporting import write_tables
from cotir_pipeline.evaluation.stage import (
    BENCH_INDEX,
    BENCHMARK_TABLES_PREFIX,
    BenchSpec,
    UploadReport,
    bench_spec,
    bench_specs,
    build_set,
    local_bench,
    upload_bench,
)
from cotir_pipeline.settings import CotirSettings, Profile


class EvaluationAssets(NamedTuple):
    """The four evaluation assets."""

    bench_sets: dg.AssetsDefinition
    restorations: dg.AssetsDefinition
    metric_scores: dg.AssetsDefinition
    benchmark_tables: dg.AssetsDefinition


def _build_bench_sets(
    specs: Sequence[BenchSpec], op_tags: Callable[[str], dict[str, str]]
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name=EVALUATION_GROUP,
        kinds={"jsonl", "png"},
        op_tags=op_tags("bench_sets"),
        description="Every bench set of the profile in the public test format (test.jsonl, "
        "lq/, hq/) under `bench_sets/<name>/`; a set whose source is not configured is n/a.",
        check_specs=[
            dg.AssetCheckSpec(
                BENCH_IDS_CHECK,
                asset="bench_sets",
                description="Every built set has samples, and each sample one lineage id of "
                "its own (no two records share a content hash).",
            )
        ],
    )
    def bench_sets(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        evaluation: EvaluationResource,
    ) -> dg.MaterializeResult:
        """Build each set locally (seeded, deterministic) and upload only changed files."""
        object_store = store.open()
        status: dict[str, dict[str, Any]] = {}
        subset_rows: list[tuple[str, str, int]] = []
        id_problems: list[str] = []
        with tempfile.TemporaryDirectory(dir=evaluation.cache, prefix=".build-") as work:
            for spec in specs:
                with failing_clearly():
                    built = build_set(spec, evaluation, Path(work))
                if built.bench is None or built.files is None:
                    status[spec.name] = {"status": "n/a", "reason": built.reason}
                    context.log.warning(f"{spec.name}: n/a ({built.reason})")
                    continue
                # The per-sample lineage rows travel with the set's files.
                rows = bench_lineage_rows(built.bench)
                lineage = write_bench_lineage(
                    rows, Path(work) / f"{spec.name}-{LINEAGE_MANIFEST_NAME}"
                )
                if len(built.bench) == 0 or len({r["sample_id"] for r in rows}) != len(built.bench):
                    id_problems.append(spec.name)
                files = {**built.files, LINEAGE_MANIFEST_NAME: lineage}
                report: UploadReport = upload_bench(
                    object_store, spec.name, files, built.manifest, built.info
                )
                subsets = Counter(record.subset for record in built.bench.records)
                subset_rows += [(spec.name, s, n) for s, n in sorted(subsets.items())]
                status[spec.name] = {
                    "status": "ok",
                    "samples": len(built.bench),
                    "has_reference": built.bench.has_reference,
                    "manifest_sha256": hashlib.sha256(built.manifest).hexdigest(),
                    **report._asdict(),
                }
                context.log.info(f"{spec.name}: {len(built.bench)} samples, {report}")
        object_store.put_text(BENCH_INDEX, json.dumps(status, indent=2, sort_keys=True))
        return dg.MaterializeResult(
            metadata=bench_sets_metadata(status, subset_rows, object_store.uri(BENCH_INDEX)),
            check_results=[
                dg.AssetCheckResult(
                    check_name=BENCH_IDS_CHECK,
                    passed=not id_problems,
                    metadata={"sets_with_problems": dg.MetadataValue.json(id_problems)},
                )
            ],
        )

    return bench_sets


def _build_restorations(
    profile: Profile,
    partitions: dg.MultiPartitionsDefinition,
    upstream: Sequence[dg.AssetKey | dg.AssetsDefinition],
    op_tags: Callable[[str], dict[str, str]],
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name=EVALUATION_GROUP,
        kinds={"png"},
        partitions_def=partitions,
        deps=list(upstream),
        op_tags=op_tags("restorations"),
        description="A method's outputs on a bench set for both prompts (vague/, precise/) "
        "with per-image runtime logs, under `restorations/<method>/<bench>/`.",
        check_specs=[
            dg.AssetCheckSpec(
                RESTORED_CHECK,
                asset="restorations",
                description="Every sample of the set has an output for both prompts.",
            )
        ],
    )
    def restorations(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        evaluation: EvaluationResource,
    ) -> dg.MaterializeResult:
        """Run the method's restorer over the bench set (resumable) and upload the outputs."""
        method, bench_name = split_evaluation_partition(context.partition_key)
        spec = bench_spec(bench_name, profile)
        object_store = store.open()
        with failing_clearly():
            bench = local_bench(object_store, bench_name, evaluation.cache)
            uses_torch = method.startswith(COTIR_METHOD_PREFIX)
            with evaluation.torch_threads_limited() if uses_torch else nullcontext():
                result = restore_partition(
                    object_store, evaluation, method, spec, bench, load_checkpoint, context.log.info
                )
        return restorations_result(result, bench, object_store.uri(result.prefix))

    return restorations


def _build_metric_scores(
    profile: Profile,
    partitions: dg.MultiPartitionsDefinition,
    restorations: dg.AssetsDefinition,
    op_tags: Callable[[str], dict[str, str]],
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name=EVALUATION_GROUP,
        kinds={"parquet"},
        partitions_def=partitions,
        deps=[restorations],
        op_tags=op_tags("metric_scores"),
        description="One row per image and metric of the bench's metric set (value or n/a with "
        "the reason) in `metric_scores/<method>/<bench>.parquet`, and the runtimes.",
        check_specs=[
            dg.AssetCheckSpec(
                SCORED_CHECK,
                asset="metric_scores",
                description="Every sample of the set has a row for both prompts and every "
                "metric, and every n/a value carries its reason.",
            )
        ],
    )
    def metric_scores(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        evaluation: EvaluationResource,
    ) -> dg.MaterializeResult:
        """Score the stored outputs of one method on one bench set."""
        method, bench_name = split_evaluation_partition(context.partition_key)
        spec = bench_spec(bench_name, profile)
        object_store = store.open()
        with failing_clearly(), evaluation.torch_threads_limited():
            result = score_partition(object_store, evaluation, method, spec)
        return scores_result(result, spec, object_store.uri(result.key))

    return metric_scores


def _build_benchmark_tables(
    specs: Sequence[BenchSpec],
    metric_scores: dg.AssetsDefinition,
    op_tags: Callable[[str], dict[str, str]],
) -> dg.AssetsDefinition:
    @dg.asset(
        group_name=EVALUATION_GROUP,
        kinds={"parquet", "html", "markdown"},
        deps=[metric_scores],
        op_tags=op_tags("benchmark_tables"),
        description="The paper's Tables II, III, IV, V, VI and VIII from every score row in the "
        "store (Parquet, Markdown, HTML), with image grids and charts, beside the paper's "
        "reported rows. Fresh when the nightly evaluation's reporting ran in the last day.",
        # The nightly schedule re-scores every method and the reporting sensor rebuilds the
        # tables after it: tables older than a day (and a few hours) mean it did not finish.
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=datetime.timedelta(hours=30), warn_window=datetime.timedelta(hours=26)
        ),
        check_specs=[
            dg.AssetCheckSpec(
                TABLED_CHECK,
                asset="benchmark_tables",
                description="Every method with score rows on a table's bench set has rows in "
                "that table, and every written file reads back from the store.",
            )
        ],
    )
    def benchmark_tables(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        evaluation: EvaluationResource,
    ) -> dg.MaterializeResult:
        """Regenerate every table from the stored scores and replace benchmark_tables/."""
        object_store = store.open()
        uri = object_store.uri(f"{BENCHMARK_TABLES_PREFIX}/index.md")
        with (
            failing_clearly(),
            tempfile.TemporaryDirectory(dir=evaluation.cache, prefix=".tables-") as work,
        ):
            result = write_tables(object_store, evaluation, specs, Path(work), context.log.info)
            return tables_result(result, uri)  # reads the grids and charts in ``work``

    return benchmark_tables


def build_evaluation_assets(
    settings: CotirSettings,
    op_tags: Callable[[str], dict[str, str]] = lambda name: {},
    *,
    checkpoints: Sequence[dg.AssetKey] = (),
) -> EvaluationAssets:
    """The evaluation assets of the settings' profile (its bench sets are the bench partitions).

    ``checkpoints`` are the training assets whose checkpoints become evaluation methods:
    ``restorations`` depends on them, so the graph shows evaluation downstream of training.
    """
    specs = bench_specs(settings.profile)
    bench_sets = _build_bench_sets(specs, op_tags)
    profile, partitions = settings.profile, evaluation_partitions(settings.profile)
    restorations = _build_restorations(profile, partitions, [bench_sets, *checkpoints], op_tags)
    metric_scores = _build_metric_scores(profile, partitions, restorations, op_tags)
    benchmark_tables = _build_benchmark_tables(specs, metric_scores, op_tags)
    return EvaluationAssets(bench_sets, restorations, metric_scores, benchmark_tables)
