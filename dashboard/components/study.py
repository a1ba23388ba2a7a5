"""The Results page's "Does allocation pay here?" section: an allocation study's verdict
(:mod:`heterolora_core.analysis.study`) and where its allocation put the ranks."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.components import charts
from dashboard.components.formatting import format_difference, format_lr, format_score_stats, plural
from heterolora_core.analysis.study import arm_runs, rank_placement, study_verdict
from heterolora_core.analysis.text import markdown_text
from heterolora_core.records.store import StoredRun
from heterolora_core.study import ARM_LABELS, STUDY_PREFIX

VERDICT_BOX = {"better": st.success, "worse": st.error, "noise": st.info}


def study_ids(rows: list[StoredRun]) -> list[str]:
    """The studies among ``rows``, newest first."""
    newest: dict[str, float] = {}
    for r in rows:
        if r.sweep_id and r.sweep_id.startswith(STUDY_PREFIX):
            newest[r.sweep_id] = max(newest.get(r.sweep_id, 0.0), r.created_at)
    return sorted(newest, key=newest.get, reverse=True)


def study_section(rows: list[StoredRun]) -> None:
    """Draw the verdict of a chosen study (nothing when the store holds none)."""
    ids = study_ids(rows)
    if not ids:
        return
    st.subheader("Does allocation pay here?")
    chosen = st.selectbox("Study", ids, key="results_study") if len(ids) > 1 else ids[0]
    verdict = study_verdict(rows, chosen)
    if verdict is None:
        st.caption(f"Study {markdown_text(chosen)}: no finished uniform LoRA run yet, so no budget and no verdict.")
        return
    head = verdict.comparison("A", "U")
    VERDICT_BOX.get(head.verdict, st.info)(verdict.sentence)
    # The numbers and the verdict first and the prose last, one table above the other: side by side, the
    # long "what" column pushed Δ and the verdict out of sight at a laptop's width.
    comparisons = pd.DataFrame([{
        "comparison": f"{c.arm} − {c.against}",
        "Δ (95% interval)": format_difference(*((c.difference.mean, *c.difference.ci95) if c.difference and c.difference.ci95
                                                else ((c.difference.mean,) if c.difference else (None,))),
                                              metric=verdict.metric),
        "verdict": c.verdict, "seeds": len(c.difference.seeds) if c.difference else 0,
        "what": f"{ARM_LABELS[c.arm]} vs {ARM_LABELS[c.against]}"} for c in verdict.comparisons])
    arms = pd.DataFrame([{"arm": a.arm, "final score (mean ± std)":
                          format_score_stats(a.mean, a.std, len(a.scores), with_n=False, metric=verdict.metric),
                          "seeds": len(a.scores), "lr": ", ".join(format_lr(lr) for lr in a.lrs), "what": a.label}
                         for a in verdict.arms.values()])
    st.dataframe(comparisons, hide_index=True, key="study_comparisons")
    st.dataframe(arms, hide_index=True, key="study_arms")
    st.caption(f"Study {markdown_text(chosen)}: uniform rank {verdict.rank}, {verdict.budget:,} adapter parameters "
               f"({plural(sum(len(a.scores) for a in verdict.arms.values()), 'finished seed')} over the arms). "
               "Differences are paired by seed; noise where the 95% interval holds 0."
               + (f" {cost}." if (cost := verdict.search_cost_text()) else ""))
    allocated = arm_runs(rows, verdict, "A")
    maps = [view for r in allocated if (view := data.rank_view(r)) is not None]
    placement = rank_placement([frame for frame, _ in maps],
                               max(data.allocation_view(r).n_layers for r in allocated) if maps else None)
    if placement is not None:
        lora = placement.grid
        st.plotly_chart(charts.allocation_heatmaps(lora, pd.DataFrame(index=lora.index),
                                                   title=f"Where A's ranks went (mean over {plural(placement.seeds, 'seed')})",
                                                   coloraxis=charts.rank_coloraxis(float(lora.max().max())),
                                                   hover=charts.RANK_HOVER),
                        key="study_ranks", config=charts.png_config(f"{chosen}-ranks"))
        st.caption(f"Share of A's rank by kind: {placement.shares_text('kind')} (uniform LoRA: "
                   f"{100 / len(placement.by_kind):.0f}% each). By layer: {placement.shares_text('layer')}.")
