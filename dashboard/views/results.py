"""Results page: the finished runs grouped by configuration (every field but the seed), each group's
score over seeds, and every group against a chosen reference, paired by seed: the grid's tables
(docs/results.md) for any set of runs. The statistics are the engine's
(:mod:`heterolora_core.analysis.results`); this page lays them out."""
import streamlit as st

from dashboard import data
from dashboard.components import charts
from dashboard.components.empty import stop_without_runs
from dashboard.components.filters import run_filters
from dashboard.components.formatting import (field_label, format_difference, format_score, format_score_stats,
                                             group_labels, readable_fields, results_csv_frame, score_points)
from heterolora_core.analysis import results
from heterolora_core.analysis.compare import filter_runs
from heterolora_core.analysis.text import markdown_text
from heterolora_core.analysis.units import format_interval

st.title("Results")
st.caption("Finished runs grouped by configuration (everything but the seed). Scores are GLUE points (×100): the "
           "final epoch's score as mean ± std over seeds with its 95% t-interval, the best epoch's mean beside it, "
           "and each configuration minus the reference, paired by seed, with its 95% interval: **noise** where "
           "the interval holds 0.")
rows = data.list_runs()
stop_without_runs(rows, "No runs yet. A sweep over seeds (Launch page, or `python -m heterolora_core sweep`) gives a "
                  "results table.", "Launch runs")

frame = data.runs_frame(rows)
chosen = run_filters(frame, "results", expanded=True)
kept = set(filter_runs(frame, chosen)["run_id"])
groups = results.group_by_config([r for r in rows if r.run_id in kept])
if not groups:
    st.info("No finished run matches these filters: a results table needs runs that are done.")
    st.stop()

configs = {g.key: g.config for g in groups}
labels = group_labels(configs)
keys = list(labels)
default_reference = results.default_reference(groups) or keys[0]
if st.session_state.get("results_reference") not in keys:
    st.session_state["results_reference"] = default_reference
reference = st.selectbox("Reference configuration", keys, key="results_reference", format_func=labels.get,
                         help="every other configuration of the same task is compared with this one, seed by seed")
table = results.results_table(groups, reference)
repeats = table[table["runs"] > table["n_seeds"]]
if not repeats.empty:
    st.caption(f"{len(repeats)} configuration(s) hold more than one run of a seed (copies, or reruns on another "
               "device): each seed counts once, with the mean of its runs.")

fields = [c for c in table.columns if c not in results.RESULT_COLUMNS]  # the config fields that differ
shown = readable_fields(table.assign(
    configuration=table["key"].map(labels),
    seeds=table["seeds"].map(lambda seeds: ", ".join(map(str, seeds))),
    final=[format_score_stats(m, s, n, with_n=False) for m, s, n in zip(table["final_mean"], table["final_std"], table["n_seeds"])],
    ci=[format_interval((lo, hi), missing="–") for lo, hi in zip(table["final_low"], table["final_high"])],
    best=score_points(table["best_mean"]),
    delta=[format_difference(m, lo, hi) for m, lo, hi in zip(table["delta_mean"], table["delta_low"], table["delta_high"])],
), fields, modes=table["key"].map(lambda k: configs[k].mode))
st.dataframe(
    shown[["configuration", "runs", "n_seeds", "final", "ci", "best", "delta", "verdict", "task",
           *[field_label(f) for f in fields], "seeds", "trainable_params"]],
    hide_index=True, key="results_table",
    column_config={
        "configuration": st.column_config.TextColumn("configuration", width="large", pinned=True),
        "n_seeds": "n seeds",
        "final": "final epoch (mean ± std)",
        "ci": "95% interval",
        "best": st.column_config.NumberColumn("best epoch (mean)", format="%.2f"),
        "delta": "Δ vs reference (95% interval)",
        "trainable_params": st.column_config.NumberColumn("trainable params", format="localized"),
    },
)
st.download_button("Download results (CSV)", results_csv_frame(table, labels).to_csv(index=False),
                   file_name="results.csv", mime="text/csv", icon=":material/download:", key="results_csv")

compared = table[table["delta_mean"].notna()]
if compared.empty:
    st.info("No other configuration of the reference's task shares a seed with it: nothing to pair.")
else:
    forest = compared.assign(configuration=compared["key"].map(labels), delta=score_points(compared["delta_mean"]),
                             low=score_points(compared["delta_low"]), high=score_points(compared["delta_high"]))
    st.plotly_chart(charts.forest_figure(forest[["configuration", "delta", "low", "high", "verdict"]], labels[reference]),
                    key="forest", config=charts.png_config("results-forest"))

st.subheader("One configuration against the reference")
focus_keys = [k for k in table["key"] if k != reference] or [reference]
if st.session_state.get("results_focus") not in focus_keys:
    st.session_state["results_focus"] = focus_keys[0]
focus = st.selectbox("Configuration", focus_keys, key="results_focus", format_func=labels.get)
row = table.set_index("key").loc[focus]
ref_row = table.set_index("key").loc[reference]
score_col, ref_col, delta_col = st.columns(3)
score_col.metric("Final-epoch score", format_score_stats(row["final_mean"], row["final_std"], int(row["n_seeds"])),
                 help=f"95% interval {format_interval((row['final_low'], row['final_high']), missing='–')}; "
                      f"best epoch {format_score(row['best_mean'])}")
ref_col.metric("Reference", format_score_stats(ref_row["final_mean"], ref_row["final_std"], int(ref_row["n_seeds"])),
               help=markdown_text(labels[reference]))
delta_col.metric("Δ vs reference (95% interval)",
                 format_difference(row["delta_mean"], row["delta_low"], row["delta_high"]),
                 help=f"paired over {int(row['delta_seeds'])} seed(s)")
st.caption(f"Verdict: **{row['verdict'] or '–'}**")
