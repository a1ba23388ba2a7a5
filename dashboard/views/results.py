"""Results page: the finished runs grouped by configuration (every field but the seed), each group's
score over seeds, and every group against a chosen reference, paired by seed: the grid's tables
(docs/results.md) for any set of runs. The statistics are the engine's
(:mod:`heterolora_core.analysis.results`); this page lays them out."""
import streamlit as st

from dashboard import data
from dashboard.components import charts
from dashboard.components.empty import stop_without_runs
from dashboard.components.filters import run_filters
from dashboard.components.study import study_section
from dashboard.components.formatting import (field_label, format_difference, format_score, format_score_stats, plural,
                                             readable_fields, results_csv_frame, score_points)
from heterolora_core.analysis import results
from heterolora_core.analysis.compare import filter_runs
from heterolora_core.analysis.evidence import SHORT_RUN
from heterolora_core.analysis.labels import short_labels
from heterolora_core.analysis.text import markdown_text
from heterolora_core.analysis import units
from heterolora_core.analysis.units import format_interval

st.title("Results")
st.caption("Finished runs grouped by configuration (everything but the seed). Scores are GLUE points (×100): the "
           "final epoch's score as mean ± std over seeds with its 95% t-interval, the best epoch's mean beside it, "
           "and each configuration minus the reference, paired by seed, with its 95% interval: **noise** where "
           "the interval holds 0.")
rows = data.list_runs()
stop_without_runs(rows, "No runs yet. A sweep over seeds (Launch page, or `python -m heterolora_core sweep`) gives a "
                  "results table.", "Launch runs")

study_section(rows)
frame = data.runs_frame(rows)
chosen = run_filters(frame, "results", expanded=True)
kept = [r for r in rows if r.run_id in set(filter_runs(frame, chosen)["run_id"])]
short_col, pool_col, scope_col = st.columns(3)
include_short = short_col.toggle(
    "Include short runs", value=False, key="results_short",
    help="Short runs stop before one pass over their training data or evaluate on part of the dev split (the "
         "Launch page's default short run): their scores are no results.")
pool = pool_col.toggle(
    "Pool devices and torch versions", value=False, key="results_pool",
    help="By default a configuration measured on a GPU and on a CPU (or under two torch versions) is two "
         "configurations: the same seed gives a different score on each, so they are different evidence.")
comparable_only = scope_col.toggle(
    "Only what pairs with the reference", value=True, key="results_comparable",
    help="Hide configurations of another task or measured on another kind of device: they share no seed "
         "with the reference that could be paired.")
groups = results.group_by_config(kept, split_evidence=not pool, include_short=include_short)
left_out = results.short_runs_left_out(kept) if not include_short else 0
if left_out:
    st.caption(f"{plural(left_out, 'short run')} left out (their scores are no results; *Include short runs* "
               "shows them).")
if not groups:
    st.info("No finished run matches these filters: a results table needs runs that are done.")
    st.stop()
mixed = [g for g in groups if g.mixed]
if mixed:
    st.warning(f"**{plural(len(mixed), 'configuration')} pool runs measured on different devices or torch "
               "versions.** A seed measured on both counts once, with the mean of two different measurements, "
               "and the intervals mix two sources of variation. Turn *Pool devices and torch versions* off to "
               "keep them apart.", icon=":material/warning:")

configs = {g.key: g.config for g in groups}
extras = results.evidence_tokens(groups)
marks = {g.key: (SHORT_RUN,) for g in groups if results.is_short(g.runs[0])}
all_labels = short_labels(configs, extras, include_seed=False, marks=marks)
keys = list(all_labels)
default_reference = results.default_reference(groups) or keys[0]
if st.session_state.get("results_reference") not in keys:
    st.session_state["results_reference"] = default_reference
reference = st.selectbox("Reference configuration", keys, key="results_reference",
                         format_func=lambda k: all_labels[k].short,
                         help="every other configuration of the same task and kind of device is compared with this "
                              "one, seed by seed; it opens on plain LoRA")
st.caption(f"Reference: {markdown_text(all_labels[reference].full)}")
table = results.results_table(groups, reference)
if comparable_only:
    table = results.comparable(table).reset_index(drop=True)
