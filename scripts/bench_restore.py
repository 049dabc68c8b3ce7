"""Benchmark ``cotir restore`` on a 128 px image: cold start and per-image time.

In one run:

- cold: ``cotir restore`` as a fresh process (wall time, end to end: imports, model
  and checkpoint loading, the Euler steps, the PNG), ``--repeats`` times; the
  baseline is a fresh process that only imports torch and PIL and reads the image,
  the floor any Python CLI on torch pays here; also the same command with every
  optional library imported (``models.optional_imports.modules_to_hide`` returning nothing, the
  path before those were hidden);
- warm: per-image restore time in a loaded process (median of ``--repeats``), against
  the classical tool chain on the same image as the baseline; with ``--checkpoint``,
  also the checkpoint's LoRA merged into the float32 weights (the default) against
  peft's unmerged layers (``merge_lora=False``), timed alternately;
- cold, by stage: one more fresh process that loads the same way (the unused packages
  hidden as ``cotir restore`` hides them) and prints the seconds of each stage: torch,
  diffusers' top level, the transformer class (with peft and transformers behind it),
  the project's model code, loading the checkpoint, the first and a second restore.

- engines: with a checkpoint that has a current ONNX export (``--export`` makes one
  and times it), the cold process on ``--engine onnx`` against ``--engine torch``
  (alternately), the ONNX engine's warm restore against the torch engine's, and how
  far apart the two engines' PNGs are.

It prints each number and the ratios. ``--checkpoint`` is a trained demo checkpoint
(its ``model/`` folder); without it the shipped prior alone is timed.

    .venv/bin/python scripts/bench_restore.py \
        --checkpoint .cotir/training/demo/<run>/checkpoints/step-0000600/model
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.onnx_restore import has_current_export, levels_apart

if TYPE_CHECKING:
    from PIL import Image

PROMPT = "Please remove the haze."
COLD_BASELINE = (
    "import sys, torch\nfrom PIL import Image\nImage.open(sys.argv[1]).convert('RGB').load()\n"
)
#: ``cotir restore`` with nothing hidden from the libraries (the previous cold path).
ALL_IMPORTS = (
    "import sys\nimport models.optional_imports\n"
    "models.optional_imports.modules_to_hide = lambda: ()\n"
    "from cotir_pipeline.cli import main\nmain()\n"
)

#: A fresh process that loads and restores like ``cotir restore`` and prints the seconds
#: of each stage as ``name<TAB>seconds`` lines (argv: image, checkpoint folder or "",
#: prompt).
STAGES = """
import sys, time
started = time.perf_counter()
def mark(name):
    global started
    now = time.perf_counter()
    print(f"{name}\t{now - started:.3f}", flush=True)
    started = now
import torch
mark("import torch")
from models.optional_imports import without_unused_imports
with without_unused_imports():
    import diffusers
    mark("import diffusers (its top level: torch._dynamo)")
    from diffusers import Flux2Transformer2DModel
    mark("the transformer class (every diffusers model, peft, transformers)")
    from models.restore import CoTIRRestorer
    mark("the project's model code")
    if sys.argv[2]:
        restorer = CoTIRRestorer.from_pretrained(sys.argv[2])
    else:
        restorer = CoTIRRestorer.from_variant("demo")
    mark("load prior, text encoder and checkpoint")
