"""Plotly figures of the dashboard: pure functions from analysis frames to ``go.Figure``.

Every enable-frequency heatmap uses one colour axis fixed to 0–1 (:data:`FREQUENCY_COLORAXIS`), so
colours mean the same in every panel and on every page; rank maps use one axis from 0 (off) to the
largest rank drawn (:func:`rank_coloraxis`). Rows are model layers, one row per layer, layer 0 at
the bottom.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.components.formatting import GROUP_TITLES, kind_label
from heterolora_core.analysis.allocation import RankTimeline, Timeline
from heterolora_core.analysis.text import plotly_text

FREQUENCY_COLORAXIS = dict(cmin=0.0, cmax=1.0, colorscale="Viridis",
                           colorbar=dict(title=dict(text="enable frequency", side="right"), tickformat=".0%", nticks=5))
ON_OFF_COLORSCALE = [[0.0, "#e8eaf0"], [0.5, "#e8eaf0"], [0.5, "#2a6fdb"], [1.0, "#2a6fdb"]]


def png_config(filename: str) -> dict:
    """``st.plotly_chart`` config whose modebar camera button downloads a 2x PNG named ``filename``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)
    return {"displaylogo": False, "toImageButtonOptions": {"format": "png", "filename": safe, "scale": 2}}


def _kind_labels(columns) -> list[str]:
    return [plotly_text(kind_label(c)) for c in columns]


FREQUENCY_HOVER = "layer %{y} · %{x}<br>enabled in %{z:.0%} of reallocations"
RANK_HOVER = "layer %{y} · %{x}<br>rank %{z} (0 = off)"


def rank_coloraxis(max_rank: float) -> dict:
    """One colour axis for rank maps: 0 (off) to ``max_rank``, integer ticks."""
    return dict(cmin=0.0, cmax=float(max(1, max_rank)), colorscale="Viridis",
                colorbar=dict(title=dict(text="rank (0 = off)", side="right"), tickformat="d", nticks=5))


def _heatmap(grid: pd.DataFrame, name: str, hover: str = FREQUENCY_HOVER) -> go.Heatmap:
    """One layers x kinds heatmap trace on the figure's shared colour axis (``z`` rows = layers)."""
    z = grid.to_numpy(dtype=float)
    name = plotly_text(name)  # a run's label: record text, shown as text
    return go.Heatmap(
        z=np.where(np.isnan(z), None, z),
        x=_kind_labels(grid.columns),
        y=[int(i) for i in grid.index],
        coloraxis="coloraxis",
        name=name,
        xgap=2,
        ygap=1,
        hovertemplate=hover + "<extra>" + name + "</extra>",
    )


def _height(n_layers: int, rows: int = 1) -> int:
    return int(max(320, rows * (18 * n_layers + 60) + 80))


def allocation_heatmaps(lora: pd.DataFrame, shortcut: pd.DataFrame, title: str = "",
                        coloraxis: dict | None = None, hover: str = FREQUENCY_HOVER) -> go.Figure:
    """The paper's Figures 4 and 5 for one run: a LoRA panel (layers x q/k/v/o/FFN) and a shortcut
    panel (layers x res_attn/res_ffn/cross_attn/cross_ffn) side by side on one colour axis (0–1
    enable frequency; a rank map passes :func:`rank_coloraxis` and :data:`RANK_HOVER`).

    ``lora`` / ``shortcut`` are :func:`heterolora_core.analysis.allocation.frequency_grid` (or
    ``rank_grid``) frames (index = layers 0..L-1); a group without columns gets no panel.
    """
    panels = [(group, g) for group, g in (("lora", lora), ("shortcut", shortcut)) if g.shape[1] > 0]
    if not panels:
        return go.Figure().update_layout(title=title or "no modules")
    widths = [max(2, g.shape[1]) for _, g in panels]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[GROUP_TITLES[f] for f, _ in panels],
                        column_widths=[w / sum(widths) for w in widths], horizontal_spacing=0.08)
    for col, (group, grid) in enumerate(panels, start=1):
        fig.add_trace(_heatmap(grid, GROUP_TITLES[group], hover), row=1, col=col)
        fig.update_yaxes(title_text="layer" if col == 1 else None, dtick=1 if len(grid) <= 32 else None, row=1, col=col)
    n_layers = max(len(g) for _, g in panels)
    title_lines = title.count("<br>") + 1 if title else 0
    top = 40 + 18 * title_lines  # the subplot titles sit below the figure's title, never on it
    fig.update_layout(coloraxis=coloraxis or FREQUENCY_COLORAXIS, height=_height(n_layers) + 18 * title_lines,
                      margin=dict(l=50, r=20, t=top + 20, b=40),
                      title=dict(text=title, font=dict(size=13), y=1.0, yanchor="top", yref="container", pad=dict(t=8))
                      if title else None)
    fig.update_annotations(font_size=11)
    return fig


