"""Allocation page: where a run put its parameters (the paper's Figures 4 and 5, interactive)."""
import streamlit as st

from dashboard import data
from dashboard.components import charts
from dashboard.components.empty import stop_without_runs
from dashboard.components.formatting import frequency_csv_frame, rank_csv_frame
from dashboard.components.use_allocation import use_allocation
from heterolora_core.analysis import allocation as alloc
from heterolora_core.analysis.text import markdown_text
from heterolora_core.methods import registry


st.title("Allocation")
rows = data.list_runs()
stop_without_runs(rows, "No runs yet: a run's enable frequencies show here once it has made its first selection.")

labels = data.run_labels(rows)
row_by_id = data.by_id(rows)
# Open on the newest run whose method allocates (a search or a rank allocation) and that has recorded
# a selection; uniform LoRA, every module on, is the least interesting picture there is.
default = alloc.default_run_index([(r.config.mode if r.config else None, data.has_reallocations(r)) for r in rows])
run_id = st.selectbox("Run", list(row_by_id), index=default, key="allocation_run",
                      format_func=lambda rid: f"{labels[rid].short} — {rid}")
row = row_by_id[run_id]
config, summary = row.config, row.summary
method = registry.find(config.mode) if config else None
view = data.allocation_view(row)

facts = ([f"task {markdown_text(config.task)}", f"model {markdown_text(config.model)}"] if config
         else ["unreadable config"]) + [
    f"{view.n_layers} layers", f"{view.n_reallocations} reallocation{'s' if view.n_reallocations != 1 else ''}",
    f"status {summary.status}"]
if summary.trainable_params:
    facts.append(f"{summary.trainable_params:,} trainable parameters")
st.caption(" · ".join(facts))
use_allocation(row, "allocation_use")

if view.every > 1:
    st.caption(f"A long record: one reallocation in {view.every} of its {view.recorded:,} is drawn (and counted below).")
if view.n_reallocations == 0:
    st.info("This run has recorded no selection yet." + (" The first one appears when training starts."
                                                         if summary.active else ""))
    st.stop()
if method is not None and method.searches and not method.reallocates:
    st.caption("Static run: one selection before training, so every module reads 0 (off) or 1 (on).")
elif method is not None and not method.searches and not method.reallocates:
    st.caption("Uniform run: every candidate module is on for the whole run.")

ranks = data.rank_view(row)
if ranks is not None:  # a method that gives each module its own rank: the ranks are the allocation
    rank_frame, rank_timeline = ranks
    st.subheader("Rank per layer (final allocation)")
    st.caption("Each module's rank after the last reallocation, on one colour scale from 0 (off) to the largest rank.")
    st.plotly_chart(charts.allocation_heatmaps(alloc.rank_grid(rank_frame, "lora", view.n_layers),
                                               alloc.rank_grid(rank_frame, "shortcut", view.n_layers),
                                               coloraxis=charts.rank_coloraxis(int(rank_frame["rank"].max())),
                                               hover=charts.RANK_HOVER),
                    key="rank_heatmaps", config=charts.png_config(f"{run_id}-ranks"))
else:
    st.subheader("Enable frequency per layer")
    st.plotly_chart(charts.allocation_heatmaps(view.lora_grid, view.shortcut_grid), key="heatmaps",
                    config=charts.png_config(f"{run_id}-enable-frequency"))
st.download_button("Download frequencies (CSV)", frequency_csv_frame(view.frequency).to_csv(index=False),
                   file_name=f"{run_id}-enable-frequency.csv", mime="text/csv", icon=":material/download:", key="csv")
if ranks is not None:
    st.download_button("Download ranks (CSV)", rank_csv_frame(rank_timeline).to_csv(index=False),
                       file_name=f"{run_id}-ranks.csv", mime="text/csv", icon=":material/download:", key="rank_csv")

st.subheader("Timeline")
if ranks is not None:
    st.caption("Each column is one reallocation; the colour is the module's rank there (0 = off). Hover for the step.")
    st.plotly_chart(charts.rank_timeline_figure(rank_timeline), key="timeline",
                    config=charts.png_config(f"{run_id}-rank-timeline"))
else:
    st.caption("Each column is one reallocation; a filled cell is an enabled module. Hover for the step"
               + (" and the proxy score." if method is None or method.searches else "."))
    st.plotly_chart(charts.timeline_figure(view.timeline, scored=method is None or method.searches), key="timeline",
                    config=charts.png_config(f"{run_id}-timeline"))
if method is not None and method.searches and method.reallocates and view.n_reallocations >= 2:
    churn, drift = view.churn, view.drift
    changes, swapped, ever, drift_cell = st.columns(4)
    changes.metric("Set changes", f"{churn['changes']} of {churn['reallocations'] - 1}",
                   help="reallocations whose enabled set differs from the previous one")
    swapped.metric("Swapped per reallocation", f"{churn['mean_swapped']:.0%}",
                   help="mean share of the enabled set switched off at a reallocation")
    ever.metric("Modules ever on", f"{churn['ever_enabled']} of {len(view.frequency)}",
                help=f"{churn['set_size']} on at a time")
    drift_cell.metric("Score drift on/off", "-" if drift["on_over_off"] is None else f"{drift['on_over_off']:.2f}",
                      help="median score change of the modules trained since the last reallocation over that of "
                           "the resting ones: below 1, the search swaps out what it has just trained")

if method is not None and not method.searches:
    st.stop()  # no proxy: nothing was scored, so there is no score distribution to draw
st.subheader("Score distribution per module kind")
log_scale = st.toggle("Log scale", value=False, key="score_log",
                      help="raw LoRA and shortcut scores live on different scales")
st.plotly_chart(charts.score_distribution_figure(view.score_summary, log_scale), key="scores",
                config=charts.png_config(f"{run_id}-scores"))
