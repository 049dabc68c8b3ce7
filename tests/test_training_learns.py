"""Proof of learning: the real training entry point memorises four pairs (paper objective).

The ``demo`` variant (the shipped editing prior + LoRA + CoT adapter under Lagrangian
constraints) is trained by ``models.train.train`` with the paper's flow from noise to HQ
on four 64 px pairs cut from demo train photos and washed out (haze-like, about 12 dB),
then restores them through ``CoTIRRestorer.from_pretrained`` of the final checkpoint. If
this code cannot memorise four pairs, training is broken.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cotir_pipeline.demo_photos import DEMO_PHOTOS, load_photo
from cotir_pipeline.shards import ShardSample, encode_png, write_shard

PAIRS = 4
SIZE = 64
STEPS = 500
PROMPT = "Please remove the haze."
ANSWER = (
    "scene description: a small photo. degradation description: a bright haze washes the "
    "contrast out. enhancement plan: remove the haze and restore the contrast. answer: done."
)
#: Restored PSNR must beat the degraded input by this much (the issue's target).
MIN_GAIN_DB = 5.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Four (lq, hq) 64 px pairs: photo centres at 1/4 scale, washed out by a bright haze."""
    photos = [p for p in DEMO_PHOTOS if p.split == "train"][:PAIRS]
    pairs = []
    for photo in photos:
        image = Image.fromarray(load_photo(photo))
        small = image.resize((image.width // 4, image.height // 4), Image.Resampling.BICUBIC)
        left, top = (small.width - SIZE) // 2, (small.height - SIZE) // 2
        hq = np.asarray(small.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8)
        lq = np.clip(hq.astype(np.float32) * 0.45 + 0.55 * 230.0, 0, 255).round()
        pairs.append((lq.astype(np.uint8), hq))
    return pairs


def _write_pairs(root: Path, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    samples = [
        ShardSample(
            key=f"pair{index}",
            hq_png=encode_png(hq),
            lq_png=encode_png(lq),
            meta={"cot": {"questions": [PROMPT, PROMPT], "answers": ANSWER}, "deg": "haze"},
        )
        for index, (lq, hq) in enumerate(pairs)
    ]
    write_shard(samples, root / "haze" / "haze-000000.tar")
    return root


@pytest.mark.slow
def test_training_memorises_four_pairs_with_the_paper_objective(tmp_path: Path) -> None:
    from models.restore import CoTIRRestorer
    from models.train import train
    from models.train_options import TrainOptions

    pairs = _pairs()
    shards = _write_pairs(tmp_path / "shards", pairs)
    result = train(
        TrainOptions(
            variant="demo",
            shards=str(shards),
            out=tmp_path / "run",
            steps=STEPS,
            batch_size=PAIRS,
            patch=SIZE,
            flow_start="noise",
            checkpoint_every=STEPS,
            log_every=100,
            plots=False,
        )
    )
    assert result.checkpoint is not None
    restorer = CoTIRRestorer.from_pretrained(result.checkpoint / "model")
    assert restorer.flow_start == "noise"
    before, after = [], []
    for lq, hq in pairs:
        restored = np.asarray(restorer.restore(Image.fromarray(lq), PROMPT), dtype=np.uint8)
        before.append(_psnr(lq, hq))
        after.append(_psnr(restored, hq))
    gain = float(np.mean(after) - np.mean(before))
    print(
        f"\noverfit, paper objective, {STEPS} steps: degraded {np.mean(before):.2f} dB -> "
        f"restored {np.mean(after):.2f} dB (+{gain:.2f} dB); per pair "
        + ", ".join(f"{b:.1f}->{a:.1f}" for b, a in zip(before, after, strict=True))
    )
    assert gain >= MIN_GAIN_DB, f"restored only +{gain:.2f} dB over the degraded input"
