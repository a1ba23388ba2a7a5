"""Runs page: every run in the store with its true state, live curves, cancel / delete / rerun."""
import streamlit as st

from dashboard import data
from dashboard.components import charts
from dashboard.components.formatting import command_line, format_duration
from heterolora_core.analysis.compare import curves_frame, runs_table
from heterolora_core.records.record import ACTIVE_STATUSES, STATUSES
from heterolora_core.records.store import StoreError, StoredRun


LIVE_REFRESH_SECONDS = 2.0

st.title("Runs")
rows = data.list_runs()
if not rows:
    st.info("No runs yet. Launch one on the Launch page, or from a shell with "
            "`python -m heterolora_core train ...`: runs written under the same data home appear here.")
    st.page_link("views/launch.py", label="Launch a run", icon=":material/rocket_launch:")
    st.stop()

labels = data.labels_for(rows)
any_active = any(row.status in ACTIVE_STATUSES for row in rows)


def run_curves(rows_to_plot: list[StoredRun], key: str, labels: dict[str, str]) -> None:
    """Loss and evaluation-metric curves of the given runs, side by side."""
    series = {labels.get(r.run_id, r.run_id): (data.metrics(r), r.summary.metric) for r in rows_to_plot}
    loss_col, metric_col = st.columns(2)
    loss = curves_frame(series, "loss")
    metric = curves_frame(series, "metric")
    metric_name = next((m for _, m in series.values() if m), "metric")
    with loss_col:
        if loss.empty:
            st.caption("No training loss logged" + (" yet." if any(r.status in ACTIVE_STATUSES for r in rows_to_plot)
                                                    else " (the run was shorter than its logging interval)."))
        else:
            st.plotly_chart(charts.curves_figure(loss, "training loss"), key=f"{key}-loss", config=charts.png_config("loss"))
    with metric_col:
        if metric.empty:
            st.caption(f"No evaluation ({metric_name}) yet.")
        else:
            st.plotly_chart(charts.curves_figure(metric, metric_name), key=f"{key}-metric", config=charts.png_config(metric_name))


@st.fragment(run_every=LIVE_REFRESH_SECONDS if any_active else None)
def live_table() -> None:
    """The run table and the running runs' curves; polls while any run is queued or running (and
    replaces a dead worker while it polls)."""
    if any_active:
        data.start_worker()
    current = data.list_runs()
    labels = data.labels_for(current)
    table = runs_table(current, data.store().home)
    counts = table["status"].value_counts()
    st.caption(" · ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES if counts.get(s, 0))
               + (" — updating live" if any_active else ""))
    shown = table.assign(
        eta=table["eta_seconds"].map(format_duration),
        wall=table["wall_seconds"].map(format_duration),
        run=table["run_id"].map(lambda rid: labels.get(rid, rid)),
    )
    st.dataframe(
        shown[["run_id", "status", "progress", "eta", "best_score", "metric", "trainable_params", "wall", "run", "task",
               "model", "created_at", "sweep_id", "error"]],
        hide_index=True,
        key="runs_table",
        column_config={
            "run_id": st.column_config.TextColumn("run", width="medium"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "eta": "ETA",
            "best_score": st.column_config.NumberColumn("best", format="%.4f"),
            "trainable_params": st.column_config.NumberColumn("trainable params", format="localized"),
            "wall": "wall time",
            "run": "configuration",
            "created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm:ss"),
            "sweep_id": "sweep",
        },
    )
    running = [r for r in current if r.status == "running"]
    if running:
        st.subheader("Live curves")
        run_curves(running, "live", labels)
    still_active = any(r.status in ACTIVE_STATUSES for r in current)
    if still_active != any_active:  # a run started or ended: rerun the page so polling and actions follow
        st.rerun()


live_table()

st.divider()
st.subheader("Selected run")
row_by_id = data.by_id(rows)
default = next((i for i, r in enumerate(rows) if r.status == "running"), 0)
run_id = st.selectbox("Run", list(row_by_id), index=default, key="selected_run",
                      format_func=lambda rid: f"{rid} — {labels[rid]}")
row = row_by_id[run_id]
status = row.status
store = data.store()
st.caption(f"Status: **{status}** · {labels[run_id]}")
if row.problem:
    st.warning(f"This record is damaged: {row.problem}", icon=":material/warning:")

cancel_col, rerun_col, delete_col, _ = st.columns([1, 1, 1, 3])
if cancel_col.button("Cancel", disabled=status not in ACTIVE_STATUSES, icon=":material/stop:", key="cancel"):
    store.cancel(run_id)
    st.rerun()
if rerun_col.button("Rerun", icon=":material/replay:", key="rerun", disabled=row.config is None,
                    help="queue a new run with the same configuration"):
    new = store.rerun(run_id)
    data.start_worker()
    st.toast(f"Queued {new.run_id}")
    st.rerun()
if delete_col.button("Delete…", icon=":material/delete:", key="delete", disabled=row.is_link,
                     help="a run folder that is a symbolic link is never deleted" if row.is_link else None):
    st.session_state["confirm_delete"] = run_id
if st.session_state.get("confirm_delete") == run_id:
    st.warning(f"Delete run `{run_id}` and its folder `{row.path}`? This cannot be undone."
               + (" The run is active and will be cancelled first." if status in ACTIVE_STATUSES else ""))
    yes_col, no_col, _ = st.columns([1, 1, 4])
    if yes_col.button("Yes, delete", type="primary", key="confirm_delete_yes"):
        try:
            store.delete(run_id)
        except StoreError as exc:
            st.error(str(exc))
        st.session_state.pop("confirm_delete", None)
        st.rerun()
    if no_col.button("Keep it", key="confirm_delete_no"):
        st.session_state.pop("confirm_delete", None)
        st.rerun()

if row.summary.error and status in ("failed", "cancelled"):
    st.error(f"{status}: {row.summary.error}")
if status != "running":
    run_curves([row], "selected", labels)
with st.expander("Configuration and summary"):
    left, right = st.columns(2)
    left.json(row.config.to_dict() if row.config else {}, expanded=False)
    right.json(row.summary.to_dict(), expanded=False)
    if row.config is not None:
        st.code(command_line(row.config, f"{row.path}_rerun"), language="bash")