def wrap(label: str, width: int = 28) -> str:
    """Break a long label at its `` · `` separators for narrow subplot titles (the label is
    record text: escaped for Plotly first, :func:`~heterolora_core.analysis.text.plotly_text`)."""
    parts, lines, line = plotly_text(label).split(" · "), [], ""
    for part in parts:
        candidate = f"{line} · {part}" if line else part
        if len(candidate) > width and line:
            lines.append(line)
            line = part
        else:
            line = candidate
    lines.append(line)
    return "<br>".join(lines)


def timeline_figure(tl: Timeline, scored: bool = True) -> go.Figure:
    """Module x reallocation on/off map with the proxy score on hover (``scored=False``: a method
    without a proxy, whose records hold placeholder scores: on/off only).

    ``tl`` is :func:`heterolora_core.analysis.allocation.timeline`: ``enabled`` and ``scores`` are
    (modules x reallocations) frames. Two heatmap traces share the grid, one holding the scores of
    the enabled cells and one those of the disabled cells (NaN elsewhere), so each trace has one
    colour and its hover can say "on" or "off"; only float32 arrays go to the browser.
    """
    enabled = tl.enabled.to_numpy(dtype=bool)
    scores = tl.scores.to_numpy(dtype=np.float32)
    n_modules, n_realloc = enabled.shape
    # one category per reallocation, named by its step (made unique if two share a step)
    x = [str(s) for s in tl.steps]
    if len(set(x)) != len(x):
        x = [f"#{j} · {s}" for j, s in enumerate(tl.steps)]
    y = [plotly_text(name) for name in tl.enabled.index]
    # a cell that was never scored still needs a value to be drawn: 0 (shown as "no score")
    drawable = np.where(np.isnan(scores), np.float32(0.0), scores)
    fig = go.Figure()
    for state, mask, color in (("off", ~enabled, ON_OFF_COLORSCALE[0][1]), ("on", enabled, ON_OFF_COLORSCALE[-1][1])):
        fig.add_trace(go.Heatmap(
            z=np.where(mask, drawable, np.float32(np.nan)),
            x=x,
            y=y,
            name=state,
            colorscale=[[0.0, color], [1.0, color]],
            showscale=False,
            hoverongaps=False,
            xgap=1 if n_realloc <= 40 else 0,
            ygap=1 if n_modules <= 60 else 0,
            hovertemplate="%{y}<br>step %{x}: " + state + ("<br>score %{z:.4g}" if scored else "") + "<extra></extra>",
        ))
    fig.update_layout(
        height=int(max(260, 9 * n_modules + 90)),
        margin=dict(l=10, r=10, t=30, b=40),
        xaxis=dict(title="reallocation (training step)", type="category"),
        # every module labelled (Plotly would thin the category ticks)
        yaxis=dict(autorange="reversed", type="category", tickfont=dict(size=9 if n_modules <= 80 else 7),
                   dtick=1 if n_modules <= 150 else None),
    )
    return fig


GROUP_COLORS = {"lora": "#2a6fdb", "shortcut": "#e07b39"}


