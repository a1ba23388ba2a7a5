"""The dashboard's access to the run store and run records, with Streamlit caching.

Records are read through ``st.cache_data`` keyed on the file's (mtime, size), so a page rerun
re-reads a record only when the engine appended to it. The store itself (:class:`RunStore`) is the
one truth for the list of runs (it re-parses a record only when its files changed); the Runs
table built from the listing (:func:`runs_frame`: one row per run, with its label) is cached on
what the listing says, so a page with a thousand runs builds it once per change, not per rerun.
This module never decides anything about a run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import streamlit as st

from dashboard.components.formatting import run_label
from heterolora_core.analysis import allocation as alloc
from heterolora_core.analysis import estimate
from heterolora_core.analysis.compare import runs_table
from heterolora_core.analysis.evidence import SHORT_RUN
from heterolora_core.analysis.labels import Label, short_labels
from heterolora_core.analysis.results import is_short, run_evidence
from heterolora_core.records import worker
from heterolora_core.records.home import data_home
from heterolora_core.records.record import (ReallocationLine, RunRecord, Thinned, file_stamp, read_metrics,
                                            read_reallocations)
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


def run_labels(rows: list[StoredRun]) -> dict[str, Label]:
    """run_id -> its :class:`~heterolora_core.analysis.labels.Label` among ``rows``: the fields in
    which these runs differ (the device too, where it differs), ``short run`` on every short run,
    the id's tail where two still read the same; the full description beside it. Cached on the
    runs and the listing."""
    return _run_labels(_listing_signature(rows), tuple(r.run_id for r in rows), rows)


@st.cache_data(max_entries=64, show_spinner=False)
def _run_labels(signature: int, run_ids: tuple[str, ...], _rows: list[StoredRun]) -> dict[str, Label]:
    return short_labels({r.run_id: r.config for r in _rows},
                        extras={r.run_id: (run_evidence(r).device,) for r in _rows if r.status != "queued"},
                        tiebreak={r.run_id: run_id_tail(r.run_id) for r in _rows},
                        marks={r.run_id: (SHORT_RUN,) for r in _rows if is_short(r)})


def run_id_tail(run_id: str) -> str:
    """What tells two runs of one configuration and seed apart in a label: a generated id's random
    tail (``a1b2c3``), or a record folder's last two parts (``lr0.0005/seed0``: its seed folder alone
    would repeat the label's seed)."""
    parts = run_id.split("/")
    return "/".join(parts[-2:]) if len(parts) > 1 and parts[-1].startswith("seed") else run_id[-6:]


def labels_for(rows: list[StoredRun]) -> dict[str, str]:
    """run_id -> the short label of :func:`run_labels` (unique: chart legends, pickers)."""
    return {rid: label.short for rid, label in run_labels(rows).items()}


def _listing_signature(rows: list[StoredRun]) -> int:
    """A hash of everything the Runs table shows of each run (cheap: no file is read)."""
    return hash(tuple((r.run_id, str(r.path), r.status, r.created_at, r.sweep_id, r.problem, r.summary.progress,
                       r.summary.step, r.summary.eta_seconds, r.summary.best_score, r.summary.final_score,
                       r.summary.wall_seconds, r.summary.error, r.summary.trainable_params) for r in rows))


def runs_frame(rows: list[StoredRun]) -> pd.DataFrame:
    """The Runs table of ``rows`` (:func:`heterolora_core.analysis.compare.runs_table`) with each
    run's ``label`` (:func:`~dashboard.components.formatting.run_label`: the fields that define it;
    two copies of a run read the same, their ids tell them apart) as the second column; cached
    until the listing changes."""
    return _runs_frame(str(store().home), _listing_signature(rows), rows)


@st.cache_data(max_entries=8, show_spinner=False)
def _runs_frame(home: str, signature: int, _rows: list[StoredRun]) -> pd.DataFrame:
    frame = runs_table(_rows, Path(home))
    frame.insert(1, "label", frame["run_id"].map({row.run_id: run_label(row.config) for row in _rows}))
    return frame


@st.cache_data(max_entries=128, show_spinner=False)
def _read_reallocations(path: str, stamp: tuple[int, int]) -> Thinned:
    return read_reallocations(Path(path))  # bounded by what a model can have, whatever the file claims


@st.cache_data(max_entries=128, show_spinner=False)
def _read_metrics(path: str, stamp: tuple[int, int]) -> list[dict[str, float]]:
    return read_metrics(Path(path)).lines


def has_reallocations(row: StoredRun) -> bool:
    """True when the run has recorded at least one selection (a non-empty reallocations file)."""
    return file_stamp(row.path / RunRecord.REALLOCATIONS)[1] > 0


