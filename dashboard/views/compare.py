"""Compare page: the configurations of an experiment side by side, seeds folded in.

Runs that differ only by seed (and ran on the same kind of device) are one configuration: its
enable frequencies or rank map are the mean over its seeds, its curves a mean with the band of its
runs, and the agreement matrices compare configurations. Names are the fields that differ among the
configurations shown (:func:`heterolora_core.analysis.labels.short_labels`), the full description
on hover.
"""
import streamlit as st

from dashboard import data
from dashboard.components import charts
from dashboard.components.empty import stop_without_runs
from dashboard.components.formatting import (field_label, format_duration, format_score_stats, plural,
                                             readable_fields, score_curves)
from heterolora_core.analysis import allocation as alloc
from heterolora_core.analysis import compare
from heterolora_core.analysis.evidence import SHORT_RUN
from heterolora_core.analysis.labels import comparison_subject, short_labels
from heterolora_core.analysis.results import is_short, run_evidence
from heterolora_core.methods import registry
from heterolora_core.analysis.text import markdown_text
from heterolora_core.analysis.units import axis_title

ALL_RUNS = "(all runs)"
PER_ROW = 3

st.title("Compare")
rows = data.list_runs()
stop_without_runs(rows, "No runs yet. A proxy sweep (Launch page) gives a ready-made comparison.", "Launch a sweep")
row_by_id = data.by_id(rows)
frame = data.runs_frame(rows)
experiments = compare.experiments_table(frame)  # newest first: the user's own runs open before older records
sizes = dict(zip(experiments["experiment"], experiments["runs"]))
options = experiments["experiment"].tolist() + [ALL_RUNS]
experiment = st.selectbox("Experiment", options, key="compare_experiment",
                          format_func=lambda e: f"{e} ({plural(int(sizes[e]), 'run')})" if e in sizes else e,
                          help="a sweep, or the folder its runs live in; the newest first")
in_experiment = frame if experiment == ALL_RUNS else frame[frame["experiment"] == experiment]
run_ids = [rid for rid in in_experiment["run_id"] if rid in row_by_id]
run_names = data.run_labels([row_by_id[rid] for rid in run_ids])
if st.session_state.get("compare_for") != experiment or not set(st.session_state.get("compare_runs", [])) <= set(run_ids):
    st.session_state["compare_for"] = experiment
    st.session_state["compare_runs"] = run_ids[:60]
selected = st.multiselect("Runs", run_ids, key="compare_runs", format_func=lambda rid: run_names[rid].short)
if not selected:
    st.info("Pick at least one run.")
    st.stop()
chosen = [row_by_id[rid] for rid in selected]

groups = compare.configuration_groups(chosen)
configs = {key: members[0].config for key, members in groups.items()}
names = short_labels(configs, extras={k: (run_evidence(m[0]).device,) for k, m in groups.items()}, include_seed=False,
                     marks={k: (SHORT_RUN,) for k, m in groups.items() if is_short(m[0])})
short = {k: n.short for k, n in names.items()}
full = {k: n.full for k, n in names.items()}
subject = comparison_subject(list(configs.values()))
st.caption(f"{plural(len(chosen), 'run')} in {plural(len(groups), 'configuration')} (the runs of a configuration "
           f"differ only by seed); they differ in their {subject}.")

st.subheader("Scores and costs")
table, _ = compare.compare_table(chosen)
differing = [c for c in table.columns if c not in compare.COMPARE_COLUMNS]
shown = readable_fields(table.assign(
    config=table["key"].map(short),
    description=table["key"].map(full),
    best_score=[format_score_stats(m, s, n, metric=metric)
                for m, s, n, metric in zip(table["best_mean"], table["best_std"], table["n_seeds"], table["metric"])],
    final_score=[format_score_stats(m, s, n, metric=metric)
                 for m, s, n, metric in zip(table["final_mean"], table["final_std"], table["n_seeds"], table["metric"])],
    seeds=table["seeds"].map(lambda seeds: ", ".join(map(str, seeds))),
    search=table["search_seconds"].map(format_duration),
    wall=table["wall_seconds"].map(format_duration),
), differing, modes=table["key"].map(lambda k: configs[k].mode))
st.dataframe(
    shown[["config", "final_score", "best_score", "metric", "n_seeds", "trainable_params", "search", "wall", "runs", "seeds",
           *[field_label(f) for f in differing], "description"]],
    hide_index=True, key="compare_table",
    column_config={
        "config": st.column_config.TextColumn("configuration", pinned=True,
                                              help="the fields in which these configurations differ"),
        "best_score": "best score (mean ± std over seeds)",
        "final_score": "final score (mean ± std over seeds)",
        "n_seeds": st.column_config.NumberColumn("n seeds", help="seeds with a score (a seed run twice counts once)"),
        "trainable_params": st.column_config.NumberColumn("trainable params", format="localized"),
        "search": "search time", "wall": "wall time",
        "description": st.column_config.TextColumn("full description", width="large"),
    },
)


def searching(key: str) -> bool:
    method = registry.find(configs[key].mode)
    return method is not None and method.searches