shown_groups = [g for g in groups if g.key in set(table["key"])]
labels = {k: label.short for k, label in short_labels(
    {g.key: g.config for g in shown_groups}, {g.key: extras[g.key] for g in shown_groups},
    include_seed=False, marks=marks).items()}
full_labels = {k: all_labels[k].full for k in labels}
repeats = table[table["runs"] > table["n_seeds"]]
if not repeats.empty and not mixed:
    st.caption(f"{plural(len(repeats), 'configuration')} hold more than one run of a seed (copies of a record): "
               "each seed counts once, with the mean of its runs.")

fields = [c for c in table.columns if c not in results.RESULT_COLUMNS]  # the config fields that differ
shown = readable_fields(table.assign(
    configuration=table["key"].map(labels),
    seeds=table["seeds"].map(lambda seeds: ", ".join(map(str, seeds))),
    final=[format_score_stats(m, s, n, with_n=False, metric=metric)
           for m, s, n, metric in zip(table["final_mean"], table["final_std"], table["n_seeds"], table["metric"])],
    ci=[format_interval((lo, hi), missing="–", metric=metric)
        for lo, hi, metric in zip(table["final_low"], table["final_high"], table["metric"])],
    best=score_points(table["best_mean"], table["metric"]),
    delta=[format_difference(m, lo, hi, metric=metric)
           for m, lo, hi, metric in zip(table["delta_mean"], table["delta_low"], table["delta_high"], table["metric"])],
), fields, modes=table["key"].map(lambda k: configs[k].mode))
shown = shown.assign(description=table["key"].map(full_labels))
st.dataframe(
    shown[["configuration", "n_seeds", "final", "ci", "delta", "verdict", "best", "runs", "task",
           *[field_label(f) for f in fields], "seeds", "trainable_params", "description"]],
    hide_index=True, key="results_table",
    column_config={
        "configuration": st.column_config.TextColumn(
            "configuration", width="large", pinned=True,
            help="the fields in which the configurations shown differ; the last column spells out every field"),
        "description": st.column_config.TextColumn("full description", width="large"),
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
    forest = compared.assign(configuration=compared["key"].map(labels),
                             delta=score_points(compared["delta_mean"], compared["metric"]),
                             low=score_points(compared["delta_low"], compared["metric"]),
                             high=score_points(compared["delta_high"], compared["metric"]))
    reference_metric = table.set_index("key").loc[reference, "metric"]
    st.plotly_chart(charts.forest_figure(forest[["configuration", "delta", "low", "high", "verdict"]], labels[reference],
                                         hover=forest["key"].map(full_labels).tolist(),
                                         unit=units.unit(reference_metric)
                                         + ("" if units.in_points(reference_metric) else ", lower is better")),
                    key="forest", config=charts.png_config("results-forest"))

st.subheader("One configuration against the reference")
focus_keys = [k for k in table["key"] if k != reference] or [reference]
if st.session_state.get("results_focus") not in focus_keys:
    st.session_state["results_focus"] = focus_keys[0]
focus = st.selectbox("Configuration", focus_keys, key="results_focus", format_func=labels.get)
row = table.set_index("key").loc[focus]
ref_row = table.set_index("key").loc[reference]
score_col, ref_col, delta_col = st.columns(3)
metric = row["metric"]
score_col.metric("Final-epoch score", format_score_stats(row["final_mean"], row["final_std"], int(row["n_seeds"]),
                                                         metric=metric),
                 help=f"95% interval {format_interval((row['final_low'], row['final_high']), missing='–', metric=metric)}; "
                      f"best epoch {format_score(row['best_mean'], metric=metric)}")
ref_col.metric("Reference", format_score_stats(ref_row["final_mean"], ref_row["final_std"], int(ref_row["n_seeds"]),
                                               metric=ref_row["metric"]),
               help=markdown_text(full_labels[reference]))
delta_col.metric("Δ vs reference (95% interval)",
                 format_difference(row["delta_mean"], row["delta_low"], row["delta_high"], metric=metric),
                 help=f"paired over {int(row['delta_seeds'])} seed(s)")
st.caption(f"Verdict: **{row['verdict'] or '–'}**")
