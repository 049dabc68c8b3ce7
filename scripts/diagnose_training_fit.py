"""How well does a trained CoTIR checkpoint fit its own training pairs? A per-degradation diagnosis.

The checkpoint restores the first pairs of every degradation folder of a training-shard
set (whole images, as stored), with each sample's precise question (or its vague one,
``--prompt vague``). Per degradation it prints the PSNR of the LQ (identity) and of the
restoration against the HQ, the gain, and the mean 8-bit level of the LQ, the
restoration and the HQ (how far the model moves the exposure against how far the truth
does). A model that cannot beat the identity on pairs it was trained on is limited by
its capacity or its recipe, not by how well it generalises.

It is a diagnosis, not a benchmark: nothing is timed and nothing is written.

    PYTHONPATH=. .venv/bin/python scripts/diagnose_training_fit.py \\
        --checkpoint .cotir/training/demo/<run>/checkpoints/step-0000600 \\
        --shards .cotir/store/training_shards
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cotir_pipeline.evaluation.metrics import load_metric
from cotir_pipeline.png import decode_png
from models.data import discover_shards, read_shard_records

#: Which of a training sample's two questions each prompt kind uses (vague first, as stored).
QUESTION_INDEX = {"vague": 0, "precise": 1}


def _first_pairs(shards: list[str], count: int) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """The first ``count`` (LQ, HQ, meta) samples of a degradation's shards, in shard order."""

    def stop_on_error(error: Exception) -> bool:
        raise error

    pairs = []
    for shard in sorted(shards):
        for record in read_shard_records(shard, stop_on_error):
            lq, hq = decode_png(record["lq.png"]), decode_png(record["hq.png"])
            pairs.append((lq, hq, json.loads(record["meta.json"])))
            if len(pairs) == count:
                return pairs
    return pairs


def main(argv: list[str] | None = None) -> int:
    """Restore each degradation's first pairs and print the per-degradation table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="A checkpoint folder.")
    parser.add_argument("--shards", required=True, type=Path, help="A training-shard folder.")
    parser.add_argument("--per-degradation", type=int, default=6, help="Pairs per folder.")
    parser.add_argument("--prompt", choices=sorted(QUESTION_INDEX), default="precise")
    args = parser.parse_args(argv)

    from models.restore import restorer_from_checkpoint  # torch: after the arguments

    restorer = restorer_from_checkpoint(args.checkpoint)
    psnr = load_metric("psnr").score_arrays  # the bench tables' own PSNR
    print(
        "| degradation | pairs | identity | restored | gain | mean level LQ | restored | HQ |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    totals: list[tuple[float, float]] = []
    for degradation, shards in sorted(discover_shards(args.shards).items()):
        scores, levels = [], []
        for lq, hq, meta in _first_pairs(shards, args.per_degradation):
            prompt = meta["cot"]["questions"][QUESTION_INDEX[args.prompt]]
            restored = restorer.restore(lq, prompt, degradation)
            scores.append((psnr(lq, hq), psnr(restored, hq)))
            levels.append((lq.mean(), restored.mean(), hq.mean()))
        if not scores:
            continue
        identity, model = np.mean(scores, axis=0)
        level = np.mean(levels, axis=0)
        totals.append((identity, model))
        print(
            f"| {degradation} | {len(scores)} | {identity:.2f} | {model:.2f} | "
            f"{model - identity:+.2f} | {level[0]:.1f} | {level[1]:.1f} | {level[2]:.1f} |"
        )
    identity, model = np.mean(totals, axis=0)
    gain = model - identity
    print(f"| mean of the degradations | | {identity:.2f} | {model:.2f} | {gain:+.2f} | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
