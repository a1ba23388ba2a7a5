"""Compare page: several runs (a proxy sweep selects itself) side by side."""
import streamlit as st

from dashboard import data
from dashboard.components import charts
from dashboard.components.empty import stop_without_runs
from dashboard.components.formatting import (field_label, format_duration, format_score_stats, readable_fields,
                                             run_label, score_curves)
from heterolora_core.analysis import allocation as alloc
from heterolora_core.analysis import compare


st.title("Compare")
rows = data.list_runs()
stop_without_runs(rows, "No runs yet. A proxy sweep (Launch page) gives a ready-made comparison.", "Launch a sweep")

labels = data.labels_for(rows)
row_by_id = data.by_id(rows)
sweeps = data.store().sweeps()
sweep_runs = {s.sweep_id: [rid for rid in s.run_ids if rid in row_by_id] for s in sweeps}


def default_selection() -> list[str]:
    """The newest sweep's runs; without a sweep, the two newest runs."""
    for runs in sweep_runs.values():
        if runs:
            return runs
    return list(row_by_id)[:2]


def select_sweep() -> None:
    chosen = st.session_state.get("compare_sweep")
    if chosen in sweep_runs:
        st.session_state["compare_runs"] = sweep_runs[chosen]


if sweep_runs:
    st.selectbox("Sweep", list(sweep_runs), index=0, key="compare_sweep", on_change=select_sweep,
                 format_func=lambda sid: f"{sid} ({len(sweep_runs[sid])} runs)")
if "compare_runs" not in st.session_state or not set(st.session_state["compare_runs"]) <= set(row_by_id):
    st.session_state["compare_runs"] = default_selection()
selected = st.multiselect("Runs", list(row_by_id), key="compare_runs",
                          format_func=lambda rid: f"{labels[rid]} — {rid[-6:]}")
if not selected:
    st.info("Pick at least one run.")
    st.stop()
chosen = [row_by_id[rid] for rid in selected]

st.subheader("Scores and costs")
table, configs = compare.compare_table(chosen)
differing = [c for c in table.columns if c not in compare.COMPARE_COLUMNS]
shown = readable_fields(table.assign(
    config=table["key"].map(lambda k: run_label(configs[k], include_seed=False)),
    best_score=[format_score_stats(m, s, n) for m, s, n in zip(table["best_mean"], table["best_std"], table["n_seeds"])],
    final_score=[format_score_stats(m, s, n) for m, s, n in zip(table["final_mean"], table["final_std"], table["n_seeds"])],
    seeds=table["seeds"].map(lambda seeds: ", ".join(map(str, seeds))),
    search=table["search_seconds"].map(format_duration),
    wall=table["wall_seconds"].map(format_duration),
), differing, modes=table["key"].map(lambda k: configs[k].mode))
st.dataframe(
    shown[["config", *[field_label(f) for f in differing], "runs", "n_seeds", "seeds", "best_score", "final_score",
           "trainable_params", "search", "wall"]],
    hide_index=True,
    key="compare_table",
    column_config={
        "best_score": "best score (mean ± std over seeds)",
        "final_score": "final score (mean ± std over seeds)",
        "n_seeds": st.column_config.NumberColumn("n seeds", help="seeds with a score (a seed run twice counts once)"),
        "trainable_params": st.column_config.NumberColumn("trainable params", format="localized"),
        "search": "search time",
        "wall": "wall time",
    },
)

alloc_rows = {labels[r.run_id]: r for r in chosen if data.has_reallocations(r)}
views = {label: data.allocation_view(r) for label, r in alloc_rows.items()}
if views:
    st.subheader("Enable frequency per layer")
    st.plotly_chart(charts.compare_heatmaps({label: (v.lora_grid, v.shortcut_grid) for label, v in views.items()}),
                    key="compare_heatmaps", config=charts.png_config("compare-enable-frequency"))
rank_views = {label: ranks for label, r in alloc_rows.items() if (ranks := data.rank_view(r)) is not None}
if rank_views:
    st.subheader("Rank per layer (final allocation)")
    st.caption("Runs that give each module its own rank (AdaLoRA): one colour scale from 0 (off) to the largest rank.")
    grids = {label: (alloc.rank_grid(frame, "lora", views[label].n_layers),
                     alloc.rank_grid(frame, "shortcut", views[label].n_layers)) for label, (frame, _) in rank_views.items()}
    top = max(int(frame["rank"].max()) for frame, _ in rank_views.values())
    st.plotly_chart(charts.compare_heatmaps(grids, charts.rank_coloraxis(top), charts.RANK_HOVER),
                    key="compare_rank_maps", config=charts.png_config("compare-ranks"))

st.subheader("Curves")
series = {labels[r.run_id]: (data.metrics(r), r.summary.metric) for r in chosen}
metric_col, loss_col = st.columns(2)
metric_curves, loss_curves = score_curves(compare.curves_frame(series, "metric")), compare.curves_frame(series, "loss")
metric_name = next((m for _, m in series.values() if m), "metric")
if not metric_curves.empty:
    metric_col.plotly_chart(charts.curves_figure(metric_curves, f"{metric_name} (×100)"), key="compare_metric", config=charts.png_config("compare-metric"))
if not loss_curves.empty:
    loss_col.plotly_chart(charts.curves_figure(loss_curves, "training loss"), key="compare_loss", config=charts.png_config("compare-loss"))

if len(alloc_rows) >= 2:
    st.subheader("Do the proxies agree?")
    rule = st.radio("Enabled set", ["final", "majority"], horizontal=True, key="compare_set_rule",
                    format_func={"final": "last selection", "majority": "enabled in ≥ half of the reallocations"}.get)
    reallocs = {label: data.reallocations(r) for label, r in alloc_rows.items()}
    sets = {label: alloc.enabled_set(rs, rule) for label, rs in reallocs.items()}
    scores = {label: alloc.mean_scores(rs) for label, rs in reallocs.items()}
    jaccard_col, spearman_col = st.columns(2)
    with jaccard_col:
        st.markdown("**Overlap of the enabled sets** (Jaccard)")
        st.plotly_chart(charts.matrix_figure(compare.jaccard_matrix(sets), 0, 1, "Blues", "Jaccard"), key="jaccard",
                        config=charts.png_config("compare-jaccard"))
    with spearman_col:
        st.markdown("**Rank correlation of the scores** (Spearman, mean score per module)")
        st.plotly_chart(charts.matrix_figure(compare.spearman_matrix(scores), -1, 1, "RdBu", "Spearman"), key="spearman",
                        config=charts.png_config("compare-spearman"))
else:
    st.caption("Pick two or more runs with recorded selections to see the overlap of their enabled sets "
               "and the rank correlation of their proxy scores.")
