"""HeteroLoRA Studio, the dashboard: ``streamlit run dashboard/app.py``.

The pages (``dashboard/views/``) lay out what :mod:`heterolora_core.analysis` computes from the run
records that :mod:`heterolora_core.store` indexes; training happens in the queue worker
(:mod:`heterolora_core.worker`), which this script starts when none is alive, never in here.
"""
import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the project root.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import streamlit as st  # noqa: E402

from dashboard import browser_hints  # noqa: E402

st.set_page_config(page_title="HeteroLoRA Studio", page_icon=":material/tune:", layout="wide")
# before the heavy imports below, so the browser loads the chart renderer while they run
browser_hints.preload_plotly(st.sidebar)

from dashboard import loaders  # noqa: E402
from heterolora_core.runs import data_home  # noqa: E402

worker_pid = loaders.start_worker()

PAGES = [
    st.Page("views/launch.py", title="Launch", icon=":material/rocket_launch:", default=True),
    st.Page("views/runs.py", title="Runs", icon=":material/list_alt:"),
    st.Page("views/allocation.py", title="Allocation", icon=":material/grid_on:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
]
page = st.navigation(PAGES)

with st.sidebar:
    st.caption(f"Data home: `{data_home()}`")
    st.caption(f"Queue worker: pid {worker_pid}" if worker_pid else "Queue worker: not started")

page.run()
