"""Benchmark tiled restoration with a demo checkpoint on the CPU: time, peak memory, fidelity.

In one run, each configuration in a fresh process (so its peak resident memory is its
own), on a hazy version of the Kodak lighthouse photo (``kodak_i08``):

- 1024x768 px, tiled (``--tile`` px windows, ``--overlap`` px shared): wall time of the
  restore and the process's peak RSS;
- 512x384 px (the largest 4:3 size under the untiled limit): untiled (the baseline) and
  tiled, time and peak RSS, and the PSNR of each output against the clean photo, the
  PSNR between them, and for scale the PSNR between two untiled noise draws.

It prints every number and the ratios (tiled / untiled).

    .venv/bin/python scripts/bench_tiling.py \
        --checkpoint .cotir/training/demo/<run>/checkpoints/step-0000600/model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PROMPT = "Please remove the haze."
#: Runs in a fresh interpreter: restore one image, save it, report time and peak RSS.
WORKER = r"""
import json, resource, sys, time
import numpy as np
from PIL import Image
from models.restore import CoTIRRestorer
checkpoint, source, target, tile, overlap, seed = sys.argv[1:7]
restorer = CoTIRRestorer.from_pretrained(checkpoint)
image = Image.open(source).convert("RGB")
started = time.perf_counter()
result = restorer.restore(
    image, sys.argv[7], None, int(seed),
    tile_size=int(tile) or None, tile_overlap=int(overlap),
)
seconds = time.perf_counter() - started
result.save(target)
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib}))
"""


def _hazy_photo(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    from cotir_pipeline.demo_photos import DEMO_PHOTOS, load_photo

    photo = next(p for p in DEMO_PHOTOS if p.photo_id == "kodak_i08")
    clean = Image.fromarray(load_photo(photo)).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(clean, dtype=np.uint8)
    hazy = np.clip(pixels * 0.6 + 0.4 * 220, 0, 255).astype(np.uint8)
    return hazy, pixels


def _run(checkpoint: Path, source: Path, target: Path, tile: int, overlap: int, seed: int) -> dict:
    command = [sys.executable, "-c", WORKER, str(checkpoint), str(source), str(target)]
    command += [str(tile), str(overlap), str(seed), PROMPT]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10 * np.log10(255**2 / error))


def main(argv: list[str] | None = None) -> int:
    """Run the configurations and print the table."""
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="A model/ folder.")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32)
    args = parser.parse_args(argv)
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        results = {}
        references = {}
        for name, size in (("large", (1024, 768)), ("small", (512, 384))):
            hazy, clean = _hazy_photo(size)
            Image.fromarray(hazy).save(root / f"{name}.png")
            references[name] = (hazy, clean)
        plan = [
            ("1024x768 tiled", "large", args.tile, args.overlap, 42),
            ("512x384 untiled", "small", 0, 0, 42),
            ("512x384 untiled, seed 43", "small", 0, 0, 43),
            ("512x384 tiled", "small", args.tile, args.overlap, 42),
        ]
        outputs = {}
        for label, name, tile, overlap, seed in plan:
            target = root / f"{label.replace(' ', '_').replace(',', '')}.png"
            results[label] = _run(
                args.checkpoint, root / f"{name}.png", target, tile, overlap, seed
            )
            outputs[label] = np.asarray(Image.open(target).convert("RGB"))
            print(
                f"{label:26s} restore {results[label]['seconds']:7.2f} s   "
                f"peak RSS {results[label]['peak_rss_mib']:7.0f} MiB"
            )
        hazy, clean = references["small"]
        untiled, tiled = outputs["512x384 untiled"], outputs["512x384 tiled"]
        print(f"tile {args.tile} px, overlap {args.overlap} px; instruction {PROMPT!r}")
        print(
            f"512x384: PSNR vs clean: input {_psnr(hazy, clean):.2f} dB, untiled "
            f"{_psnr(untiled, clean):.2f} dB, tiled {_psnr(tiled, clean):.2f} dB "
            f"(tiled - untiled {_psnr(tiled, clean) - _psnr(untiled, clean):+.2f} dB)"
        )
        print(
            f"512x384: PSNR tiled vs untiled {_psnr(tiled, untiled):.2f} dB; untiled seed 42 "
            f"vs seed 43 {_psnr(outputs['512x384 untiled, seed 43'], untiled):.2f} dB"
        )
        large_hazy, large_clean = references["large"]
        print(
            f"1024x768 tiled: PSNR vs clean {_psnr(outputs['1024x768 tiled'], large_clean):.2f} dB "
            f"(input {_psnr(large_hazy, large_clean):.2f} dB)"
        )
        small, small_tiled = results["512x384 untiled"], results["512x384 tiled"]
        time_ratio = small_tiled["seconds"] / small["seconds"]
        print(
            f"ratios tiled/untiled at 512x384: time {time_ratio:.2f}x, "
            f"peak RSS {small_tiled['peak_rss_mib'] / small['peak_rss_mib']:.2f}x; "
            f"1024x768 tiled vs 512x384 untiled: time "
            f"{results['1024x768 tiled']['seconds'] / small['seconds']:.2f}x, peak RSS "
            f"{results['1024x768 tiled']['peak_rss_mib'] / small['peak_rss_mib']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
