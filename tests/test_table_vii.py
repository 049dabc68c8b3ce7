"""Table VII at demo scale: arms train through the real entry point, the table is written."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from assets.training.table_vii import arms_scored_check
from cotir_pipeline.evaluation.bench_builders import build_demo_bench
from models.ablation import run_table_vii, table_vii_markdown
from training_shards_support import write_shards


@pytest.mark.slow
def test_two_arms_train_score_and_resume(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", size=64)
    bench = build_demo_bench(tmp_path / "bench", per_recipe=1, name="demo_bench")
    messages: list[str] = []
    arguments = {
        "shards": str(shards),
        "bench": bench.root,
        "out": tmp_path / "out",
        "seeds": (0,),
        "arms": ("a", "f"),
        "steps": 4,
        "log": messages.append,
    }
    results = run_table_vii(**arguments)
    assert [(r.arm, r.seed) for r in results] == [("a", 0), ("f", 0)]
    for result in results:
        for kind in ("vague", "precise"):
            assert 5.0 < result.scores[kind]["psnr"] < 60.0
    # Arm (a): the adapter's injection gates never leave zero (base + LoRA only).
    adapter = load_file(str(Path(results[0].checkpoint) / "cot_adapter.safetensors"))
    gates = [v for k, v in adapter.items() if ".scale_" in k]
    assert len(gates) == 3
    assert all(float(g.abs().max()) == 0.0 for g in gates)

    markdown = table_vii_markdown(results, steps="4", bench="demo_bench")
    assert "| (a) no adapter |" in markdown
    assert "| (f) split, learnable multipliers |" in markdown
    assert "not implemented" in markdown  # (b) and (c)
    assert "23.73 / 0.1368" in markdown  # the paper's row (f), labelled as reported

    again = run_table_vii(**arguments)
    assert again == results
    assert sum("already scored" in m for m in messages) == 2

    # The asset's check: every arm x seed scored, or the missing ones named.
    assert arms_scored_check(results, ("a", "f"), (0,)).passed
    short = arms_scored_check(results, ("a", "f"), (0, 1))
    assert not short.passed
    assert short.metadata["missing_or_not_finite"].value == ["a/seed-1", "f/seed-1"]
    broken = replace(results[0], scores={**results[0].scores, "vague": {"psnr": float("nan")}})
    assert not arms_scored_check([broken, results[1]], ("a", "f"), (0,)).passed
