"""Browser tests: Debian's chromium driven by Playwright for Python (its bundled driver only).

Chromium comes from ``deploy/local/engines.sh install`` (``tools_install``); Playwright's own
browser downloads are never used (no ``playwright install``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install 'playwright>=1.49'")
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run bash deploy/local/engines.sh install", pytrace=False
        )
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