def score_distribution_figure(summary: pd.DataFrame, log_scale: bool = False) -> go.Figure:
    """Box plot of proxy scores per module kind, coloured by group, drawn from precomputed
    statistics (``summary`` is :func:`heterolora_core.analysis.allocation.score_summary`), so only a few
    numbers per kind reach the browser."""
    fig = go.Figure()
    for group, part in summary.groupby("group", sort=False):
        fig.add_trace(go.Box(
            name=group,
            x=[plotly_text(kind_label(k)) for k in part["kind"]],
            q1=part["q1"].tolist(), median=part["median"].tolist(), q3=part["q3"].tolist(),
            lowerfence=part["lowerfence"].tolist(), upperfence=part["upperfence"].tolist(), mean=part["mean"].tolist(),
            marker_color=GROUP_COLORS.get(group),
            hovertemplate="%{x}<extra>" + group + "</extra>",
        ))
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=40), legend=dict(orientation="h", y=1.08),
                      xaxis_title="module kind", yaxis_title="proxy score", yaxis_type="log" if log_scale else "linear")
    return fig


def curves_figure(curves: pd.DataFrame, y_title: str) -> go.Figure:
    """Overlaid lines, one per run; ``curves`` is :func:`heterolora_core.analysis.compare.curves_frame`."""
    fig = go.Figure()
    for run, part in curves.groupby("run", sort=False):
        fig.add_trace(go.Scatter(x=part["step"].to_numpy(), y=part["value"].to_numpy(), name=plotly_text(run),
                                 mode="lines+markers" if len(part) < 60 else "lines"))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=40), legend=dict(orientation="h", y=-0.25),
                      xaxis_title="step", yaxis_title=y_title, showlegend=True)
    return fig


def band_figure(bands: pd.DataFrame, y_title: str) -> go.Figure:
    """One line per configuration, the mean over its runs, with a shaded band from the least to the
    largest run (:func:`heterolora_core.analysis.compare.curve_bands`)."""
    fig = go.Figure()
    palette = PALETTE
    for i, (group, part) in enumerate(bands.groupby("group", sort=False)):
        color = palette[i % len(palette)]
        steps = part["step"].tolist()
        if (part["n"] > 1).any():
            fig.add_trace(go.Scatter(x=steps + steps[::-1], y=part["high"].tolist() + part["low"].tolist()[::-1],
                                     fill="toself", fillcolor=color, opacity=0.18, line=dict(width=0),
                                     hoverinfo="skip", showlegend=False, legendgroup=str(group)))
        fig.add_trace(go.Scatter(x=steps, y=part["mean"].tolist(), name=plotly_text(group), legendgroup=str(group),
                                 line=dict(color=color), mode="lines+markers" if len(part) < 60 else "lines",
                                 customdata=part["n"].tolist(),
                                 hovertemplate="%{fullData.name}<br>step %{x}: %{y:.3f} (mean of %{customdata})<extra></extra>"))
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=40), legend=dict(orientation="h", y=-0.25),
                      xaxis_title="step", yaxis_title=y_title, showlegend=True)
    return fig


#: Line colours of the configurations (Plotly's default sequence).
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff", "#fecb52")


def matrix_figure(matrix: pd.DataFrame, zmin: float, zmax: float, colorscale: str, title: str) -> go.Figure:
    """An annotated square run x run matrix (Jaccard overlap, Spearman correlation)."""
    z = matrix.to_numpy(dtype=float)
    labels = [wrap(str(l), 22) for l in matrix.index]
    fig = go.Figure(go.Heatmap(z=np.where(np.isnan(z), None, z), x=labels, y=labels, zmin=zmin, zmax=zmax,
                               colorscale=colorscale, texttemplate="%{z:.2f}", hovertemplate="%{y}<br>%{x}<br>%{z:.3f}<extra></extra>",
                               colorbar=dict(title=dict(text=title, side="right"), nticks=5)))
    fig.update_layout(height=max(300, 70 * len(labels) + 120), margin=dict(l=10, r=10, t=30, b=10),
                      yaxis=dict(autorange="reversed"))
    return fig


