"""Screenshots of every dashboard page on the committed records, for the README's tour.

``python -m heterolora_testing.screenshots [--out docs/screens]`` copies ``data/results`` into a
temporary data home (the repository's records are never written), serves the app on 127.0.0.1
with no queue worker, opens each page in Debian's Chromium, waits until Streamlit is idle and every
chart has drawn, and writes one PNG per page. The PNGs under ``docs/screens/`` are made this way,
so rerunning the command keeps the README's pictures current.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from heterolora_core.records.home import PROJECT_ROOT
from heterolora_testing.server import CHROMIUM_MISSING, StreamlitServer, chromium_path, launch_chromium

#: (URL path, page title, file name): the five pages in the sidebar's order.
PAGES = (("", "Launch", "1-launch"), ("runs", "Runs", "2-runs"), ("allocation", "Allocation", "3-allocation"),
         ("compare", "Compare", "4-compare"), ("results", "Results", "5-results"))

#: JavaScript: true once Streamlit is idle and every Plotly chart on the page has drawn.
JS_PAGE_SETTLED = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSkeleton"]')) return false;
  return Array.from(document.querySelectorAll('.js-plotly-plot')).every(p => p._fullLayout);
}"""


def settle(page, timeout_ms: int = 90_000) -> None:
    """Wait until the page's script has finished and its charts have drawn (then a little more for
    the data frames' canvases)."""
    page.wait_for_timeout(500)
    page.wait_for_function(JS_PAGE_SETTLED, timeout=timeout_ms)
    page.wait_for_timeout(1500)


def capture(home: Path, out: Path, width: int = 1400, height: int = 1000, pages=PAGES) -> list[Path]:
    """One full-page PNG per page of the app serving ``home``, written to ``out``; the paths."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    env = {"HETEROLORA_DASHBOARD_WORKER": "0"}
    glue = os.environ.get("GLUE_DIR") or (PROJECT_ROOT.parent / "shared" / "glue")
    if Path(glue).is_dir():  # the Launch page as a user with GLUE data sees it
        env["GLUE_DIR"] = str(glue)
    with StreamlitServer(home, env=env) as server, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(90_000)
            for path, title, name in pages:
                page.goto(f"{server.url}/{path}")
                page.wait_for_selector(f'h1:has-text("{title}")')
                settle(page)
                # Streamlit scrolls inside its main section: make the window as tall as the page
                tall = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]')?.scrollHeight || 0")
                page.set_viewport_size({"width": width, "height": max(height, min(int(tall) + 40, 12_000))})
                settle(page)
                target = out / f"{name}.png"
                page.screenshot(path=str(target), full_page=True)
                written.append(target)
                page.set_viewport_size({"width": width, "height": height})
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "screens", help="folder for the PNGs")
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args(argv)
    if chromium_path() is None:
        print(f"error: {CHROMIUM_MISSING}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="heterolora-screens-") as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(PROJECT_ROOT / "data" / "results", home / "results")
        for path in capture(home, args.out, width=args.width):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
