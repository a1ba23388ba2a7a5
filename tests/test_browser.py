"""The real thing in a real browser: Streamlit on 127.0.0.1 with a temporary data home, Debian's
Chromium driven by Playwright, the queue worker and the engine's CLI training two tiny runs.

Launch a tiny run from the Launch page (and a second seed), see both finish on the Runs page, check
the Allocation heatmaps have one row per model layer on a 0–1 colour scale, open Compare with the two
runs. Screenshots go to the test's temporary folder and to /tmp/heterolora_screens/.
"""
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from heterolora_core.analysis import allocation as alloc
from heterolora_core.records.home import PROJECT_ROOT
from heterolora_core.records.record import RunRecord
from heterolora_core.records.store import RunStore
from heterolora_core.training.run_config import RunConfig
from heterolora_testing.server import (CHROMIUM_MISSING, JS_HEATMAPS, JS_PLOTS_DRAWN, JS_TABLES_AND_PLOTS_DRAWN,
                                       StreamlitServer, chromium_path, launch_chromium)
from cli_helpers import wait_for

SCREENS = Path("/tmp/heterolora_screens")
TINY_RUN = {"Max steps (0: by epochs)": "4", "Training examples (0: all)": "32", "Dev examples (0: all)": "32"}
EMBEDDED_LAYERS = 6


def _require_browser():
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (pip install -r requirements.txt)"
    if missing is None and chromium_path() is None:
        missing = CHROMIUM_MISSING
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)


