"""HeteroLoRA Studio, the dashboard: ``streamlit run dashboard/app.py`` (or ``python -m dashboard``).

The pages (``dashboard/views/``: a folder named ``pages/`` would make Streamlit run a page file
on its own, as a legacy multipage app, skipping this script) lay out what
:mod:`heterolora_core.analysis` computes from the run records that :mod:`heterolora_core.records.store` indexes; training happens in the queue worker
(:mod:`heterolora_core.records.worker`), which this script starts when none is alive, never in here.
"""
import streamlit as st

from dashboard import guard
from dashboard.components import browser_hints

st.set_page_config(page_title="HeteroLoRA Studio", page_icon=":material/tune:", layout="wide")
guard.refuse_public_default()  # the app launches training processes: local unless asked otherwise
# before the heavy imports below, so the browser loads the chart renderer while they run
browser_hints.preload_plotly(st.sidebar)

from dashboard import data  # noqa: E402
from heterolora_core.records.home import data_home  # noqa: E402

worker_pid = data.start_worker()

PAGES = [
    st.Page("views/launch.py", title="Launch", icon=":material/rocket_launch:", default=True),
    st.Page("views/runs.py", title="Runs", icon=":material/list_alt:"),
    st.Page("views/allocation.py", title="Allocation", icon=":material/grid_on:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/results.py", title="Results", icon=":material/table_chart:"),
]
page = st.navigation(PAGES)

with st.sidebar:
    st.caption(f"Data home: `{data_home()}`")
    st.caption(f"Queue worker: pid {worker_pid}" if worker_pid else "Queue worker: not started")

page.run()
