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
from heterolora_testing.server import (CHROMIUM_MISSING, JS_HEATMAPS, JS_PLOTS_DRAWN, StreamlitServer, chromium_path,
                                       launch_chromium)

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
            expect(page.get_by_text("uniform LoRA q,v at rank 24", exact=False)).to_be_visible()
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
            expect(page.get_by_text(re.compile(r"^2 done$"))).to_be_visible(timeout=240_000)
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

            # -- Compare: the two runs side by side
            open_sidebar_page(page, "Compare")
            # heatmaps, metric curves, Jaccard, Spearman (a 4-step run logs no training loss: no loss chart)
            page.wait_for_function(JS_PLOTS_DRAWN, arg=4, timeout=60_000)
            compare = page.evaluate(JS_HEATMAPS)[0]
            assert len(compare) == 4 and all(t["rows"] == n_layers for t in compare)
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
