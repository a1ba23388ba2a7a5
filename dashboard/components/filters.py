"""The run filters the Runs and Results pages share: widgets only; what a filter keeps is the
engine's :func:`heterolora_core.analysis.compare.filter_runs`.

Each page gives its own ``prefix``, so its filters keep their state while the page is open. A
value that no run has any longer (a run deleted meanwhile) is dropped from the widget's state
before the widget is drawn, so a stale filter never breaks a page.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.components.formatting import format_lr
from heterolora_core.analysis.compare import FILTER_COLUMNS, RunFilter, experiment_options

FILTER_LABELS = {"task": "Task", "model": "Model", "mode": "Method", "proxy": "Proxy", "ranking": "Ranking",
                 "rank": "Rank", "budget": "Budget", "lr": "Learning rate", "status": "Status",
                 "experiment": "Experiment (sweep or folder)"}
PER_ROW = 5


def options_of(frame: pd.DataFrame, column: str) -> list:
    """The values a filter on ``column`` offers: those the runs have, sorted (an experiment
    filter also offers the folders above each experiment)."""
    if column not in frame.columns:
        return []
    values = frame[column].dropna()
    if column == "experiment":
        return experiment_options(values)
    if column in ("rank", "lr"):
        return sorted({v.item() if hasattr(v, "item") else v for v in values})
    return sorted({str(v) for v in values})


def _format(column: str):
    return format_lr if column == "lr" else str


def run_filters(frame: pd.DataFrame, prefix: str, expanded: bool = True) -> RunFilter:
    """Draw the search box and one multiselect per :data:`FILTER_COLUMNS` column for the runs of
    ``frame`` (a :func:`~heterolora_core.analysis.compare.runs_table` frame with labels); return
    what they choose."""
    with st.expander("Filters", expanded=expanded, icon=":material/filter_list:"):
        text = st.text_input("Search", key=f"{prefix}_search", placeholder="label, run id, folder, error",
                             help="case-insensitive text anywhere in a run's label, id, experiment, folder or error")
        values = {}
        columns = st.columns(PER_ROW)
        for i, column in enumerate(FILTER_COLUMNS):
            key = f"{prefix}_{column}"
            options = options_of(frame, column)
            if key in st.session_state:
                chosen = st.session_state[key]
                st.session_state[key] = [v for v in (chosen if isinstance(chosen, list) else []) if v in options]
            values[column] = tuple(columns[i % PER_ROW].multiselect(
                FILTER_LABELS[column], options, key=key, format_func=_format(column), placeholder="all"))
    return RunFilter(values, str(text or ""))