def rank_timeline_figure(rt: RankTimeline) -> go.Figure:
    """Module x reallocation map of ranks (0 = off) on one colour axis from 0 to the largest rank;
    ``rt`` is :func:`heterolora_core.analysis.allocation.rank_timeline`."""
    x = [str(s) for s in rt.steps]
    if len(set(x)) != len(x):
        x = [f"#{j} · {s}" for j, s in enumerate(rt.steps)]
    n_modules, n_realloc = rt.ranks.shape
    top = int(rt.ranks.to_numpy().max()) if rt.ranks.size else 1
    fig = go.Figure(go.Heatmap(
        z=rt.ranks.to_numpy(dtype=np.int32), x=x, y=[plotly_text(n) for n in rt.ranks.index], coloraxis="coloraxis",
        xgap=1 if n_realloc <= 40 else 0, ygap=1 if n_modules <= 60 else 0,
        hovertemplate="%{y}<br>step %{x}: rank %{z}<extra></extra>"))
    fig.update_layout(
        coloraxis=rank_coloraxis(top), height=int(max(260, 9 * n_modules + 90)), margin=dict(l=10, r=10, t=30, b=40),
        xaxis=dict(title="reallocation (training step)", type="category"),
        yaxis=dict(autorange="reversed", type="category", tickfont=dict(size=9 if n_modules <= 80 else 7),
                   dtick=1 if n_modules <= 150 else None),
    )
    return fig


VERDICT_COLORS = {"better": "#2e8b57", "worse": "#c0392b", "noise": "#7f8c8d", "n/a (1 seed)": "#b0b7c3"}


def forest_figure(rows: pd.DataFrame, reference: str, hover: list[str] | None = None,
                  unit: str = "points") -> go.Figure:
    """The paired differences to ``reference`` as a forest plot: one row per configuration, its
    mean difference in ``unit`` (GLUE points; a loss or perplexity's own unit, lower is better)
    with the 95% interval as an error bar, coloured by verdict, and a line at 0. ``rows`` has
    columns ``configuration, delta, low, high, verdict`` (in ``unit``; ``low`` / ``high`` NaN with
    one seed); ``hover``, one per row, the configurations' full descriptions."""
    unit = plotly_text(unit)
    fig = go.Figure()
    rows = rows.assign(_hover=[plotly_text(h) for h in (hover if hover is not None else rows["configuration"].tolist())])
    for verdict, part in rows.groupby("verdict", sort=False):
        delta, low, high = (part[c].to_numpy(dtype=float) for c in ("delta", "low", "high"))
        # plain lists: a handful of rows, and the numbers stay readable in the page (tests, exports)
        fig.add_trace(go.Scatter(
            x=delta.tolist(), y=[plotly_text(c) for c in part["configuration"]], mode="markers", name=str(verdict),
            marker=dict(size=10, color=VERDICT_COLORS.get(verdict, "#34495e")),
            error_x=dict(type="data", symmetric=False, array=np.nan_to_num(high - delta).tolist(),
                         arrayminus=np.nan_to_num(delta - low).tolist(), thickness=1.5, width=4),
            customdata=[[lo, hi, text] for lo, hi, text in zip(low.tolist(), high.tolist(), part["_hover"])],
            hovertemplate="%{customdata[2]}<br>Δ %{x:+.2f} " + unit + "<br>95% [%{customdata[0]:.1f}, %{customdata[1]:.1f}]<extra>"
                          + str(verdict) + "</extra>",
        ))
    fig.add_vline(x=0.0, line_width=1, line_dash="dash", line_color="#555")
    fig.update_layout(
        height=int(max(240, 28 * len(rows) + 110)), margin=dict(l=10, r=10, t=40, b=40),
        title=dict(text=f"Δ vs {plotly_text(reference)} ({unit}, paired by seed, 95% interval)", font=dict(size=13)),
        xaxis=dict(title=f"difference in {unit}", zeroline=False),
        yaxis=dict(autorange="reversed", type="category"), legend=dict(orientation="h", y=-0.18),
    )
    return fig
