"""The Dagster UI, as a user sees it: every asset of the code location is in the catalog."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from assets.definitions import build_definitions
from cotir_pipeline.settings import CotirSettings
from cotir_test_support import dismiss_first_visit_dialog

pytestmark = [pytest.mark.browser, pytest.mark.slow]


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
        dismiss_first_visit_dialog(page)
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
