"""Dashboard speed, measured in a real browser, and the default short run's wall time.

Pages (default): a synthetic dynamic run record the size of the paper's OPT-350M search space
(24 layers, 143 candidate modules, 100 reallocations) in a temporary data home; Streamlit on
127.0.0.1 with no queue worker; Debian's Chromium through Playwright. "Fully drawn" = Streamlit has
finished the script run and every Plotly chart of the page (heatmaps, timeline, score distribution)
has drawn its traces. Three measurements, each repeated ``--repeats`` times, medians reported:

- ``cold_first_load``: a freshly started server, a new browser, the Allocation page's URL opened
  directly (the first script run imports pandas and Plotly and reads the record);
- ``sidebar_click_first``: a freshly started server with the app open on the Runs page, then a click
  on "Allocation" in the sidebar (the app is warm, the record is read for the first time);
- ``sidebar_click_cached``: the same click again in the same session (the record is cached).

Targets (the dashboard issue): sidebar click within 2 s, cold first load within 6 s.

Runs page at research scale (default; ``--no-runs-page`` skips it): a data home of ``--runs`` (default
1,000) small synthetic records in 10 experiment folders (:func:`heterolora_testing.synthetic.write_many_runs`),
a freshly started server with the app open on the Compare page, then a click on "Runs" in the
sidebar until the page is fully drawn (script finished, the runs table on its canvas, the selected
run's two curves drawn): ``runs_click_first`` (the listing is read and the table built for the first
time) and ``runs_click_cached`` (the same click again after going back to Compare). Target 2 s.

Short run (``--short-run``): the Launch page's default run (``dashboard.components.forms.SHORT_RUN``)
through the engine's CLI, ``--short-runs`` times (default 3), median wall time; target 2 minutes.

    python benchmarks/bench_dashboard.py [--repeats 5] [--runs 1000] [--short-run] [--out benchmarks/results/dashboard.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS
from dashboard.components.forms import SHORT_RUN, launch_config
from heterolora_core.records.home import PROJECT_ROOT
from heterolora_core.records.record import RunRecord
from heterolora_testing.server import (JS_HEATMAPS, JS_PLOTS_DRAWN, JS_TABLES_AND_PLOTS_DRAWN, StreamlitServer,
                                       launch_chromium)
from heterolora_testing.synthetic import write_many_runs, write_synthetic_run

ALLOCATION_PLOTS = 3  # enable-frequency heatmaps, timeline, score distribution
PAPER_LAYERS, PAPER_REALLOCATIONS = 24, 100


def make_home(root: Path) -> Path:
    """A data home holding the paper-sized dynamic record (newest) and two small ones."""
    home = root / "home"
    now = time.time()
    write_synthetic_run(home / "runs" / "small-static", mode="static", created_at=now - 20)
    write_synthetic_run(home / "runs" / "small-dynamic", proxy="snip", created_at=now - 10)
    write_synthetic_run(home / "runs" / "opt350m-size-dynamic", n_layers=PAPER_LAYERS, n_reallocations=PAPER_REALLOCATIONS,
                        created_at=now)
    return home


def wait_drawn(page, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(JS_PLOTS_DRAWN, arg=ALLOCATION_PLOTS, timeout=timeout_ms, polling="raf")


def check_drawn(page) -> None:
    heatmaps = page.evaluate(JS_HEATMAPS)
    rows = [t["rows"] for t in heatmaps[0]]
    assert rows == [PAPER_LAYERS, PAPER_LAYERS], f"heatmap rows {rows}, expected {PAPER_LAYERS} per panel"
    assert heatmaps[1][0]["rows"] == 143, "timeline should have one row per module"


def click_allocation(page) -> float:
    """Seconds from the sidebar click to the Allocation page fully drawn."""
    link = page.locator('[data-testid="stSidebarNav"]').get_by_text("Allocation", exact=True)
    started = time.perf_counter()
    link.click()
    page.wait_for_selector('h1:has-text("Allocation")', timeout=60_000)
    wait_drawn(page)
    return time.perf_counter() - started


def go_runs(page) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Runs", exact=True).click()
    page.wait_for_selector('h1:has-text("Runs")', timeout=60_000)
    page.wait_for_function("() => document.querySelector('[data-testid=\"stApp\"]')"
                           "?.getAttribute('data-test-script-state') === 'notRunning'", timeout=60_000)


def bench_pages(repeats: int, shots: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    results = {"cold_first_load": [], "sidebar_click_first": [], "sidebar_click_cached": []}
    env = {"HETEROLORA_DASHBOARD_WORKER": "0"}
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp, sync_playwright() as pw:
        home = make_home(Path(tmp))
        browser = launch_chromium(pw)
        try:
            for i in range(repeats):
                with StreamlitServer(home, env=env) as server:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    started = time.perf_counter()
                    page.goto(server.url + "/allocation")
                    wait_drawn(page)
                    results["cold_first_load"].append(time.perf_counter() - started)
                    check_drawn(page)
                    if shots and i == 0:
                        page.screenshot(path=str(shots / "bench-allocation-143-modules.png"), full_page=True)
                    page.close()
                with StreamlitServer(home, env=env) as server:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(server.url + "/runs")
                    page.wait_for_selector('h1:has-text("Runs")', timeout=60_000)
                    go_runs(page)
                    results["sidebar_click_first"].append(click_allocation(page))
                    check_drawn(page)
                    go_runs(page)
                    results["sidebar_click_cached"].append(click_allocation(page))
                    page.close()
                print(f"repeat {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items()), flush=True)
        finally:
            browser.close()
    return {name: {"median_s": round(statistics.median(v), 3), "runs_s": [round(x, 3) for x in v]} for name, v in results.items()}


RUNS_PAGE_DRAWN = {"tables": 1, "plots": 2}  # the runs table; the selected run's loss and metric curves


def open_in_sidebar(page, name: str) -> float:
    """Seconds from a click on ``name`` in the sidebar to that page fully drawn (Runs: its table
    and the selected run's curves; any other page: Streamlit idle)."""
    link = page.locator('[data-testid="stSidebarNav"]').get_by_text(name, exact=True)
    started = time.perf_counter()
    link.click()
    page.wait_for_selector(f'h1:has-text("{name}")', timeout=60_000)
    drawn = RUNS_PAGE_DRAWN if name == "Runs" else {"tables": 0, "plots": 0}
    page.wait_for_function(JS_TABLES_AND_PLOTS_DRAWN, arg=drawn, timeout=60_000, polling="raf")
    return time.perf_counter() - started


def check_listed(page, n_runs: int) -> None:
    """The Runs page's status line counts every run of the store (``800 done · 100 failed · …``)."""
    line = page.locator('[data-testid="stCaptionContainer"]').filter(has_text=" done").first.inner_text()
    listed = sum(int(n) for n in re.findall(r"(\d+) (?:queued|running|done|failed|cancelled)", line))
    assert listed == n_runs, f"the Runs page lists {listed} runs ({line!r}), expected {n_runs}"


def bench_runs_page(repeats: int, n_runs: int, shots: Path | None) -> dict:
    """The Runs page with ``n_runs`` records in the store: sidebar click to fully drawn."""
    from playwright.sync_api import sync_playwright

    results = {"runs_click_first": [], "runs_click_cached": []}
    env = {"HETEROLORA_DASHBOARD_WORKER": "0"}
    with tempfile.TemporaryDirectory(prefix="bench-runs-page-") as tmp, sync_playwright() as pw:
        home = Path(tmp) / "home"
        write_many_runs(home, n_runs)
        browser = launch_chromium(pw)
        try:
            for i in range(repeats):
                with StreamlitServer(home, env=env) as server:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(server.url + "/compare")
                    page.wait_for_selector('h1:has-text("Compare")', timeout=60_000)
                    page.wait_for_function(JS_TABLES_AND_PLOTS_DRAWN, arg={"tables": 1, "plots": 0}, timeout=60_000)
                    results["runs_click_first"].append(open_in_sidebar(page, "Runs"))
                    check_listed(page, n_runs)
                    if shots and i == 0:
                        page.screenshot(path=str(shots / f"bench-runs-{n_runs}.png"), full_page=True)
                    open_in_sidebar(page, "Compare")
                    results["runs_click_cached"].append(open_in_sidebar(page, "Runs"))
                    check_listed(page, n_runs)
                    page.close()
                print(f"repeat {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items()), flush=True)
        finally:
            browser.close()
    return {name: {"median_s": round(statistics.median(v), 3), "runs_s": [round(x, 3) for x in v]} for name, v in results.items()}


def bench_short_run(runs: int) -> dict:
    """The default short run through the engine's CLI, ``runs`` times; wall time of the process."""
    config = launch_config(SHORT_RUN)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    glue = PROJECT_ROOT.parent / "shared" / "glue"
    if not env.get("GLUE_DIR") and glue.is_dir():
        env["GLUE_DIR"] = str(glue)
    walls, summaries = [], []
    with tempfile.TemporaryDirectory(prefix="bench-short-run-") as tmp:
        for i in range(runs):
            out = Path(tmp) / f"run{i}"
            record = RunRecord.create(out, config, status="queued")
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "heterolora_core", "train", "--config", str(out / "config.json"),
                                   "--out", str(out), "--no-progress"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            summary = record.raw_summary()
            if proc.returncode != 0 or summary.status != "done":
                raise SystemExit(f"short run failed (code {proc.returncode}): {summary.error}\n{proc.stderr[-2000:]}")
            walls.append(wall)
            summaries.append({k: getattr(summary, k) for k in ("wall_seconds", "search_seconds", "num_reallocations", "best_score", "step")})
            print(f"short run {i + 1}/{runs}: {wall:.1f} s end to end, {summary.num_reallocations} reallocations, "
                  f"best {summary.metric} {summary.best_score}", flush=True)
    return {"median_s": round(statistics.median(walls), 2), "runs_s": [round(w, 2) for w in walls], "summaries": summaries,
            "config": {k: config[k] for k in SHORT_RUN}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="repetitions of each page measurement (median reported)")
    parser.add_argument("--no-pages", action="store_true", help="skip the browser measurements")
    parser.add_argument("--no-runs-page", action="store_true", help="skip the Runs page at research scale")
    parser.add_argument("--runs", type=int, default=1000, help="synthetic runs in the store for the Runs page measurement")
    parser.add_argument("--short-run", action="store_true", help="also time the default short run through the CLI")
    parser.add_argument("--short-runs", type=int, default=3)
    parser.add_argument("--screens", type=Path, default=Path("/tmp/heterolora_screens"), help="where the first page screenshot goes")
    parser.add_argument("--out", type=Path, default=RESULTS / "dashboard.json", help="JSON results (default: benchmarks/results/dashboard.json)")
    args = parser.parse_args(argv)

    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.no_pages:
        args.screens.mkdir(parents=True, exist_ok=True)
        report["allocation_page"] = {"record": f"{PAPER_LAYERS} layers, 143 modules, {PAPER_REALLOCATIONS} reallocations",
                                     "targets_s": {"sidebar_click": 2.0, "cold_first_load": 6.0},
                                     **bench_pages(args.repeats, args.screens)}
    if not args.no_runs_page:
        args.screens.mkdir(parents=True, exist_ok=True)
        report["runs_page"] = {"store": f"{args.runs} synthetic runs in 10 experiments", "targets_s": {"sidebar_click": 2.0},
                               **bench_runs_page(args.repeats, args.runs, args.screens)}
    if args.short_run:
        report["short_run"] = {"target_s": 120.0, **bench_short_run(args.short_runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
