"""``table_vii``: the paper's Table VII ablation at demo scale, its own job (not the demo's)."""

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from assets.evaluation.resource import EvaluationResource, failing_clearly
from assets.resources import ObjectStoreResource
from cotir_pipeline.annotation_stage import TRAINING_SHARDS_PREFIX
from cotir_pipeline.evaluation.stage import local_bench
from models.ablation import run_table_vii, table_vii_markdown

#: table_vii's check.
ARMS_SCORED_CHECK = "every_arm_and_seed_scored"

#: The Table VII job (not part of the demo job: it trains 4 arms x 3 seeds).
TABLE_VII_JOB = "table_vii_ablation"
#: Store key of the Table VII markdown (its own prefix: reporting rewrites benchmark_tables/).
TABLE_VII_KEY = "table_vii/table_vii.md"


class TableVIIResource(dg.ConfigurableResource):
    """How the Table VII ablation runs: arms, seeds, steps per arm, the bench it is scored on."""

    arms: list[str] = Field(default_factory=lambda: ["a", "d", "e", "f"], description="Arms.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="Seeds per arm.")
    steps: int | None = Field(
        default=300, description="Steps per arm, equal for every arm (None: the variant's 600)."
    )
    bench: str = Field(default="demo_bench", description="Bench set the arms are scored on.")
    flow_start: Literal["noise", "reference"] = Field(
        default="noise", description="Flow start of every arm (noise: the paper's objective)."
    )
    output_dir: str = Field(description="Local folder of the arms' runs and outputs.")


def arms_scored_check(
    results: Sequence[Any], arms: Sequence[str], seeds: Sequence[int]
) -> dg.AssetCheckResult:
    """Table VII's check: a finite PSNR and SSIM per arm, seed and prompt kind."""
    scored = {
        (result.arm, result.seed)
        for result in results
        if all(
            math.isfinite(float(result.scores.get(kind, {}).get(metric, math.nan)))
            for kind in ("vague", "precise")
            for metric in ("psnr", "ssim")
        )
    }
    missing = [f"{arm}/seed-{seed}" for arm in arms for seed in seeds if (arm, seed) not in scored]
    return dg.AssetCheckResult(
        check_name=ARMS_SCORED_CHECK,
        passed=not missing,
        metadata={"scored": len(scored), "missing_or_not_finite": missing[:20]},
    )


def build_table_vii_asset(
    op_tags: Callable[[str], dict[str, str]] = lambda name: {},
) -> dg.AssetsDefinition:
    """``table_vii``: the paper's ablation arms trained with equal budgets, over seeds."""

    @dg.asset(
        name="table_vii",
        group_name="training",
        kinds={"pytorch"},
        deps=[
            dg.AssetKey("training_shards"),
            dg.AssetKey("base_model"),
            dg.AssetKey("bench_sets"),
        ],
        op_tags=op_tags("table_vii"),
        description="Table VII at demo scale: arms (a) no adapter, (d) union constraint, (e) "
        "split constraints with fixed coefficients, (f) learnable multipliers, trained with "
        "equal budgets over several seeds and scored on a bench set (mean +- std), beside "
        "the paper's reported rows. Its own job; not part of the demo job.",
        check_specs=[
            dg.AssetCheckSpec(
                ARMS_SCORED_CHECK,
                asset="table_vii",
                description="Every configured arm has a finite PSNR and SSIM for both prompt "
                "kinds on every configured seed, so no mean +- std rests on fewer seeds "
                "than the table says.",
            )
        ],
    )
    def table_vii(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        table_vii_config: TableVIIResource,
        evaluation: EvaluationResource,
    ) -> dg.MaterializeResult:
        """Train and score every arm x seed (finished ones are read back) and write the table."""
        from models.data import resolve_shard_source

        object_store = store.open()
        out = Path(table_vii_config.output_dir)
        shards = resolve_shard_source(object_store.uri(TRAINING_SHARDS_PREFIX), out / "shards")
        with failing_clearly():
            bench = local_bench(object_store, table_vii_config.bench, Path(evaluation.cache_dir))
        results = run_table_vii(
            shards=str(shards),
            bench=bench.root,
            out=out,
            seeds=table_vii_config.seeds,
            arms=table_vii_config.arms,
            steps=table_vii_config.steps,
            flow_start=table_vii_config.flow_start,
            log=context.log.info,
        )
        steps = str(table_vii_config.steps) if table_vii_config.steps else "the demo variant's"
        markdown = table_vii_markdown(results, steps=steps, bench=table_vii_config.bench)
        object_store.put_bytes(TABLE_VII_KEY, markdown.encode("utf-8"))
        return dg.MaterializeResult(
            metadata={
                "table": dg.MetadataValue.md(markdown),
                "uri": object_store.uri(TABLE_VII_KEY),
                "runs": len(results),
            },
            check_results=[
                arms_scored_check(results, table_vii_config.arms, table_vii_config.seeds)
            ],
        )

    return table_vii
