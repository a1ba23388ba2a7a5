"""The dashboard's access to the run store and run records, with Streamlit caching.

Records are read through ``st.cache_data`` keyed on the file's (mtime, size), so a page rerun
re-reads a record only when the engine appended to it. The store itself (:class:`RunStore`) is the
one truth for the list of runs; this module never decides anything about a run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import streamlit as st

from dashboard.components.formatting import run_label
from heterolora_core.analysis import allocation as alloc
from heterolora_core.records import worker
from heterolora_core.records.home import data_home
from heterolora_core.records.record import ReallocationLine, RunRecord, iter_jsonl, metrics_line
from heterolora_core.records.store import RunStore, StoredRun

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
    """Make sure a queue worker is alive for the data home (cheap: one ``flock`` try); called on
    every page load and every live poll, so a dead worker is replaced while a page only polls."""
    if os.environ.get(WORKER_ENV, "1") == "0":
        return None
    return worker.ensure_worker(data_home())


def slots() -> int:
    """The worker's runs at once (the data home's ``slots`` setting)."""
    return worker.read_slots(store())


def set_slots(value: int) -> int:
    """Write the ``slots`` setting; the worker reads it at every loop (ValueError outside 1..64)."""
    return worker.write_slots(store(), int(value))


def list_runs() -> list[StoredRun]:
    """Every run, newest first, synced with the folders on disk."""
    return store().list_runs()


def by_id(rows: list[StoredRun]) -> dict[str, StoredRun]:
    return {row.run_id: row for row in rows}


def labels_for(rows: list[StoredRun]) -> dict[str, str]:
    """run_id -> a human label, unique: runs that share a label get their id's tail appended."""
    base = {row.run_id: run_label(row.config) for row in rows}
    counts = pd.Series(list(base.values()), dtype="object").value_counts()
    return {rid: (f"{label} · {rid[-6:]}" if counts[label] > 1 else label) for rid, label in base.items()}


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
        return stat.st_mtime_ns, stat.st_size
    except OSError:
        return 0, 0


@st.cache_data(max_entries=128, show_spinner=False)
def _read_reallocations(path: str, stamp: tuple[int, int]) -> list[ReallocationLine]:
    return [line for line in map(ReallocationLine.from_dict, iter_jsonl(Path(path))) if line is not None]


@st.cache_data(max_entries=128, show_spinner=False)
def _read_metrics(path: str, stamp: tuple[int, int]) -> list[dict[str, float]]:
    return [line for line in map(metrics_line, iter_jsonl(Path(path))) if line is not None]


def has_reallocations(row: StoredRun) -> bool:
    """True when the run has recorded at least one selection (a non-empty reallocations file)."""
    return _stamp(row.path / RunRecord.REALLOCATIONS)[1] > 0


def reallocations(row: StoredRun) -> list[ReallocationLine]:
    """The run's reallocation lines (cached until the file changes)."""
    path = row.path / RunRecord.REALLOCATIONS
    return _read_reallocations(str(path), _stamp(path))


def metrics(row: StoredRun) -> list[dict[str, float]]:
    """The run's metrics lines (cached until the file changes)."""
    path = row.path / RunRecord.METRICS
    return _read_metrics(str(path), _stamp(path))


class AllocationView(NamedTuple):
    """Everything the Allocation page draws for one run (see :mod:`heterolora_core.analysis.allocation`)."""

    frequency: pd.DataFrame  # one row per module: module, layer, group, kind, n_enabled, n_reallocations, frequency
    lora_grid: pd.DataFrame  # layers x LoRA kinds, frequency 0..1
    shortcut_grid: pd.DataFrame  # layers x shortcut kinds, frequency 0..1
    timeline: alloc.Timeline  # modules x reallocations: enabled 0/1, scores
    score_summary: pd.DataFrame  # per (group, kind): n, quartiles, fences, mean of the proxy scores
    n_layers: int
    n_reallocations: int
    churn: dict  # set_churn: changes, mean_swapped, ever_enabled, set_size
    drift: dict  # score_drift: on_median, off_median, on_over_off


@st.cache_data(max_entries=32, show_spinner=False)
def _allocation_view(path: str, stamp: tuple[int, int], layers_hint: int | None) -> AllocationView:
    reallocs = _read_reallocations(path, stamp)
    frequency = alloc.enable_frequency(reallocs)
    n_layers = alloc.n_layers_of(frequency["module"], layers_hint)
    return AllocationView(
        frequency=frequency,
        lora_grid=alloc.frequency_grid(frequency, "lora", n_layers),
        shortcut_grid=alloc.frequency_grid(frequency, "shortcut", n_layers),
        timeline=alloc.timeline(reallocs),
        score_summary=alloc.score_summary(alloc.score_distribution(reallocs)),
        n_layers=n_layers,
        n_reallocations=len(reallocs),
        churn=alloc.set_churn(reallocs),
        drift=alloc.score_drift(reallocs),
    )


def allocation_view(row: StoredRun) -> AllocationView:
    """The allocation analysis of a run (cached until its reallocations file changes)."""
    path = row.path / RunRecord.REALLOCATIONS
    return _allocation_view(str(path), _stamp(path), row.summary.n_layers)
