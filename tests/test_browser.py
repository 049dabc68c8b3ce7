"""The Dagster UI, as a user sees it: every asset of the code location is in the catalog."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from assets.definitions import build_definitions
from cotir_pipeline.settings import CotirSettings
from cotir_test_support import CHROMIUM_ARGS, DagsterDevServer, chromium_executable, skip_or_fail

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def dagster_ui(
    tmp_path_factory: pytest.TempPathFactory, service_report: list[str]
) -> Iterator[str]:
    """``dagster dev`` serving this repo's workspace on a free loopback port."""
    root = tmp_path_factory.mktemp("dagster-ui")
    server = DagsterDevServer(
        dagster_home=root / "dagster_home",
        log_path=root / "dagster-dev.log",
        environment={"COTIR_HOME": str(root / "cotir"), "COTIR_PROFILE": "demo"},
    )
    started = time.monotonic()
    url = server.start()
    elapsed = time.monotonic() - started
    service_report.append(f"Dagster: dagster dev at {url}, ready in {elapsed:.1f} s")
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(service_report: list[str]) -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    executable = chromium_executable()
    if executable is None:
        skip_or_fail("Chromium not found")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        service_report.append(f"Browser: {executable} {instance.version} (headless)")
        try:
            yield instance
        finally:
            instance.close()


def _dismiss_first_visit_dialog(page: object) -> None:
    """Close Dagster's "Join the Dagster community" dialog if it shows up."""
    dialog = page.get_by_role("dialog")  # type: ignore[attr-defined]
    try:
        dialog.get_by_role("button", name="Skip").click(timeout=15_000)
    except Exception:  # no dialog on this visit is fine
        return
    dialog.wait_for(state="hidden", timeout=10_000)


def test_asset_catalog_lists_every_asset(
    dagster_ui: str, browser: object, artifacts_dir: Path, tmp_path: Path
) -> None:
    expected = sorted(
        key.to_user_string()
        for key in build_definitions(CotirSettings(home=tmp_path))
        .resolve_asset_graph()
        .get_all_asset_keys()
    )
    assert expected, "the code location defines no assets"
    page = browser.new_page(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    screenshot = artifacts_dir / f"asset-catalog-{time.strftime('%Y%m%d-%H%M%S')}.png"
    try:
        page.goto(f"{dagster_ui}/assets", wait_until="domcontentloaded")
        _dismiss_first_visit_dialog(page)
        # Each catalog row links to /assets/<key path>; wait for every expected row.
        for key in expected:
            row_link = page.locator(f'a[href="/assets/{key}"]')
            row_link.first.wait_for(state="visible", timeout=60_000)
            assert key in row_link.first.inner_text()
        hrefs = page.locator('a[href^="/assets/"]').evaluate_all(
            "links => links.map(link => link.getAttribute('href'))"
        )
        listed = sorted({href.removeprefix("/assets/") for href in hrefs})
        assert listed == expected
        assert page.get_by_role("dialog").count() == 0, "the first-visit dialog is still open"
    finally:
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"\n[browser] asset catalog screenshot: {screenshot}")
        page.close()
