"""Runs page: every run in the store, filtered, searched, sorted and grouped by experiment, with
its true state; live curves; cancel / delete / rerun."""
import streamlit as st

from dashboard import data
from dashboard.components import charts
from dashboard.components.empty import stop_without_runs
from dashboard.components.filters import run_filters
from dashboard.components.formatting import (SCORE_HELP, command_line, format_duration, format_lr, plural,
                                             score_curves, score_points)
from dashboard.components.use_allocation import use_allocation
from heterolora_core.analysis.compare import RunFilter, curves_frame, experiments_table, filter_runs, sort_runs
from heterolora_core.analysis.units import axis_title
from heterolora_core.analysis.text import markdown_text
from heterolora_core.records.record import ACTIVE_STATUSES, STATUSES
from heterolora_core.records.store import StoreError, StoredRun


LIVE_REFRESH_SECONDS = 2.0
SORT_OPTIONS = {"created_at": "created", "final_score": "final score", "best_score": "best score", "label": "run",
                "experiment": "experiment", "status": "status", "task": "task", "lr": "learning rate",
                "rank": "rank", "trainable_params": "trainable parameters", "wall_seconds": "wall time"}
#: The key columns first (visible without scrolling), then the fields the label abbreviates.
TABLE_COLUMNS = ["run", "status", "progress", "final", "best", "eta", "wall", "trainable_params", "experiment",
                 "created_at", "run_id", "metric", "task", "model", "mode", "proxy", "ranking", "rank", "budget", "lr",
                 "seed", "device", "error", "description"]
#: Text columns whose missing values show as blank cells (Streamlit writes a literal "None").
TEXT_COLUMNS = ["metric", "task", "model", "mode", "proxy", "ranking", "budget", "device", "error", "experiment"]

st.title("Runs")
rows = data.list_runs()
stop_without_runs(rows, "No runs yet. Launch one on the Launch page, or from a shell with "
                  "`python -m heterolora_core train ...`: runs written under the same data home appear here.")

any_active = any(row.status in ACTIVE_STATUSES for row in rows)
frame = data.runs_frame(rows)
chosen = run_filters(frame, "runs", expanded=len(rows) > 20)
group_col, sort_col, order_col = st.columns([1, 2, 1])
grouped = group_col.toggle("Group by experiment", key="runs_group",
                           help="one line per experiment (its sweep, or the folder its runs live in), then the runs "
                                "in experiment order")
sort_by = sort_col.selectbox("Sort by", list(SORT_OPTIONS), format_func=SORT_OPTIONS.get, key="runs_sort")
descending = order_col.toggle("Descending", value=True, key="runs_descending")


def no_loss_reason(rows_to_plot: list[StoredRun]) -> str:
    """Why a run has no training-loss curve: still starting, never started (it failed before its
    first step), or shorter than its logging interval."""
    if any(r.status in ACTIVE_STATUSES for r in rows_to_plot):
        return "No training loss logged yet."
    if all(not r.summary.step for r in rows_to_plot):
        return "No training loss: training never started (see the reason above)."
    return "No training loss logged (the run was shorter than its logging interval)."


def run_curves(rows_to_plot: list[StoredRun], key: str, labels: dict[str, str]) -> None:
    """Loss and evaluation-metric curves of the given runs, side by side."""
    series = {labels.get(r.run_id, r.run_id): (data.metrics(r), r.summary.metric) for r in rows_to_plot}
    loss_col, metric_col = st.columns(2)
    loss = curves_frame(series, "loss")
    metric_name = next((m for _, m in series.values() if m), "metric")
    metric = score_curves(curves_frame(series, "metric"), metric_name)
    with loss_col:
        if loss.empty:
            st.caption(no_loss_reason(rows_to_plot))
        else:
            st.plotly_chart(charts.curves_figure(loss, "training loss"), key=f"{key}-loss", config=charts.png_config("loss"))
    with metric_col:
        if metric.empty:
            st.caption(f"No evaluation ({markdown_text(metric_name)}) yet.")
        else:
            st.plotly_chart(charts.curves_figure(metric, axis_title(metric_name)), key=f"{key}-metric",
                            config=charts.png_config(metric_name))


def experiments_overview(table) -> None:
    overview = experiments_table(table)
    st.dataframe(
        overview.assign(best_final=score_points(overview["best_final"], overview["metric"]),
                        metric=overview["metric"].astype("object").where(overview["metric"].notna(), "")),
        hide_index=True, key="experiments_table",
        column_config={
            "best_final": st.column_config.NumberColumn("best final score", format="%.2f", help=SCORE_HELP),
            "active": "queued / running", "failed": "failed / cancelled",
            "newest": st.column_config.DatetimeColumn("newest run", format="YYYY-MM-DD HH:mm:ss"),
        },
    )


