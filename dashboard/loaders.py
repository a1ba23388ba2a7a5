"""The dashboard's access to the run store and run records, with Streamlit caching.

Records are read through ``st.cache_data`` keyed on the file's (mtime, size), so a page rerun
re-reads a record only when the engine appended to it. The store itself (:class:`RunStore`) is the
one truth for the list of runs; this module never decides anything about a run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import streamlit as st

from heterolora_core import analysis, worker
from heterolora_core.runs import RunRecord, data_home
from heterolora_core.store import RunStore

#: Set to ``0`` to keep the app from starting a worker (tests that drive the store themselves).
WORKER_ENV = "HETEROLORA_DASHBOARD_WORKER"


def store() -> RunStore:
    """The store of the current data home (``$HETEROLORA_HOME`` is read on every call, so a test
    can point the app at a temporary home)."""
    return _store(str(data_home()))


@st.cache_resource(show_spinner=False)
def _store(home: str) -> RunStore:
    return RunStore(home)


def start_worker() -> int | None:
    """Make sure a queue worker is alive for the data home (cheap: one ``flock`` try)."""
    if os.environ.get(WORKER_ENV, "1") == "0":
        return None
    return worker.ensure_worker(data_home())


def list_runs() -> list[dict[str, Any]]:
    """Every run, newest first (store rows: ``run_id, path, sweep_id, config, summary``), synced
    with the folders on disk."""
    return store().list_runs()


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["run_id"]: row for row in rows}


def labels_for(rows: list[dict[str, Any]]) -> dict[str, str]:
    """run_id -> a human label, unique: runs that share a label get their id's tail appended."""
    base = {row["run_id"]: analysis.run_label(row["config"]) for row in rows}
    counts = pd.Series(list(base.values())).value_counts()
    return {rid: (f"{label} · {rid[-6:]}" if counts[label] > 1 else label) for rid, label in base.items()}


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
        return stat.st_mtime_ns, stat.st_size
    except OSError:
        return 0, 0


@st.cache_data(max_entries=128, show_spinner=False)
def _read_jsonl(path: str, stamp: tuple[int, int]) -> list[dict[str, Any]]:
    from heterolora_core.runs import iter_jsonl

    return list(iter_jsonl(Path(path)))


def has_reallocations(row: dict[str, Any]) -> bool:
    """True when the run has recorded at least one selection (a non-empty reallocations file)."""
    return _stamp(Path(row["path"]) / RunRecord.REALLOCATIONS)[1] > 0


def reallocations(run_path: str | Path) -> list[dict[str, Any]]:
    """The run's reallocation lines (cached until the file changes)."""
    path = Path(run_path) / RunRecord.REALLOCATIONS
    return _read_jsonl(str(path), _stamp(path))


def metrics(run_path: str | Path) -> list[dict[str, Any]]:
    """The run's metrics lines (cached until the file changes)."""
    path = Path(run_path) / RunRecord.METRICS
    return _read_jsonl(str(path), _stamp(path))


class AllocationView(NamedTuple):
    """Everything the Allocation page draws for one run (see :mod:`heterolora_core.analysis`)."""

    frequency: pd.DataFrame  # one row per module: module, layer, family, kind, n_enabled, n_reallocations, frequency
    lora_grid: pd.DataFrame  # layers x LoRA kinds, frequency 0..1
    shortcut_grid: pd.DataFrame  # layers x shortcut kinds, frequency 0..1
    timeline: analysis.Timeline  # modules x reallocations: enabled 0/1, scores
    score_summary: pd.DataFrame  # per (family, kind): n, quartiles, fences, mean of the proxy scores
    n_layers: int
    n_reallocations: int
    churn: dict  # analysis.set_churn: changes, mean_swapped, ever_enabled, set_size
    drift: dict  # analysis.score_drift: on_median, off_median, on_over_off


@st.cache_data(max_entries=32, show_spinner=False)
def _allocation_view(path: str, stamp: tuple[int, int], layers_hint: int) -> AllocationView:
    from heterolora_core.runs import iter_jsonl

    reallocs = list(iter_jsonl(Path(path)))
    frequency = analysis.enable_frequency(reallocs)
    n_layers = max(analysis.n_layers_of(frequency["module"]), layers_hint)
    return AllocationView(
        frequency=frequency,
        lora_grid=analysis.frequency_grid(frequency, "lora", n_layers),
        shortcut_grid=analysis.frequency_grid(frequency, "shortcut", n_layers),
        timeline=analysis.timeline(reallocs),
        score_summary=analysis.score_summary(analysis.score_distribution(reallocs)),
        n_layers=n_layers,
        n_reallocations=len(reallocs),
        churn=analysis.set_churn(reallocs),
        drift=analysis.score_drift(reallocs),
    )


def allocation_view(row: dict[str, Any]) -> AllocationView:
    """The allocation analysis of a store row (cached until its reallocations file changes)."""
    path = Path(row["path"]) / RunRecord.REALLOCATIONS
    hint = analysis.n_layers_of([], {**row.get("config", {}), **row.get("summary", {})})
    return _allocation_view(str(path), _stamp(path), hint)
