"""Run the real app for browser tests and benchmarks: a Streamlit server on 127.0.0.1 with its own
data home, and Debian's Chromium driven by Playwright.

Used by ``tests/test_browser.py`` and ``benchmarks/bench_dashboard.py``; nothing in the app imports it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from heterolora_core.records.home import PROJECT_ROOT
from heterolora_core.records.worker import stop_worker, worker_pid

APP = PROJECT_ROOT / "dashboard" / "app.py"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
CHROMIUM_MISSING = "Debian's Chromium is not installed (apt-get install -y chromium)"

#: JavaScript: true once every Plotly chart on the page has drawn and Streamlit is idle.
JS_PLOTS_DRAWN = """(expected) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSkeleton"]')) return false;
  const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
  if (plots.length < expected) return false;
  // drawn = the trace layers hold their heatmap images / trace groups
  return plots.every(p => p._fullLayout && p.querySelector('.cartesianlayer .hm image, .cartesianlayer .trace'));
}"""

#: JavaScript: true once Streamlit is idle and the page shows at least ``tables`` data frames (each
#: drawn on its canvas) and ``plots`` Plotly charts, every chart drawn.
JS_TABLES_AND_PLOTS_DRAWN = """({tables, plots}) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSkeleton"]')) return false;
  if (document.querySelectorAll('[data-testid="stDataFrame"] canvas').length < tables) return false;
  const drawn = Array.from(document.querySelectorAll('.js-plotly-plot'));
  if (drawn.length < plots) return false;
  return drawn.every(p => p._fullLayout && p.querySelector('.cartesianlayer .hm image, .cartesianlayer .trace'));
}"""

#: JavaScript: for each Plotly chart, its heatmap traces: number of rows (y labels, and z rows when
#: z is a plain array), colour axis and its range.
JS_HEATMAPS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => (p.data || [])
  .filter(t => t.type === 'heatmap').map(t => ({
    rows: Array.isArray(t.y) ? t.y.length : null,
    z_rows: Array.isArray(t.z) ? t.z.length : null,
    coloraxis: t.coloraxis || null,
    cmin: t.coloraxis && p._fullLayout[t.coloraxis] ? p._fullLayout[t.coloraxis].cmin : t.zmin,
    cmax: t.coloraxis && p._fullLayout[t.coloraxis] ? p._fullLayout[t.coloraxis].cmax : t.zmax,
  })))"""


def chromium_path() -> str | None:
    """Debian's Chromium binary, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StreamlitServer:
    """``streamlit run dashboard/app.py`` on 127.0.0.1:<free port> with ``HETEROLORA_HOME=home``.

    A context manager: entering waits until the server answers its health check; leaving stops the
    server, then the queue worker it started (which lives in its own session on purpose) and that
    worker's training process.
    """

    def __init__(self, home: Path, env: dict[str, str] | None = None, log_path: Path | None = None):
        self.home = Path(home)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HETEROLORA_HOME": str(self.home), **(env or {})}
        # beside the home, not in it: a data home holds only what the tool writes (records.home.checked_home)
        self.log_path = log_path or self.home.parent / f"{self.home.name}-streamlit.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "StreamlitServer":
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
             "--server.port", str(self.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=str(PROJECT_ROOT), env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.__exit__(None, None, None)
        raise RuntimeError(f"streamlit did not answer within 60 s: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        stop_worker(self.home)
        pid = worker_pid(self.home)
        if pid and pid > 0:  # still alive after SIGTERM: its training process dies with it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def launch_chromium(playwright):
    """A headless Chromium (Debian's) through Playwright."""
    path = chromium_path()
    if path is None:
        raise RuntimeError(CHROMIUM_MISSING)
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