from PIL import Image
image = Image.open(sys.argv[1]).convert("RGB")
restorer.restore(image, sys.argv[3])
mark("first restore")
restorer.restore(image, sys.argv[3])
mark("second restore")
"""


def _stages(image: Path, checkpoint: Path | None) -> list[tuple[str, float]]:
    """The seconds of each stage of one fresh process (:data:`STAGES`)."""
    done = subprocess.run(
        [sys.executable, "-c", STAGES, str(image), str(checkpoint or ""), PROMPT],
        check=True,
        capture_output=True,
        text=True,
    )
    lines = [line.split("\t") for line in done.stdout.splitlines() if "\t" in line]
    return [(name, float(seconds)) for name, seconds in lines]


def _cotir_command() -> list[str]:
    binary = Path(sys.executable).with_name("cotir")
    if binary.is_file():
        return [str(binary)]
    return [sys.executable, "-m", "cotir_pipeline.cli"]


def _wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def _bench_image(folder: Path) -> Path:
    from PIL import Image

    from cotir_pipeline.demo_photos import DEMO_PHOTOS, load_photo

    photo = next(p for p in DEMO_PHOTOS if p.photo_id == "coffee")
    pixels = load_photo(photo)[100:228, 200:328]
    hazy = np.clip(pixels * 0.55 + 0.45 * 220, 0, 255).astype(np.uint8)
    path = folder / "hazy-128.png"
    Image.fromarray(hazy).save(path)
    return path


@dataclass
class ColdTimes:
    """Seconds of fresh processes, per run."""

    by_engine: dict[str, list[float]]
    all_imports: list[float]
    floor: list[float]
    #: The engines' PNGs: most levels apart and the share of values that differ.
    apart: tuple[int, float] | None


@dataclass
class WarmTimes:
    """Median seconds of one restore in a loaded process."""

    restore: float
    layered: float | None
    onnx: float | None
    classical: float
    steps: int
    velocity_delta: bool


def _cold_times(
    image: Path, folder: Path, checkpoint: Path | None, engines: list[str], repeats: int
) -> ColdTimes:
    """Cold ``cotir restore`` per engine (alternating, so each ratio compares the same
    stretch of machine time), with every optional library imported, and the floor."""
    command = [*_cotir_command(), "restore", str(image), "-p", PROMPT, "-o"]
    extra = ["--checkpoint", str(checkpoint)] if checkpoint is not None else ["--variant", "demo"]
    by_engine: dict[str, list[float]] = {engine: [] for engine in engines}
    for i in range(repeats):
        for engine in engines:
            out = str(folder / f"{engine}{i}.png")
            by_engine[engine].append(_wall([*command, out, *extra, "--engine", engine]))
    apart = _levels_apart(folder / "torch0.png", folder / "onnx0.png") if len(engines) > 1 else None
    arguments = command[len(_cotir_command()) :]
    torch_extra = [*extra, "--engine", "torch"]
    all_imports = [
        _wall(
            [sys.executable, "-c", ALL_IMPORTS, *arguments, str(folder / "all.png"), *torch_extra]
        )
        for _ in range(repeats)
    ]
    floor = [_wall([sys.executable, "-c", COLD_BASELINE, str(image)]) for _ in range(repeats)]
    return ColdTimes(by_engine, all_imports, floor, apart)


def _warm_times(image: Path, checkpoint: Path | None, onnx: bool, repeats: int) -> WarmTimes:
    """Warm restores: the torch engine (with a checkpoint, merged and peft-layered LoRA
    alternately), the ONNX engine, and the classical chain as the baseline."""
    from PIL import Image

    from cotir_pipeline.evaluation.restorers import SequentialToolChain
    from models.restore import CoTIRRestorer

    if checkpoint is not None:
        restorer = CoTIRRestorer.from_pretrained(checkpoint)
    else:
        restorer = CoTIRRestorer.from_variant("demo")
    lq = Image.open(image).convert("RGB")
    timed = [restorer]
    if checkpoint is not None:
        timed.append(CoTIRRestorer.from_pretrained(checkpoint, merge_lora=False))
    for model in timed:
        model.restore(lq, PROMPT)  # warm-up
    times: list[list[float]] = [[] for _ in timed]
    for _ in range(max(repeats, 5) if len(timed) > 1 else repeats):
        for model, series in zip(timed, times, strict=True):
            started = time.perf_counter()
            model.restore(lq, PROMPT)
            series.append(time.perf_counter() - started)
    chain = SequentialToolChain(order="label", name="classical_chain")
    array = np.asarray(lq)
    chain.restore(array, PROMPT, "haze")
    classical = []
    for _ in range(repeats):
        started = time.perf_counter()
        chain.restore(array, PROMPT, "haze")
        classical.append(time.perf_counter() - started)
    return WarmTimes(
        restore=statistics.median(times[0]),
        layered=statistics.median(times[1]) if len(times) > 1 else None,
        onnx=_warm_onnx(checkpoint, lq, repeats) if onnx and checkpoint is not None else None,
        classical=statistics.median(classical),
        steps=restorer.default_steps,
        velocity_delta=bool(restorer.model.velocity_delta),
    )


def _row(measurement: str, value: float, baseline: str, base: float, digits: int = 2) -> str:
    return (
        f"| {measurement} | {value:.{digits}f} | {baseline} | {base:.{digits}f} "
        f"| {value / base:.2f}x |"
    )


def _print_table(cold: ColdTimes, warm: WarmTimes, env_note: str) -> None:
    """The measurements, each beside its baseline and their ratio."""
    cold_s, floor_s = statistics.median(cold.by_engine["torch"]), statistics.median(cold.floor)
    # A checkpoint whose velocity is its change to the base keeps peft's layers either way.
    merged = (
        "LoRA as peft layers (delta velocity: never merged)"
        if warm.velocity_delta
        else ("LoRA merged (default)")
    )
    floor_name = "python + import torch + read image"
    print(f"cotir restore, 128x128 px, {warm.steps} Euler steps, {env_note}")
    print("| measurement | seconds (median) | baseline | baseline seconds | ratio |")
    print("|---|---:|---|---:|---:|")
    print(_row("cold `cotir restore` process", cold_s, floor_name, floor_s))
    all_name = "the same, every optional library imported"
    print(
        _row("cold `cotir restore` process", cold_s, all_name, statistics.median(cold.all_imports))
    )
    chain = "classical tool chain (haze)"
    print(_row("warm restore, one image", warm.restore, chain, warm.classical, 3))
    if warm.layered is not None:
        layered = "peft's unmerged LoRA layers"
        print(_row(f"warm restore, {merged}", warm.restore, layered, warm.layered, 3))
    if "onnx" in cold.by_engine:
        onnx_s = statistics.median(cold.by_engine["onnx"])
        name = "cold `cotir restore --engine onnx`"
        print(_row(name, onnx_s, "cold `--engine torch`", cold_s))
        print(_row(name, onnx_s, floor_name, floor_s))
    if warm.onnx is not None:
        print(_row("warm restore, ONNX engine", warm.onnx, "torch engine", warm.restore, 3))
    if cold.apart is not None:
        print(
            f"\nONNX against torch engine PNG: at most {cold.apart[0]} level(s) apart, "
            f"{cold.apart[1]:.3%} of values differ"
        )


def main(argv: list[str] | None = None) -> int:
    """Time cold and warm restores and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="A demo checkpoint's model/ folder.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--export",
        action="store_true",
        help="Export the checkpoint to ONNX first when it has no current export (timed).",
    )
    args = parser.parse_args(argv)
    export_s = _export_if_asked(args.checkpoint) if args.export else None
    engines = ["torch"]
    if args.checkpoint is not None and has_current_export(args.checkpoint):
        engines.append("onnx")
    env_note = f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = _bench_image(folder)
        cold = _cold_times(image, folder, args.checkpoint, engines, args.repeats)
        stages = _stages(image, args.checkpoint)
        warm = _warm_times(image, args.checkpoint, "onnx" in engines, args.repeats)
    _print_table(cold, warm, env_note)
    if export_s is not None:
        print(f"`cotir export-onnx` of the checkpoint: {export_s:.1f} s")
    _print_stages(stages)
    return 0