def heatmap_grid(figures: dict, key: str) -> None:
    """One chart per configuration, :data:`PER_ROW` to a row, each titled with its short label."""
    items = list(figures.items())
    for start in range(0, len(items), PER_ROW):
        columns = st.columns(PER_ROW)
        for i, (column, (k, fig)) in enumerate(zip(columns, items[start:start + PER_ROW])):
            column.plotly_chart(fig, key=f"{key}-{start + i}", config=charts.png_config(f"{key}-{short[k]}"))


with_selections = {k: [r for r in members if data.has_reallocations(r)] for k, members in groups.items()}
rank_maps = {k: [rv for r in rs if (rv := data.rank_view(r)) is not None] for k, rs in with_selections.items()}
rank_keys = [k for k, views in rank_maps.items() if views]
frequency_keys = [k for k, rs in with_selections.items() if rs and k not in rank_keys and searching(k)]
uniform = [short[k] for k, rs in with_selections.items() if rs and k not in rank_keys and not searching(k)]
if frequency_keys:
    st.subheader("Enable frequency per layer (mean over seeds)")
    views = {k: [data.allocation_view(r) for r in with_selections[k]] for k in frequency_keys}
    heatmap_grid({k: charts.allocation_heatmaps(
        compare.mean_grid([v.lora_grid for v in vs]), compare.mean_grid([v.shortcut_grid for v in vs]),
        title=charts.wrap(short[k], 40)) for k, vs in views.items()}, "frequency")
if rank_keys:
    st.subheader("Rank per layer (final allocation, mean over seeds)")
    n_layers = {k: max(data.allocation_view(r).n_layers for r in with_selections[k]) for k in rank_keys}
    grids = {k: (compare.mean_grid([alloc.rank_grid(f, "lora", n_layers[k]) for f, _ in rank_maps[k]]),
                 compare.mean_grid([alloc.rank_grid(f, "shortcut", n_layers[k]) for f, _ in rank_maps[k]]))
             for k in rank_keys}
    top = max(float(g.max().max()) for pair in grids.values() for g in pair if g.size)
    heatmap_grid({k: charts.allocation_heatmaps(lora, shortcut, title=charts.wrap(short[k], 40),
                                                coloraxis=charts.rank_coloraxis(top), hover=charts.RANK_HOVER)
                  for k, (lora, shortcut) in grids.items()}, "ranks")
if uniform:
    st.caption(f"Uniform LoRA ({markdown_text(', '.join(uniform))}): every candidate on at one rank for the whole run, so there is "
               "no allocation to draw.")

st.subheader("Curves (mean over seeds; the band spans the seeds)")
series = {r.run_id: (data.metrics(r), r.summary.metric) for r in chosen}
group_of = {r.run_id: short[k] for k, members in groups.items() for r in members}
metric_name = next((m for _, m in series.values() if m), "metric")
metric_bands = compare.curve_bands(score_curves(compare.curves_frame(series, "metric"), metric_name), group_of)
loss_bands = compare.curve_bands(compare.curves_frame(series, "loss"), group_of)
metric_col, loss_col = st.columns(2)
if not metric_bands.empty:
    metric_col.plotly_chart(charts.band_figure(metric_bands, axis_title(metric_name)), key="compare_metric",
                            config=charts.png_config("compare-metric"))
if not loss_bands.empty:
    loss_col.plotly_chart(charts.band_figure(loss_bands, "training loss"), key="compare_loss",
                          config=charts.png_config("compare-loss"))

scored = [k for k in configs if searching(k) and with_selections[k]]
if len(scored) >= 2:
    st.subheader(f"Do the {subject} agree?")
    rule = st.radio("Enabled set", ["final", "majority"], horizontal=True, key="compare_set_rule",
                    format_func={"final": "last selection", "majority": "enabled in ≥ half of the reallocations"}.get)
    reallocs = {k: [data.reallocations(r) for r in with_selections[k]] for k in scored}
    sets = {short[k]: compare.consensus_set([alloc.enabled_set(rs, rule) for rs in reallocs[k]]) for k in scored}
    scores = {short[k]: compare.mean_score_series([alloc.mean_scores(rs) for rs in reallocs[k]]) for k in scored}
    ranked = {name: s for name, s in scores.items() if s.dropna().nunique() >= 2}
    jaccard_col, spearman_col = st.columns(2)
    with jaccard_col:
        st.markdown("**Overlap of the enabled sets** (Jaccard; a configuration's set: the modules on in at least "
                    "half of its seeds)")
        st.plotly_chart(charts.matrix_figure(compare.jaccard_matrix(sets), 0, 1, "Blues", "Jaccard"), key="jaccard",
                        config=charts.png_config("compare-jaccard"))
    with spearman_col:
        st.markdown("**Rank correlation of the scores** (Spearman, mean score per module over the seeds)")
        if len(ranked) >= 2:
            st.plotly_chart(charts.matrix_figure(compare.spearman_matrix(ranked), -1, 1, "RdBu", "Spearman"),
                            key="spearman", config=charts.png_config("compare-spearman"))
        flat = [name for name in scores if name not in ranked]
        if flat:
            st.caption(f"Left out: {markdown_text(', '.join(flat))}: every module scores the same (a constant proxy), so its "
                       "scores rank nothing.")
else:
    st.caption("Pick runs of two or more configurations that search (a proxy or a rank allocation) to see how their "
               "selections overlap and how their scores correlate. Uniform LoRA selects nothing.")