def wait_idle(page, timeout_ms: int = 60_000) -> None:
    """Wait until Streamlit has finished the rerun that the last action triggered."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]')?.getAttribute('data-test-script-state') === 'notRunning'",
        timeout=timeout_ms)


def fill_number(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Enter")
    wait_idle(page)


class Phases:
    """Prints how long each phase took (shown by pytest when the test fails)."""

    def __init__(self):
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        print(f"{name}: {now - self.last:.1f} s", flush=True)
        self.last = now


def open_sidebar_page(page, name: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(name, exact=True).click()
    page.wait_for_selector(f'h1:has-text("{name}")', timeout=60_000)
    wait_idle(page)


@pytest.fixture
def screens(tmp_path):
    folder = tmp_path / "screens"
    folder.mkdir()
    SCREENS.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str) -> None:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, SCREENS / path.name)

    return shot


@pytest.mark.slow
def test_launch_run_allocation_compare_in_a_real_browser(tmp_path, screens, monkeypatch):
    _require_browser()
    monkeypatch.delenv("HETEROLORA_TRAIN_CMD", raising=False)  # the worker must run the engine's CLI
    from playwright.sync_api import expect, sync_playwright

    home = tmp_path / "home"
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    glue = PROJECT_ROOT.parent / "shared" / "glue"
    if not os.environ.get("GLUE_DIR") and glue.is_dir():
        env["GLUE_DIR"] = str(glue)
    phase = Phases()
    with StreamlitServer(home, env=env) as server, sync_playwright() as pw:
        phase("server start")
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)

            # -- a page's URL as the fresh server's first request still runs inside app.py: its sidebar
            # and navigation, not Streamlit's legacy pages/ mode (which would skip the app's bind guard)
            page.goto(server.url + "/runs")
            page.wait_for_selector('h1:has-text("Runs")')
            expect(page.locator('[data-testid="stSidebar"]').get_by_text(str(home), exact=False).first).to_be_visible()
            expect(page.locator('[data-testid="stSidebarNav"]').get_by_text("Allocation", exact=True)).to_be_visible()
            phase("deep link")

            # -- Launch: the budget preview, then a tiny run and its second seed
            page.goto(server.url)
            page.wait_for_selector('h1:has-text("Launch")')
            expect(page.get_by_text("Trainable adapter parameters")).to_be_visible(timeout=90_000)
            expect(page.get_by_role("strong").filter(has_text="uniform LoRA q,v at rank 24")).to_be_visible()
            page.get_by_text("custom", exact=True).click()
            wait_idle(page)
            for label, value in TINY_RUN.items():
                fill_number(page, label, value)
            phase("launch page with budget preview")
            screens(page, "01-launch")
            page.get_by_role("button", name="Launch run").click()
            expect(page.get_by_text(re.compile(r"Queued `?\d{8}-"))).to_be_visible()
            fill_number(page, "Seed", "1")
            fill_number(page, "Max steps (0: by epochs)", "2")  # the second run only needs to exist for Compare
            page.get_by_role("button", name="Launch run").click()
            wait_idle(page)
            # the first launch's "Queued" line is still on the page, so wait on the store itself
            # (the rerun that queues the second run can start after the page looks idle)
            wait_for(lambda: len(RunStore(home).list_runs()) >= 2, 60, "the second launched run", poll=0.25)
            runs = RunStore(home).list_runs()
            assert len(runs) == 2 and {r.config.seed for r in runs} == {0, 1}
            assert sorted(r.config.max_steps for r in runs) == [2, 4]
            assert all(r.config.train_limit == 32 for r in runs)

            phase("two runs queued")
            # -- Runs: live progress, then both done without a manual refresh
            open_sidebar_page(page, "Runs")
            expect(page.get_by_text(re.compile(r"1 running"))).to_be_visible(timeout=120_000)
            page.wait_for_selector('[data-testid="stDataFrame"] canvas')
            screens(page, "02-runs-live")
            expect(page.get_by_text(re.compile(r"^2 runs · 2 done$"))).to_be_visible(timeout=240_000)
            wait_idle(page)
            page.wait_for_selector('[data-testid="stDataFrame"] canvas')
            phase("both runs trained")
            screens(page, "03-runs-done")
            runs = RunStore(home).list_runs()
            assert [r.summary.status for r in runs] == ["done", "done"], [r.summary.error for r in runs]

            # -- Allocation: heatmaps with one row per model layer, one 0–1 colour axis
            newest = runs[0]
            n_layers = alloc.n_layers_of(alloc.all_modules(RunRecord(newest.path).reallocations()))
            assert n_layers == EMBEDDED_LAYERS
            open_sidebar_page(page, "Allocation")
            page.wait_for_function(JS_PLOTS_DRAWN, arg=3, timeout=60_000)
            heatmaps = page.evaluate(JS_HEATMAPS)[0]
            assert len(heatmaps) == 2  # LoRA panel, shortcut panel
            for trace in heatmaps:
                assert trace["rows"] == n_layers and trace["z_rows"] == n_layers
                assert trace["coloraxis"] == "coloraxis" and (trace["cmin"], trace["cmax"]) == (0, 1)
            expect(page.get_by_text(f"{n_layers} layers", exact=False)).to_be_visible()
            # the app's preload hint and Streamlit's own import of the Plotly chunk share one fetch
            fetches = page.evaluate("() => performance.getEntriesByType('resource')"
                                    ".filter(e => e.name.includes('/PlotlyChart.')).length")
            assert fetches == 1, f"Plotly chunk fetched {fetches} times"
            phase("allocation page")
            screens(page, "04-allocation")

            # -- Compare: the two runs are two configurations (their run lengths differ), side by side
            open_sidebar_page(page, "Compare")
            page.wait_for_function(JS_PLOTS_DRAWN, arg=4, timeout=60_000)
            charts = [c for c in page.evaluate(JS_HEATMAPS) if c and c[0]["coloraxis"] == "coloraxis"]
            assert len(charts) == 2 and all(len(c) == 2 and c[0]["rows"] == n_layers for c in charts)
            captions = page.locator('[data-testid="stCaptionContainer"]').all_inner_texts()
            assert any(c.startswith("2 runs in 2 configurations") and c.endswith("they differ in their max steps.")
                       for c in captions), captions
            expect(page.get_by_text("Overlap of the enabled sets")).to_be_visible()
            phase("compare page")
            screens(page, "05-compare")
        finally:
            browser.close()


# ----------------------------------------------------------------------------------------------
# Reliability: a polling page replaces a dead worker; the server binds 127.0.0.1 from anywhere
# ----------------------------------------------------------------------------------------------

def test_a_polling_runs_page_replaces_a_killed_worker(tmp_path):
    """SIGKILL the worker while the Runs page only polls: its run is marked failed with the reason,
    a new worker starts without anyone touching the page, and the queued run trains."""
    _require_browser()
    import signal

    from playwright.sync_api import sync_playwright

    from heterolora_core.records.worker import TRAIN_CMD_ENV, worker_pid

    home = tmp_path / "home"
    env = {TRAIN_CMD_ENV: f"{os.sys.executable} -m heterolora_testing.synthetic train",
           "HETEROLORA_FAKE_STEP_SECONDS": "0.5"}
    store = RunStore(home)
    first = store.enqueue({"task": "mrpc", "mode": "lora", "max_steps": 60})
    second = store.enqueue({"task": "mrpc", "mode": "lora", "max_steps": 4})
    with StreamlitServer(home, env=env) as server, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page()
            page.goto(server.url + "/runs")
            page.wait_for_selector('h1:has-text("Runs")', timeout=60_000)
            deadline = time.time() + 60
            while time.time() < deadline and first.raw_summary().status != "running":
                time.sleep(0.2)
            killed = worker_pid(home)
            assert killed and killed > 0 and first.raw_summary().status == "running"
            os.kill(killed, signal.SIGKILL)  # the worker the app started for this test's home
            deadline = time.time() + 60
            while time.time() < deadline and second.raw_summary().status != "done":
                time.sleep(0.5)
            assert second.raw_summary().status == "done"  # a new worker took the queue, nobody clicked
            assert worker_pid(home) not in (None, killed)
            failed = first.summary()
            assert failed.status == "failed" and f"worker (pid {killed}) was killed" in failed.error
        finally:
            browser.close()


def test_the_server_binds_loopback_from_any_directory(tmp_path):
    """`streamlit run <repo>/dashboard/app.py` from another folder reads no config file: the app
    refuses to serve and stops the server; `python -m dashboard` binds 127.0.0.1 from anywhere."""
    _require_browser()
    import socket
    import subprocess

    import psutil
    from playwright.sync_api import sync_playwright

    from heterolora_testing.server import free_port

    env = {**os.environ, "HETEROLORA_HOME": str(tmp_path / "home"), "HETEROLORA_DASHBOARD_WORKER": "0"}
    app = str(PROJECT_ROOT / "dashboard" / "app.py")

    def start(cmd):
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def wait_listening(proc, port):
        deadline = time.time() + 60
        while time.time() < deadline:
            listening = [c for c in psutil.Process(proc.pid).net_connections(kind="tcp")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
            if listening:
                return {c.laddr.ip for c in listening}
            time.sleep(0.2)
        raise AssertionError("the server never listened")

    port = free_port()
    public = start([os.sys.executable, "-m", "streamlit", "run", app, "--server.port", str(port),
                    "--server.headless", "true", "--browser.gatherUsageStats", "false"])
    try:
        assert wait_listening(public, port) - {"127.0.0.1"}  # Streamlit's default: every interface
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/runs")
            page.wait_for_selector("text=listens on every network interface", timeout=60_000)
            browser.close()
        assert public.wait(timeout=30) is not None  # the server stopped itself
    finally:
        if public.poll() is None:
            os.killpg(public.pid, 15)
            public.wait()

    port = free_port()
    local = start([os.sys.executable, "-m", "dashboard", "--server.port", str(port), "--server.headless", "true"])
    try:
        assert wait_listening(local, port) == {"127.0.0.1"}
        with socket.socket() as probe:  # and it answers there
            probe.settimeout(5)
            probe.connect(("127.0.0.1", port))
    finally:
        os.killpg(local.pid, 15)
        local.wait(timeout=30)


# ----------------------------------------------------------------------------------------------
# Research scale: the committed records (a copy) in the Runs explorer and on the Results page
# ----------------------------------------------------------------------------------------------

#: docs/results.md, "The grid: every row at lr 5e-4", MRPC: row 4 (uniform LoRA q,v r24) and row 6
#: (dynamic combined grad_norm r32, 9/35) against it.
ROW4 = "mrpc · lora · no shortcuts · r24 · lr 5e-4"
ROW6_FULL = "mrpc · dynamic · q,v + shortcuts · grad_norm · r32 · 25% · lr 5e-4"


def results_page_labels(home: Path, text: str) -> tuple[str, str, str]:
    """The Results page's names of rows 4 and 6 of the GPU grid when its search box holds ``text``:
    (row 4 in the reference picker, row 4 and row 6 among the configurations that pair with it),
    computed as the page computes them (the engine's labels of the groups shown)."""
    from heterolora_core.analysis import results as R
    from heterolora_core.analysis.compare import RunFilter, filter_runs, runs_table
    from heterolora_core.analysis.labels import describe_config, short_labels

    store = RunStore(home)
    rows = store.list_runs()
    frame = runs_table(rows, store.home)
    frame.insert(1, "label", [describe_config(r.config) for r in rows])
    kept = set(filter_runs(frame, RunFilter(text=text))["run_id"])
    groups = [g for g in R.group_by_config([r for r in rows if r.run_id in kept])]
    default = RunConfig()

    def is_row4(g):
        return g.config.mode == "lora" and g.config.rank == 24 and not g.config.shortcuts and g.config.lr == 5e-4

    def is_row6(g):
        c = g.config
        return (c.mode == "dynamic" and c.proxy == "grad_norm" and c.ranking == "combined" and c.shortcuts
                and c.realloc_every == default.realloc_every and c.proxy_batches is None
                and c.score_norm == default.score_norm and c.lr == 5e-4)

    row4, row6 = next(g for g in groups if is_row4(g)), next(g for g in groups if is_row6(g))
    extras = R.evidence_tokens(groups)
    picker = short_labels({g.key: g.config for g in groups}, extras, include_seed=False)
    paired = R.comparable(R.results_table(groups, row4.key))
    shown = [g for g in groups if g.key in set(paired["key"])]
    names = short_labels({g.key: g.config for g in shown}, {g.key: extras[g.key] for g in shown}, include_seed=False)
    return picker[row4.key].short, names[row4.key].short, names[row6.key].short

DOCS_ROW4, DOCS_ROW6, DOCS_DELTA = "79.90 ± 1.85 (n=3)", "71.81 ± 3.19 (n=3)", "-8.09 [-17.8, 1.7]"


@pytest.fixture
def committed_home(tmp_path):
    """The committed records copied into a temporary data home (the repository is never written)."""
    home = tmp_path / "home"
    shutil.copytree(PROJECT_ROOT / "data" / "results", home / "results")
    return home


def status_total(page) -> tuple[int, str]:
    """The Runs page's status line (``39 of 173 runs · 39 done``): the runs it counts, and the line."""
    line = page.locator('[data-testid="stCaptionContainer"]').filter(has_text=" done").first.inner_text()
    return sum(int(n) for n in re.findall(r"(\d+) (?:queued|running|done|failed|cancelled)", line)), line


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the Streamlit selectbox or multiselect labelled ``label`` (a combobox:
    type to filter its options, click the one wanted)."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).first.click()
    wait_idle(page)
    page.keyboard.press("Escape")  # a multiselect stays open after a choice
    wait_idle(page)


def metric_value(page, label: str) -> str:
    return page.locator('[data-testid="stMetric"]').filter(has_text=label).first \
        .locator('[data-testid="stMetricValue"]').inner_text().strip()


def test_the_runs_explorer_filters_the_committed_records(committed_home, screens):
    _require_browser()
    from playwright.sync_api import sync_playwright

    from heterolora_core.analysis.compare import RunFilter, filter_runs, runs_table

    store = RunStore(committed_home)
    rows = store.list_runs()
    frame = runs_table(rows, store.home)
    expect_mrpc = len(filter_runs(frame, RunFilter(text="gpu/lr0.0005/mrpc")))
    expect_row6 = len(filter_runs(frame, RunFilter({"proxy": ["grad_norm"], "ranking": ["combined"]},
                                                   text="gpu/lr0.0005/mrpc/dynamic-combined")))
    assert expect_mrpc == 39 and expect_row6 == 3
    with StreamlitServer(committed_home, env={"HETEROLORA_DASHBOARD_WORKER": "0"}) as server, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(60_000)
            page.goto(server.url + "/runs")
            page.wait_for_function(JS_TABLES_AND_PLOTS_DRAWN, arg={"tables": 1, "plots": 0})
            on_disk = sum(1 for _ in (committed_home / "results").rglob("config.json"))  # every committed record
            assert status_total(page)[0] == len(rows) == on_disk >= 173
            search = page.get_by_role("textbox", name="Search", exact=True)
            search.fill("gpu/lr0.0005/mrpc")
            search.press("Enter")
            wait_idle(page)
            total, line = status_total(page)
            assert total == expect_mrpc and line.startswith(f"{expect_mrpc} of {len(rows)} runs"), line
            search.fill("gpu/lr0.0005/mrpc/dynamic-combined")
            search.press("Enter")
            wait_idle(page)
            choose(page, "Proxy", "grad_norm")
            total, line = status_total(page)
            assert total == expect_row6, line
            page.wait_for_function(JS_TABLES_AND_PLOTS_DRAWN, arg={"tables": 1, "plots": 0})
            screens(page, "06-runs-filtered")
            # the selected run follows the filter: one of row 6's seeds
            selected = page.get_by_role("combobox", name="Run", exact=True).input_value()
            assert "dynamic-combined-gradnorm-r32/seed" in selected and selected.startswith("seed "), selected  # what differs
            status = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="Status:").first.inner_text()
            assert ROW6_FULL in status, status
        finally:
            browser.close()