def _export_if_asked(checkpoint: Path | None) -> float | None:
    """Seconds of exporting the checkpoint to ONNX (None: nothing to export, or current)."""
    if checkpoint is None or has_current_export(checkpoint):
        return None
    from models.onnx_export import export_onnx

    started = time.perf_counter()
    export_onnx(checkpoint)
    return time.perf_counter() - started


def _warm_onnx(checkpoint: Path, image: Image.Image, repeats: int) -> float:
    """Median seconds of one restore by the loaded ONNX engine, after a warm-up."""
    from models.onnx_restore import OnnxRestorer

    exported = OnnxRestorer.from_checkpoint(checkpoint)
    exported.restore(image, PROMPT)
    times = []
    for _ in range(max(repeats, 5)):
        started = time.perf_counter()
        exported.restore(image, PROMPT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _levels_apart(first: Path, second: Path) -> tuple[int, float]:
    """Largest difference of two 8-bit PNGs and the share of values that differ."""
    from PIL import Image

    with Image.open(first) as a, Image.open(second) as b:
        return levels_apart(a, b)


def _print_stages(stages: list[tuple[str, float]]) -> None:
    """The stage table of one cold process, with its total."""
    print()
    print("| cold process, by stage | seconds |")
    print("|---|---:|")
    for name, seconds in stages:
        print(f"| {name} | {seconds:.2f} |")
    print(f"| all | {sum(seconds for _, seconds in stages):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
