"""How long a run will take here, before it is launched: pure functions over the store's records.

A run's wall time is modelled as

    T = startup + steps × s,     s = r × P × B

with P the model's parameters (backbone and head), B the batch size and r the seconds per step per
parameter per example that finished runs measured on the same kind of device (``summary.device``;
records older than that field are the 2-core CPU's). r is the median over the most comparable
records: the same model and method (and the same extra scoring batches) if there are any, else the
same model, else every record with a known model size (then P does the scaling); startup is the
median of their ``process_seconds - wall_seconds`` (loading the model and the data). A record
counts when it is ``done``, trained alone on its device (``parallel_runs`` unset or 1) and states
its steps and wall time. The range is the quartiles of r (min and max under four records). Without
any such record the stated defaults below are used, and the estimate says so.

What the model leaves out: the sequence lengths of the data (batches are padded per batch), and
what a method adds per reallocation beyond the records' own mix of methods; an estimate is a
guide, the records' wall times are the measurement.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from heterolora_core.records.record import Status
from heterolora_core.records.store import StoredRun
from heterolora_core.training.run_config import RunConfig

#: The embedded MiniLM-L6 with a two-label head: the model the defaults were measured on.
EMBEDDED_PARAMS = 22_713_986
#: Seconds per training step of that model at batch 16, per device kind, when the store has no
#: comparable record: the 2-core CPU's full MRPC runs (0.52-0.78 s per step, docs/results.md) and a
#: rough figure for one run alone on a GPU.
DEFAULT_SECONDS_PER_STEP = {"cpu": 0.7, "cuda": 0.05}
DEFAULT_STARTUP_SECONDS = 10.0
DEFAULT_BATCH = 16


def planned_steps(config: RunConfig, train_rows: int | None) -> int | None:
    """The optimizer steps ``config`` will train: ``max_steps``, else ``epochs`` × ⌈rows / batch⌉
    over ``train_rows`` (``train_limit`` applied); None when neither is known."""
    if config.max_steps:
        return int(config.max_steps)
    if not train_rows:
        return None
    rows = min(train_rows, config.train_limit) if config.train_limit else train_rows
    per_epoch = max(1, math.ceil(rows / max(1, config.batch_size)))
    return max(1, math.ceil(float(config.epochs) * per_epoch))


@dataclass(frozen=True)
class Speed:
    """What one finished record measured: seconds per step per parameter per example (``rate``),
    its startup seconds (None when unknown) and what it ran (model, mode, extra scoring batches)."""

    run_id: str
    model: str
    mode: str
    proxy_batches: int | None
    rate: float
    startup: float | None


def record_device(run: StoredRun) -> str:
    """The device kind a record trained on (``cuda:1`` -> ``cuda``; unstated: ``cpu``)."""
    return (run.summary.device or "cpu").split(":")[0]


def measured_speeds(rows: Sequence[StoredRun], device: str, model_params: Mapping[str, int]) -> list[Speed]:
    """The speeds of the finished records that trained alone on ``device`` (a kind: ``cpu``,
    ``cuda``) with a model whose size ``model_params`` knows (model name -> parameters)."""
    kind = device.split(":")[0]
    out = []
    for run in rows:
        s, config = run.summary, run.config
        if config is None or s.status != Status.DONE or record_device(run) != kind or (s.parallel_runs or 1) > 1:
            continue
        params = model_params.get(config.model)
        if not params or not s.step or not s.wall_seconds or s.wall_seconds <= 0:
            continue
        startup = s.process_seconds - s.wall_seconds if s.process_seconds and s.process_seconds >= s.wall_seconds else None
        out.append(Speed(run.run_id, config.model, config.mode, config.proxy_batches,
                         s.wall_seconds / s.step / (params * max(1, config.batch_size)), startup))
    return out


@dataclass(frozen=True)
class RunTimeEstimate:
    """A run's estimated wall time here: ``seconds`` (None without a known length) within
    ``low``..``high``, from ``steps`` at ``seconds_per_step`` after ``startup_seconds``;
    ``n_records`` records measured the speed (0: the default was used), as ``basis`` says."""

    steps: int | None
    seconds: float | None
    low: float | None
    high: float | None
    seconds_per_step: float
    startup_seconds: float
    device: str
    n_records: int
    basis: str


def _comparable(config: RunConfig, speeds: Sequence[Speed]) -> tuple[list[Speed], str]:
    same_method = [s for s in speeds if (s.model, s.mode, s.proxy_batches) == (config.model, config.mode, config.proxy_batches)]
    if same_method:
        return same_method, "the same model and method"
    same_model = [s for s in speeds if s.model == config.model]
    if same_model:
        return same_model, "the same model"
    return list(speeds), "other models, scaled by size"


def _spread(values: list[float]) -> tuple[float, float, float]:
    """(median, low, high): the quartiles from four values on, else the extremes."""
    if len(values) >= 4:
        low, mid, high = statistics.quantiles(values, n=4, method="inclusive")
        return mid, low, high
    return statistics.median(values), min(values), max(values)


def estimate_run_time(config: RunConfig, steps: int | None, model_params: int, device: str,
                      speeds: Sequence[Speed]) -> RunTimeEstimate:
    """The estimated wall time of ``config`` (see the module docstring) on ``device``, for a model
    of ``model_params`` parameters, from the records' ``speeds`` (:func:`measured_speeds`)."""
    kind = device.split(":")[0]
    scale = max(1, model_params) * max(1, config.batch_size)
    chosen, why = _comparable(config, speeds)
    if chosen:
        mid, low, high = (r * scale for r in _spread([s.rate for s in chosen]))
        startups = [s.startup for s in chosen if s.startup is not None]
        startup = statistics.median(startups) if startups else DEFAULT_STARTUP_SECONDS
        basis = f"measured by {len(chosen)} finished {kind} run{'s' if len(chosen) != 1 else ''} of {why} in the store"
    else:
        default = DEFAULT_SECONDS_PER_STEP.get(kind, DEFAULT_SECONDS_PER_STEP["cpu"])
        mid = low = high = default * scale / (EMBEDDED_PARAMS * DEFAULT_BATCH)
        startup = DEFAULT_STARTUP_SECONDS
        basis = (f"no finished {kind} run in the store to measure it: the default of {default:g} s per step "
                 f"for the embedded model at batch {DEFAULT_BATCH}, scaled to this model and batch")
    if steps is None:
        return RunTimeEstimate(None, None, None, None, mid, startup, kind, len(chosen), basis)
    return RunTimeEstimate(steps, startup + steps * mid, startup + steps * low, startup + steps * high, mid,
                           startup, kind, len(chosen), basis)
