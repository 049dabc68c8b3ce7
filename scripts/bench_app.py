"""Benchmark ``cotir app``: how long a warm restore takes to show in the browser.

In one run: ``cotir app`` is started as a user would start it; headless Chromium (the
system's, driven by Playwright) uploads a 128 px hazy image, loads the given CoTIR
checkpoint with one restore (the warm-up), then times ``--repeats`` restores from the
click on Restore until the info line shows the new result and its images have loaded.
Baselines in the same run: the classical chain through the same page (the app's own
overhead plus a ~5 ms method), and the same checkpoint's restore called in-process
(what the model itself costs). It prints medians and the ratios.

    .venv/bin/python scripts/bench_app.py \
        --checkpoint .cotir/training/demo/<run>/checkpoints/step-0000600/model
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Please remove the haze."
CLASSICAL = "classical chain (a classical tool per named degradation)"
#: Resolves once the info line names the new output and every result image has loaded
#: (the images' URLs can repeat: Gradio names files by content, and a seeded restore of
#: the same input gives the same output).
SHOWN = """(info) => {
  const text = document.querySelector('#info textarea')?.value ?? '';
  const images = [...document.querySelectorAll('#result img')];
  return text !== info && images.length > 0 && images.every((image) => image.complete);
}"""


def _hazy_image(path: Path) -> np.ndarray:
    from PIL import Image

    from cotir_pipeline.demo_photos import DEMO_PHOTOS, load_photo

    photo = next(p for p in DEMO_PHOTOS if p.photo_id == "coffee")
    pixels = load_photo(photo)[100:228, 200:328]
    hazy = np.clip(pixels * 0.55 + 0.45 * 220, 0, 255).astype(np.uint8)
    Image.fromarray(hazy).save(path)
    return hazy


def _start_app(home: Path, port: int) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "COTIR_HOME": str(home), "COTIR_PROFILE": "demo"}
    command = [sys.executable, "-m", "cotir_pipeline.cli", "app", "--port", str(port)]
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return process
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("cotir app did not start within 180 s")


def _choose(page: object, dropdown: str, option: str) -> None:
    page.locator(f"#{dropdown} input").click()  # type: ignore[attr-defined]
    page.get_by_role("option", name=option, exact=True).click()  # type: ignore[attr-defined]


def _timed_restore(page: object) -> float:
    info = page.locator("#info textarea").input_value()  # type: ignore[attr-defined]
    started = time.perf_counter()
    page.locator("#restore").click()  # type: ignore[attr-defined]
    page.wait_for_function(SHOWN, arg=info, timeout=120_000)  # type: ignore[attr-defined]
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Start the app, time restores in the browser and in-process, print the table."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from playwright.sync_api import sync_playwright

    from cotir_app.ui import CUSTOM_LABEL
    from cotir_test_support import CHROMIUM_ARGS, chromium_executable, free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="A model/ folder.")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"
    )
    executable = chromium_executable()
    if executable is None:
        raise SystemExit("Chromium not found (apt install chromium)")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        image = root / "hazy-128.png"
        hazy = _hazy_image(image)
        port = free_port()
        process = _start_app(root / "home", port)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1500})
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("#restore", timeout=60_000)
                page.locator("#lq-image input[type=file]").set_input_files(str(image))
                _choose(page, "degradation", "haze")
                page.locator("#prompt textarea").fill(PROMPT)
                _choose(page, "method", CUSTOM_LABEL)
                page.locator("#checkpoint-folder textarea").fill(str(args.checkpoint.resolve()))
                first = _timed_restore(page)  # loads the model once
                cotir = [_timed_restore(page) for _ in range(args.repeats)]
                _choose(page, "method", CLASSICAL)
                _timed_restore(page)
                classical = [_timed_restore(page) for _ in range(args.repeats)]
                browser.close()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)

    from PIL import Image

    from models.restore import CoTIRRestorer

    restorer = CoTIRRestorer.from_pretrained(args.checkpoint)
    restorer.restore(Image.fromarray(hazy), PROMPT)  # warm-up
    direct = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        restorer.restore(Image.fromarray(hazy), PROMPT)
        direct.append(time.perf_counter() - started)

    app_median, classical_median = statistics.median(cotir), statistics.median(classical)
    direct_median = statistics.median(direct)
    print(f"first restore in the app (loads the checkpoint): {first:.2f} s")
    print(
        f"warm restore shown in the browser, CoTIR checkpoint: median {app_median:.3f} s "
        f"(max {max(cotir):.3f} s, {args.repeats} restores)"
    )
    print(f"baseline: classical chain through the same page: median {classical_median:.3f} s")
    print(f"baseline: the checkpoint's restore in-process: median {direct_median:.3f} s")
    print(
        f"ratios: app / in-process {app_median / direct_median:.2f}x; "
        f"app CoTIR / app classical {app_median / classical_median:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
