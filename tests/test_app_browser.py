"""A user's session in `cotir app`, in Chromium: upload a demo bench image, restore it
with the classical chain and with a CoTIR checkpoint, refine it, go back a turn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_test_support import RUN, STEP, save_demo_run

from cotir_app.ui import CUSTOM_LABEL
from cotir_pipeline.annotation.prompts import spe_prompts
from cotir_test_support import default_stop_signals, free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("app-home")
    save_demo_run(home / "training")
    return home


@pytest.fixture(scope="module")
def bench_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One LQ/HQ pair of the demo bench (haze), as `make demo` writes it."""
    from cotir_pipeline.evaluation.bench_builders import build_demo_bench

    bench = build_demo_bench(
        tmp_path_factory.mktemp("bench") / "demo_bench", recipes=("haze",), per_recipe=1
    )
    record = bench.records[0]
    lq = bench.root / record.lq_path
    return lq, bench.root / "hq" / lq.name


@pytest.fixture(scope="module")
def app_url(app_home: Path) -> Iterator[str]:
    """`cotir app` on a free loopback port, stopped (with its process group) afterwards."""
    port = free_port()
    log = (app_home / "app.log").open("w")
    environment = {**os.environ, "COTIR_HOME": str(app_home), "COTIR_PROFILE": "demo"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cotir_pipeline.cli", "app", "--port", str(port)],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=default_stop_signals,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"cotir app exited: {(app_home / 'app.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("cotir app did not answer within 180 s")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _result_text(page: object, contains: str, timeout_ms: int = 120_000) -> str:
    page.wait_for_function(  # type: ignore[attr-defined]
        "t => (document.querySelector('#info textarea') || {}).value?.includes(t)",
        arg=contains,
        timeout=timeout_ms,
    )
    return page.locator("#info textarea").input_value()  # type: ignore[attr-defined]


def _choose(page: object, dropdown: str, option: str) -> None:
    page.locator(f"#{dropdown} input").click()  # type: ignore[attr-defined]
    page.get_by_role("option", name=option, exact=True).click()  # type: ignore[attr-defined]


def test_restore_compare_refine_and_go_back_in_the_browser(
    app_url: str, browser: object, bench_image: tuple[Path, Path], artifacts_dir: Path
) -> None:
    lq, hq = bench_image
    page = browser.new_page(viewport={"width": 1400, "height": 1500})  # type: ignore[attr-defined]
    page.goto(app_url)
    page.wait_for_selector("#restore", timeout=60_000)
    page.locator("#lq-image input[type=file]").set_input_files(str(lq))
    page.locator("#hq-image input[type=file]").set_input_files(str(hq))

    # The classical chain, with the precise instruction suggested for the degradation.
    _choose(page, "method", "classical chain (a classical tool per named degradation)")
    _choose(page, "degradation", "haze")  # naming it fills the empty instruction
    filled = "document.querySelector('#prompt textarea').value.length > 0"
    page.wait_for_function(filled)
    assert page.locator("#prompt textarea").input_value() == spe_prompts("haze")[0]
    page.locator("#prompt textarea").fill("")
    page.locator("#suggest").click()
    page.wait_for_function(filled)
    page.locator("#restore").click()
    classical = _result_text(page, "classical chain")
    assert "turn 1" in classical
    assert "PSNR" in classical
    assert "SSIM" in classical
    assert page.locator("#result img").count() >= 1
    page.screenshot(path=str(artifacts_dir / "app.png"), full_page=True)  # the README's

    # The demo CoTIR checkpoint, listed under its table name.
    checkpoint = f"cotir-demo-paper-{RUN}-s{STEP}"
    _choose(page, "method", checkpoint)
    page.locator("#restore").click()
    restored = _result_text(page, checkpoint)
    assert "turn 1" in restored
    assert "PSNR" in restored
    seconds = float(restored.split(" | ")[2].removesuffix(" s"))
    assert seconds > 0

    # A second turn refines that output; the history shows both; going back drops it.
    page.locator("#prompt textarea").fill("Make it brighter.")
    page.locator("#refine").click()
    refined = _result_text(page, "turn 2")
    assert checkpoint in refined
    page.wait_for_function("document.querySelectorAll('#history img').length === 2")
    page.screenshot(path=str(artifacts_dir / "app-turns.png"), full_page=True)
    page.locator("#turn input").fill("1")
    page.locator("#go-back").click()
    _result_text(page, "turn 1")
    page.wait_for_function("document.querySelectorAll('#history img').length === 1")

    # Problems are messages in the page, not tracebacks: a checkpoint folder that is not there.
    _choose(page, "method", CUSTOM_LABEL)
    page.locator("#checkpoint-folder textarea").fill("/nowhere/cotir-checkpoint")
    page.locator("#restore").click()
    page.get_by_text("/nowhere/cotir-checkpoint does not exist").first.wait_for(timeout=30_000)
    assert page.get_by_text("Traceback").count() == 0
    page.close()