@st.fragment(run_every=LIVE_REFRESH_SECONDS if any_active else None)
def live_table(chosen: RunFilter, sort_by: str, descending: bool, grouped: bool) -> None:
    """The run table and the running runs' curves; polls while any run is queued or running (and
    replaces a dead worker while it polls)."""
    if any_active:
        data.start_worker()
    current = data.list_runs()
    by_id = data.by_id(current)
    table = data.runs_frame(current)
    shown = sort_runs(filter_runs(table, chosen), sort_by, descending, grouped)
    counts = shown["status"].value_counts()
    names = data.run_labels([by_id[rid] for rid in shown["run_id"] if rid in by_id])
    st.caption((f"{len(shown):,} of {plural(len(table), 'run')} · " if chosen.active else f"{plural(len(table), 'run')} · ")
               + " · ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES if counts.get(s, 0))
               + (" — updating live" if any_active else ""))
    if shown.empty:
        st.info("No run matches these filters.")
    if grouped and not shown.empty:
        experiments_overview(shown)
    st.dataframe(
        shown.assign(eta=shown["eta_seconds"].map(format_duration), wall=shown["wall_seconds"].map(format_duration),
                     run=shown["run_id"].map(lambda rid: names[rid].short if rid in names else rid),
                     description=shown["label"], final=score_points(shown["final_score"], shown["metric"]),
                     best=score_points(shown["best_score"], shown["metric"]), lr=shown["lr"].map(format_lr),
                     **{c: shown[c].astype("object").where(shown[c].notna(), "") for c in TEXT_COLUMNS}
                     )[TABLE_COLUMNS],
        hide_index=True,
        key="runs_table",
        column_config={
            "run": st.column_config.TextColumn("run", width="large", pinned=True,
                                               help="the fields in which the runs shown differ; the full description "
                                                    "is the last column"),
            "description": st.column_config.TextColumn("full description", width="large"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "eta": "ETA",
            "final": st.column_config.NumberColumn("final", format="%.2f", help=f"last evaluation: {SCORE_HELP}"),
            "best": st.column_config.NumberColumn("best", format="%.2f", help=f"best evaluation: {SCORE_HELP}"),
            "trainable_params": st.column_config.NumberColumn("trainable params", format="localized"),
            "wall": "wall time",
            "lr": "learning rate",
            "created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm:ss"),
            "run_id": st.column_config.TextColumn("id / folder", width="medium"),
        },
    )
    running = [r for r in current if r.status == "running"]
    if running:
        st.subheader("Live curves")
        run_curves(running, "live", data.labels_for(current))
    still_active = any(r.status in ACTIVE_STATUSES for r in current)
    if still_active != any_active:  # a run started or ended: rerun the page so polling and actions follow
        st.rerun()


live_table(chosen, sort_by, descending, grouped)

st.divider()
st.subheader("Selected run")
row_by_id = data.by_id(rows)
# the filtered runs, in the table's order (every run when nothing matches)
choices = sort_runs(filter_runs(frame, chosen), sort_by, descending, grouped)["run_id"].tolist() or list(row_by_id)
if st.session_state.get("selected_run") not in choices:  # set, not dropped: the browser shows the new choice
    st.session_state["selected_run"] = next((rid for rid in choices if row_by_id[rid].status == "running"), choices[0])
plain = dict(zip(frame["run_id"], frame["label"]))
choice_names = data.run_labels([row_by_id[rid] for rid in choices])
run_id = st.selectbox("Run", choices, key="selected_run",
                      format_func=lambda rid: f"{choice_names[rid].short} — {rid}" if rid in choice_names else rid)
row = row_by_id[run_id]
status = row.status
store = data.store()
st.caption(f"Status: **{markdown_text(status)}** · {markdown_text(plain.get(run_id, run_id))}")
if row.problem:
    st.warning(f"This record is damaged: {markdown_text(row.problem)}", icon=":material/warning:")

cancel_col, rerun_col, delete_col, _ = st.columns([1, 1, 1, 3])
if cancel_col.button("Cancel", disabled=status not in ACTIVE_STATUSES, icon=":material/stop:", key="cancel"):
    store.cancel(run_id)
    st.rerun()
if rerun_col.button("Rerun", icon=":material/replay:", key="rerun", disabled=row.config is None,
                    help="queue a new run with the same configuration"):
    new = store.rerun(run_id)
    data.start_worker()
    st.toast(f"Queued {markdown_text(new.run_id)}")
    st.rerun()
if delete_col.button("Delete…", icon=":material/delete:", key="delete", disabled=row.is_link,
                     help="a run folder that is a symbolic link is never deleted" if row.is_link else None):
    st.session_state["confirm_delete"] = run_id
if st.session_state.get("confirm_delete") == run_id:
    st.warning(f"Delete run {markdown_text(run_id)} and its folder {markdown_text(row.path)}? This cannot be undone."
               + (" The run is active and will be cancelled first." if status in ACTIVE_STATUSES else ""))
    yes_col, no_col, _ = st.columns([1, 1, 4])
    if yes_col.button("Yes, delete", type="primary", key="confirm_delete_yes"):
        try:
            store.delete(run_id)
        except StoreError as exc:
            st.error(markdown_text(exc))
        st.session_state.pop("confirm_delete", None)
        st.rerun()
    if no_col.button("Keep it", key="confirm_delete_no"):
        st.session_state.pop("confirm_delete", None)
        st.rerun()

if row.summary.error and status in ("failed", "cancelled"):
    st.error(f"{status}: {markdown_text(row.summary.error)}")
if status != "running":
    run_curves([row], "selected", {run_id: choice_names[run_id].short if run_id in choice_names else run_id})
with st.expander("Configuration and summary"):
    left, right = st.columns(2)
    left.json(row.config.to_dict() if row.config else {}, expanded=False)
    right.json(row.summary.to_dict(), expanded=False)
    if row.config is not None:
        st.code(command_line(row.config, f"{row.path}_rerun"), language="bash")
use_allocation(row, "runs_use")
