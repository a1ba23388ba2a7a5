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
from heterolora_core.records.home import StoreError, data_home  # noqa: E402
from heterolora_core.records.worker import MAX_SLOTS  # noqa: E402

try:
    store = data.store()  # refuses a folder that is not a data home; sets a corrupt index aside and rebuilds it
    worker_pid = data.start_worker()
except StoreError as exc:
    st.error(str(exc), icon=":material/error:")
    st.stop()
if store.recovered:  # said once, to the first page that opens the rebuilt index
    st.warning(store.recovered, icon=":material/build:")
    store.recovered = None

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
    st.number_input("Runs at once", min_value=1, max_value=MAX_SLOTS, value=data.slots(), step=1, key="worker_slots",
                    on_change=lambda: data.set_slots(st.session_state["worker_slots"]),
                    help="The queue worker's slots: how many queued runs train at the same time, each its own "
                         "process. More than 1 only makes sense on a GPU machine (the worker's `--gpus 0,1` shares "
                         "the GPUs out between the slots) or for tiny runs: on a CPU, parallel runs share its cores "
                         "and each one takes longer.")
    st.caption("More than 1 run at once only makes sense on a GPU machine or for tiny runs.")

page.run()