def reallocations(row: StoredRun) -> list[ReallocationLine]:
    """The run's reallocation lines (cached until the file changes)."""
    path = row.path / RunRecord.REALLOCATIONS
    return _read_reallocations(str(path), file_stamp(path)).lines


def metrics(row: StoredRun) -> list[dict[str, float]]:
    """The run's metrics lines (cached until the file changes)."""
    path = row.path / RunRecord.METRICS
    return _read_metrics(str(path), file_stamp(path))


class AllocationView(NamedTuple):
    """Everything the Allocation page draws for one run (see :mod:`heterolora_core.analysis.allocation`)."""

    frequency: pd.DataFrame  # one row per module: module, layer, group, kind, n_enabled, n_reallocations, frequency
    lora_grid: pd.DataFrame  # layers x LoRA kinds, frequency 0..1
    shortcut_grid: pd.DataFrame  # layers x shortcut kinds, frequency 0..1
    timeline: alloc.Timeline  # modules x reallocations: enabled 0/1, scores
    score_summary: pd.DataFrame  # per (group, kind): n, quartiles, fences, mean of the proxy scores
    n_layers: int
    n_reallocations: int  # the lines drawn: every ``every``-th of the record's ``recorded`` (a huge record is thinned)
    recorded: int
    every: int
    churn: dict  # set_churn: changes, mean_swapped, ever_enabled, set_size
    drift: dict  # score_drift: on_median, off_median, on_over_off


@st.cache_data(max_entries=32, show_spinner=False)
def _allocation_view(path: str, stamp: tuple[int, int], layers_hint: int | None) -> AllocationView:
    reallocs, recorded, every = _read_reallocations(path, stamp)
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
        recorded=recorded,
        every=every,
        churn=alloc.set_churn(reallocs),
        drift=alloc.score_drift(reallocs),
    )


def allocation_view(row: StoredRun) -> AllocationView:
    """The allocation analysis of a run (cached until its reallocations file changes)."""
    path = row.path / RunRecord.REALLOCATIONS
    return _allocation_view(str(path), file_stamp(path), row.summary.n_layers)


def rank_view(row: StoredRun) -> tuple[pd.DataFrame, alloc.RankTimeline] | None:
    """A rank-allocating run's final ranks (:func:`~heterolora_core.analysis.allocation.rank_frame`)
    and its rank timeline, or None when its reallocation lines carry no ranks."""
    path = row.path / RunRecord.REALLOCATIONS
    return _rank_view(str(path), file_stamp(path))


@st.cache_data(max_entries=32, show_spinner=False)
def _rank_view(path: str, stamp: tuple[int, int]) -> tuple[pd.DataFrame, alloc.RankTimeline] | None:
    reallocs = _read_reallocations(path, stamp).lines
    if not alloc.has_ranks(reallocs):
        return None
    return alloc.rank_frame(reallocs), alloc.rank_timeline(reallocs)


# -- before a launch: how long the run will take here -----------------------------------------------


@st.cache_data(ttl=600, show_spinner="Sizing the run (the model's shapes and the task's data)…")
def run_size(config_json: str):
    """The engine's :class:`~heterolora_core.planning.RunSize` of a checked config (JSON), or None
    when it cannot be sized now."""
    from heterolora_core.planning import run_size as size_of
    from heterolora_core.training.run_config import RunConfig

    try:
        return size_of(RunConfig.from_dict(json.loads(config_json)))
    except Exception:  # a model or data source that cannot be read now: no estimate, never a crash
        return None


@st.cache_data(ttl=3600, show_spinner=False)
def model_parameters(model: str) -> int | None:
    """Parameters of a model the store's records name (None when it cannot be read now)."""
    from heterolora_core.planning import model_parameter_count

    try:
        return model_parameter_count(model)
    except Exception:  # a record's model folder that is gone, a hub id not in the cache
        return None


def run_time_estimate(config: dict, size) -> estimate.RunTimeEstimate:
    """How long ``config`` (a checked config dict) will take here, from the store's finished
    records (:mod:`heterolora_core.analysis.estimate`)."""
    from heterolora_core.training.run_config import RunConfig

    run_config = RunConfig.from_dict(config)
    rows = [r for r in list_runs() if r.config is not None and r.summary.status == "done"]
    sizes = {m: n for m in {r.config.model for r in rows} if (n := model_parameters(m))}
    sizes[run_config.model] = size.model_params
    speeds = estimate.measured_speeds(rows, size.device, sizes)
    steps = estimate.planned_steps(run_config, size.train_rows)
    return estimate.estimate_run_time(run_config, steps, size.model_params, size.device, speeds)
