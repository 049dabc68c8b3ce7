"""Does a trained CoTIR checkpoint follow its instruction? A per-task diagnosis on a bench set.

For every bench sample with ground truth, the checkpoint restores the LQ image twice:
with the sample's own precise prompt and with the precise prompt of a different task
(the next task of the set, in a fixed order). Per task it prints:

- PSNR of the LQ (identity), of the restoration under its own prompt, and under the
  other task's prompt;
- the PSNR between the two restorations: how much the instruction changes the output
  (above ~40 dB the model all but ignores it);
- the RMS of the change the model makes (output - LQ), the part of it that is one
  colour shift for the whole image (the per-channel mean change), and the same two
  numbers for the change the truth asks for (HQ - LQ), in 8-bit levels.

It is a diagnosis, not a benchmark: nothing is timed and nothing is written.

    PYTHONPATH=. .venv/bin/python scripts/diagnose_prompt_use.py \\
        --checkpoint .cotir/training/demo/<run>/checkpoints/step-0000600 \\
        --bench .cotir/store/bench_sets/demo_bench
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from cotir_pipeline.evaluation.bench_sets import read_bench_set
from cotir_pipeline.evaluation.metrics import load_metric
from cotir_pipeline.images import load_rgb8


def change_stats(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """RMS of ``after - before`` and RMS of its per-channel mean (the global colour shift)."""
    change = after.astype(np.float64) - before.astype(np.float64)
    shift = change.mean(axis=(0, 1))
    return float(np.sqrt(np.mean(change**2))), float(np.sqrt(np.mean(shift**2)))


def main(argv: list[str] | None = None) -> int:
    """Restore each sample under its own and another task's prompt; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="A checkpoint folder.")
    parser.add_argument("--bench", required=True, type=Path, help="A bench set folder.")
    args = parser.parse_args(argv)

    from models.restore import restorer_from_checkpoint  # torch: after the arguments

    bench = read_bench_set(args.bench)
    restorer = restorer_from_checkpoint(args.checkpoint)
    psnr = load_metric("psnr").score_arrays  # the bench tables' own PSNR
    records = [r for r in bench.records if bench.hq_files.get(r.id) is not None]
    if not records:
        parser.error(f"{args.bench} has no sample with ground truth")
    tasks = sorted({r.subset for r in records})
    task_prompt = {r.subset: r.spe_prompt for r in records}
    rows: dict[str, list[list[float]]] = defaultdict(list)
    for record in records:
        lq = load_rgb8(bench.lq_files[record.id]).pixels
        hq_file = bench.hq_files[record.id]
        assert hq_file is not None
        hq = load_rgb8(hq_file).pixels
        other_task = tasks[(tasks.index(record.subset) + 1) % len(tasks)]
        own = restorer.restore(lq, record.spe_prompt, record.deg_type)
        other = restorer.restore(lq, task_prompt[other_task], record.deg_type)
        rows[record.subset].append(
            [
                psnr(lq, hq),
                psnr(own, hq),
                psnr(other, hq),
                psnr(own, other),
                *change_stats(lq, own),
                *change_stats(lq, hq),
            ]
        )
    print(f"checkpoint {args.checkpoint}, bench {bench.name} ({len(records)} samples)")
    print(
        "| task (n) | identity | own prompt | other task's prompt | own vs other | "
        "change RMS | its colour shift | truth's change RMS | truth's colour shift |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    everything = []
    for task in tasks:
        values = np.mean(rows[task], axis=0)
        everything.extend(rows[task])
        cells = " | ".join(f"{v:.2f}" for v in values)
        print(f"| {task} ({len(rows[task])}) | {cells} |")
    cells = " | ".join(f"{v:.2f}" for v in np.mean(everything, axis=0))
    print(f"| all ({len(everything)}) | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