def test_results_on_the_committed_records_match_docs_results(committed_home, screens):
    _require_browser()
    from playwright.sync_api import sync_playwright

    row4_picker, _, row6 = results_page_labels(committed_home, "gpu/lr0.0005/mrpc")

    with StreamlitServer(committed_home, env={"HETEROLORA_DASHBOARD_WORKER": "0"}) as server, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(60_000)
            page.goto(server.url + "/results")
            page.wait_for_selector('h1:has-text("Results")')
            wait_idle(page)
            search = page.get_by_role("textbox", name="Search", exact=True)
            search.fill("gpu/lr0.0005/mrpc")  # the grid's MRPC runs at 5e-4 on the GPU
            search.press("Enter")
            wait_idle(page)
            choose(page, "Reference configuration", row4_picker)
            choose(page, "Configuration", row6)
            page.wait_for_function(JS_TABLES_AND_PLOTS_DRAWN, arg={"tables": 1, "plots": 1})
            assert metric_value(page, "Reference") == DOCS_ROW4
            assert metric_value(page, "Final-epoch score") == DOCS_ROW6
            assert metric_value(page, "Δ vs reference") == DOCS_DELTA
            verdict = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="Verdict:").first.inner_text()
            assert verdict.strip() == "Verdict: noise"
            # the forest plot draws the same difference, in points, with its interval
            forest = page.evaluate("""(label) => {
              for (const p of document.querySelectorAll('.js-plotly-plot'))
                for (const t of p.data || []) {
                  const i = (t.y || []).indexOf(label);
                  if (i >= 0) return {x: t.x[i], plus: t.error_x.array[i], minus: t.error_x.arrayminus[i], name: t.name};
                }
              return null; }""", row6)
            assert forest is not None and forest["name"] == "noise"
            assert (round(forest["x"], 2), round(forest["x"] - forest["minus"], 1), round(forest["x"] + forest["plus"], 1)) \
                == (-8.09, -17.8, 1.7)
            screens(page, "07-results")
        finally:
            browser.close()


