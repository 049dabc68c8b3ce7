"""Can the demo model tell the training prompts of different degradations apart? A diagnosis.

For the first records of every degradation folder of a training-shard set, it draws the
precise instruction the curriculum would train with (a template line or the record's
question) and measures how well those instructions separate by degradation at three
points of the model's text path:

- the text encoder's features (MiniLM), averaged over the real tokens;
- after the demo prior's ``context_embedder``, the Linear that projects them into the
  transformer (frozen in the paper's recipe);
- after a fine-tuned checkpoint's ``context_embedder`` (``--checkpoint``), which carries
  LoRA when the checkpoint was trained with ``--lora-scope text_path``.

Separation is printed two ways: the leave-one-out accuracy of a nearest-centroid
classifier over the degradation folders (chance is one in the number of folders), and
the ratio of the spread between the folders' centroids to the spread within a folder.

It is a diagnosis, not a benchmark: nothing is timed and nothing is written.

    PYTHONPATH=. .venv/bin/python scripts/diagnose_prompt_features.py \\
        --shards .cotir/store/training_shards \\
        --checkpoint .cotir/training/demo/<run>/checkpoints/step-0000600
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from models.data import choose_prompt, discover_shards, read_shard_records


def precise_prompts(shards: list[str], folder: str, count: int, rng: random.Random) -> list[str]:
    """One precise instruction for each of a folder's first ``count`` records."""
    from models.train_config import config_for_variant

    curriculum = config_for_variant("demo").curriculum
    last_step = config_for_variant("demo").total_steps - 1

    def stop_on_error(error: Exception) -> bool:
        raise error

    prompts: list[str] = []
    for shard in sorted(shards):
        for record in read_shard_records(shard, stop_on_error):
            meta = json.loads(record["meta.json"])
            questions = [q if isinstance(q, str) else "" for q in meta["cot"].get("questions", [])]
            degradation = meta.get("deg") if isinstance(meta.get("deg"), str) else folder
            while True:  # the curriculum's precise arm only
                choice = choose_prompt(
                    rng, degradation, questions, last_step, curriculum, meta.get("jpeg_type")
                )
                if choice.arm == "precise":
                    break
            prompts.append(choice.text)
            if len(prompts) == count:
                return prompts
    return prompts


def separation(features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Leave-one-out nearest-centroid accuracy and between- over within-folder spread."""
    classes = sorted(set(labels.tolist()))
    sums = {c: features[labels == c].sum(0) for c in classes}
    counts = {c: int((labels == c).sum()) for c in classes}
    correct = 0
    for index, (feature, label) in enumerate(zip(features, labels, strict=True)):
        best, best_distance = None, np.inf
        for c in classes:
            total, n = sums[c], counts[c]
            if c == label:  # leave the sample out of its own centroid
                total, n = total - feature, n - 1
            if n == 0:
                continue
            distance = float(np.sum((feature - total / n) ** 2))
            if distance < best_distance:
                best, best_distance = c, distance
        correct += int(best == labels[index])
    mean = features.mean(0)
    centroids = np.stack([features[labels == c].mean(0) for c in classes])
    between = float(np.mean(np.sum((centroids - mean) ** 2, axis=1)))
    within = float(
        np.mean(
            [
                np.mean(np.sum((features[labels == c] - centroids[i]) ** 2, axis=1))
                for i, c in enumerate(classes)
            ]
        )
    )
    return correct / len(labels), between / within


def main(argv: list[str] | None = None) -> int:
    """Draw the prompts, embed them and print the separation at each point of the path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", required=True, type=Path, help="A training-shard folder.")
    parser.add_argument("--checkpoint", help="A fine-tuned demo checkpoint folder (optional).")
    parser.add_argument("--per-degradation", type=int, default=12, help="Records per folder.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the prompt draws.")
    args = parser.parse_args(argv)

    import torch  # after the arguments

    from models.restore import CoTIRRestorer, restorer_from_checkpoint

    rng = random.Random(args.seed)
    prompts: list[str] = []
    labels: list[str] = []
    for folder, shards in discover_shards(args.shards).items():
        drawn = precise_prompts(shards, folder, args.per_degradation, rng)
        prompts += drawn
        labels += [folder] * len(drawn)
    label_array = np.array(labels)
    prior = CoTIRRestorer.from_variant("demo")
    encoding = prior.text_encoder.encode(prompts, prior.variant.max_text_tokens)
    mask = encoding.mask.unsqueeze(-1).float()

    def pooled(tokens: torch.Tensor) -> np.ndarray:
        return ((tokens.float() * mask).sum(1) / mask.sum(1)).numpy()

    stages = [("text encoder (MiniLM)", encoding.embeds)]
    with torch.no_grad():
        stages.append(
            ("prior's context_embedder", prior.model.transformer.context_embedder(encoding.embeds))
        )
        if args.checkpoint:
            tuned = restorer_from_checkpoint(args.checkpoint).restorer.model.transformer
            stages.append(
                ("checkpoint's context_embedder", tuned.context_embedder(encoding.embeds))
            )
    folders = len(set(labels))
    print(
        f"{len(prompts)} precise prompts from {folders} degradation folders "
        f"(chance {1 / folders:.2f})"
    )
    print("| features | nearest-centroid accuracy | between / within spread |")
    print("|---|---:|---:|")
    for name, tokens in stages:
        accuracy, ratio = separation(pooled(tokens), label_array)
        print(f"| {name} | {accuracy:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