#: JavaScript: every line of text Plotly drew, per chart, with its box on screen; and the pairs of
#: lines in one chart whose boxes overlap by more than a pixel.
JS_PLOT_TEXT = """() => {
  const charts = [];
  for (const p of document.querySelectorAll('.js-plotly-plot')) {
    const lines = [];
    for (const t of p.querySelectorAll('text')) {
      const parts = t.querySelectorAll('tspan.line');
      for (const node of (parts.length ? Array.from(parts) : [t])) {
        const text = node.textContent.trim();
        const r = node.getBoundingClientRect();
        if (text && r.width > 0 && r.height > 0) lines.push({text, l: r.left, r: r.right, t: r.top, b: r.bottom});
      }
    }
    const overlaps = [];
    for (let i = 0; i < lines.length; i++)
      for (let j = i + 1; j < lines.length; j++) {
        const a = lines[i], b = lines[j];
        const w = Math.min(a.r, b.r) - Math.max(a.l, b.l), h = Math.min(a.b, b.b) - Math.max(a.t, b.t);
        if (w > 1 && h > 1) overlaps.push([a.text, b.text]);
      }
    charts.push({lines: lines.map(x => x.text), overlaps});
  }
  return charts;
}"""


def test_compare_of_the_committed_rank_sweep_is_readable(committed_home, screens):
    """The 11-run sweep a fresh clone opens: no text drawn over other text in any chart, no label over
    60 characters, configurations (not 11 runs) in the heatmaps, and a heading for what differs."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with StreamlitServer(committed_home, env={"HETEROLORA_DASHBOARD_WORKER": "0"}) as server, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 3000})
            page.set_default_timeout(90_000)
            page.goto(server.url + "/compare")
            page.wait_for_selector('h1:has-text("Compare")')
            wait_idle(page)
            choose(page, "Experiment", "ranks-mrpc-a (11 runs)")
            page.wait_for_function(JS_TABLES_AND_PLOTS_DRAWN, arg={"tables": 1, "plots": 4})
            charts = page.evaluate(JS_PLOT_TEXT)
            assert charts and all(not c["overlaps"] for c in charts), [c["overlaps"] for c in charts if c["overlaps"]]
            lines = [line for c in charts for line in c["lines"]]
            assert max(map(len, lines)) <= 60, max(lines, key=len)
            titles = {line for line in lines if line.startswith(("rank_static", "rank_random"))}
            assert {"rank_static · all targets · r32", "rank_random · all targets · r32"} <= titles
            tags = page.locator('[data-testid="stMultiSelectTagsContainer"]').first.inner_text()
            chips = [t.strip() for t in tags.splitlines() if t.strip()]
            assert len(chips) == 11 and max(map(len, chips)) <= 60, chips
            assert page.get_by_role("heading", name="Do the methods agree?").count() == 1
            screens(page, "08-compare-rank-sweep")
        finally:
            browser.close()


# ----------------------------------------------------------------------------------------------
# The Launch page's SFT upload, through the real file input
# ----------------------------------------------------------------------------------------------

def test_an_sft_upload_is_checked_and_kept_once_under_the_home(tmp_path, screens):
    """Upload a good training file and a bad dev file through Chromium's file input: the good one is
    kept once, by content, under ``<home>/uploads/`` and named on the page with its row count; the
    bad one is one ``name:line: reason`` line and writes nothing."""
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    home = tmp_path / "home"
    good = tmp_path / "train.jsonl"
    good.write_text("".join(f'{{"prompt": "Say {w}.", "completion": " {w}"}}\n' for w in ("one", "two", "three")))
    bad = tmp_path / "dev.jsonl"
    bad.write_text('{"prompt": "Say one.", "completion": " one"}\n{"prompt": "no completion"}\n')

    with StreamlitServer(home, env={"HETEROLORA_DASHBOARD_WORKER": "0"}) as server, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(server.url)
            page.wait_for_selector('h1:has-text("Launch")')
            wait_idle(page)
            choose(page, "Task", "sft")
            lm = page.get_by_role("radio", name="lm", exact=True)
            expect(lm).to_be_checked()  # sft's only objective, chosen with the task
            expect(lm).to_be_disabled()
            uploaders = page.locator('[data-testid="stFileUploader"]')
            expect(uploaders.filter(has_text="Training file")).to_be_visible()

            uploaders.filter(has_text="Training file").locator('input[type="file"]').set_input_files(str(good))
            wait_idle(page)
            kept = list((home / "uploads").iterdir())
            assert len(kept) == 1 and kept[0].name.endswith("-train.jsonl")
            assert kept[0].read_bytes() == good.read_bytes()
            expect(page.get_by_text(f"train.jsonl: 3 rows, kept as {kept[0].name}")).to_be_visible()

            uploaders.filter(has_text="Dev file").locator('input[type="file"]').set_input_files(str(bad))
            wait_idle(page)
            expect(page.get_by_text(re.compile(r"dev\.jsonl:2: .*completion"))).to_be_visible()
            assert [p.name for p in (home / "uploads").iterdir()] == [kept[0].name]  # nothing written for it

            # a rerun (any widget) neither saves the good file again nor loses it
            fill_number(page, "Seed", "3")
            assert [p.name for p in (home / "uploads").iterdir()] == [kept[0].name]
            expect(page.get_by_text(f"train.jsonl: 3 rows, kept as {kept[0].name}")).to_be_visible()
            screens(page, "06-sft-upload")
        finally:
            browser.close()
