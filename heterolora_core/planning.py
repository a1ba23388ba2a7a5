"""Before a launch: the one check of a run, its exact budget from the model's shapes alone, and
every candidate's proxy score without training (``python -m heterolora_core score``).

:func:`check_run` is what the command line, the queue worker and the dashboard's Launch page call
before anything is queued or trained: the config's own validation
(:meth:`~heterolora_core.training.run_config.RunConfig.validate`), the task's data source, the model
(a folder must hold a config and weights; an id must resolve), the sequence length against the
model's positions, and the budget. Every mistake is a ValueError with one line. The budget is
planned on a meta-device copy of the model (no weights, no memory), by the run's method.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from heterolora_core.adapters.config import HeteroLoraConfig
from heterolora_core.adapters.families import attach
from heterolora_core.adapters.modules import head_parameter_count
from heterolora_core.methods import registry
from heterolora_core.search.proxies import compute_scores
from heterolora_core.sweeps import PlannedRun, run_key
from heterolora_core.tasks.base import check_hold_out, hold_out
from heterolora_core.tasks.registry import task_for
from heterolora_core.training.data import load_task
from heterolora_core.training.models import check_model, load_config, meta_classifier
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import DEFAULT_SKETCH_RANK, Group, Objective, Scoring


@dataclass(frozen=True)
class BudgetPlan:
    """What a configuration trains, computed from the model's shapes alone."""

    n_candidates: int
    n_lora: int
    n_shortcut: int
    n_enabled: int
    trainable_params: int  # adapter parameters of the enabled modules (head excluded)
    head_params: int
    per_module_params: dict[str, int]
    uniform_equivalent: str  # e.g. "uniform LoRA q,v at rank 8 (73,728)"
    uniform_rank: float  # the uniform LoRA rank on the targets with the same parameter count
    notes: tuple[str, ...] = ()


def plan_budget(config: RunConfig, num_labels: int | None = None) -> BudgetPlan:
    """Exact trainable parameters of ``config``, from the model's config only (no weights); the
    model is the task's (a classifier with ``num_labels`` outputs, default the task's, or a causal LM).

    The enabled count is the budget's; with equal module costs (true for every query/value/shortcut
    candidate) the parameter count is exact, otherwise it is the count of the cheapest modules
    that fit. ValueError when the budget enables nothing or the architecture is unsupported.
    """
    config = config.normalised()
    task = task_for(config)
    meta = task.meta_model(config) if num_labels is None or not task.num_labels(config) else \
        meta_classifier(config.model, num_labels=num_labels)
    planned = registry.load(config.mode).plan(config, meta)
    n_lora = sum(1 for g in planned.groups.values() if g == Group.LORA)
    unit = planned.lora_unit
    uniform_rank = planned.trainable_params / unit if unit else float("nan")
    targets = ",".join(t for t in config.lora_targets)
    if unit and abs(uniform_rank - round(uniform_rank)) < 1e-9:
        equivalent = f"uniform LoRA {targets} at rank {round(uniform_rank)} ({int(round(uniform_rank) * unit):,})"
    elif unit:
        equivalent = f"uniform LoRA {targets} at rank {uniform_rank:.2f} (no integer rank matches exactly)"
    else:
        equivalent = "no LoRA targets to compare with"
    return BudgetPlan(len(planned.costs), n_lora, len(planned.costs) - n_lora, len(planned.enabled),
                      planned.trainable_params, head_parameter_count(meta), dict(planned.costs), equivalent,
                      uniform_rank, planned.notes)


def check_run(config: RunConfig) -> BudgetPlan:
    """Every check before a launch (see the module docstring); returns the run's budget plan."""
    config = config.normalised()
    config.validate()
    task = task_for(config)
    task.check(config)
    if config.heldout_rows:
        check_hold_out(task.train_count(config), config.heldout_rows)
    check_model(config.model)
    try:
        plan = plan_budget(config)
        positions = _max_positions(config.model)
    except ValueError:
        raise
    except Exception as exc:  # anything else reading a user-named model must not become a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot plan a budget for model {config.model!r}: {first}") from None
    if positions is not None and config.max_length > positions:
        raise ValueError(f"max-length {config.max_length} exceeds the {positions} positions of model {config.model!r}")
    task.check_lengths(config)
    return plan


@dataclass(frozen=True)
class RowBudget:
    """What the runs of one sweep row train: the row's runs with one task, method and budget."""

    row: str
    label: str
    task: str
    mode: str
    runs: int
    trainable_params: int
    uniform_equivalent: str


def sweep_budgets(runs: Sequence[PlannedRun]) -> list[RowBudget]:
    """Every run of a sweep through :func:`check_run` (each distinct setting once), grouped by row,
    task, method and budget, in the sweep's order; ValueError naming the run of the first refusal,
    so a sweep with one bad run queues nothing."""
    plans: dict[str, BudgetPlan] = {}
    groups: dict[tuple[str, str, str, int, str], list] = {}
    for run in runs:
        key = run_key(run.config)
        if key not in plans:
            try:
                plans[key] = check_run(run.config)
            except ValueError as exc:
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"{run.where()}: {text}") from None
        plan = plans[key]
        group = (run.row.row, run.config.task, run.config.mode, plan.trainable_params, plan.uniform_equivalent)
        groups.setdefault(group, [run.row.label, 0])[1] += 1
    return [RowBudget(row, label, task, mode, n, params, equivalent)
            for (row, task, mode, params, equivalent), (label, n) in groups.items()]


def _max_positions(model: str) -> int | None:
    """The longest input the model takes (``max_position_embeddings``), None when it states none."""
    value = getattr(load_config(model), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def score_candidates(proxy: str, model: str, task: str, train_file: str | None = None, dev_file: str | None = None,
                     rank: int = 8, lora_targets=("q", "v"), shortcuts: bool = True, batches: int = 8,
                     batch_size: int = 16, max_length: int = 128, seed: int = 0, scoring: str = Scoring.AUTO,
                     sketch_rank: int = DEFAULT_SKETCH_RANK,
                     objective: str = Objective.CLASSIFY) -> tuple[dict[str, float], dict[str, Group]]:
    """Every candidate's ``proxy`` score on ``batches`` training batches at initialisation, and
    each candidate's group; the data, model and loss are the task's (``objective`` lm: a causal
    LM's loss on the answer tokens). ValueError for bad input, before the model's weights are loaded."""
    config = RunConfig(model=model, task=task, objective=objective, train_file=train_file, dev_file=dev_file,
                       rank=rank, lora_targets=list(lora_targets), shortcuts=shortcuts, batch_size=batch_size,
                       max_length=max_length, seed=seed, train_limit=batches * batch_size * 4, dev_limit=1,
                       mode="static", proxy=proxy).normalised()
    chosen_task = task_for(config)
    chosen_task.check(config)
    check_model(model)
    chosen_task, prepared, chosen = calibration_batches(config, batches)
    torch.manual_seed(seed)
    network = chosen_task.load_model(config, prepared)
    adapters = attach(network, HeteroLoraConfig(rank=rank, lora_targets=tuple(lora_targets), shortcuts=shortcuts,
                                                init_seed=seed))
    scores = compute_scores(proxy, network, adapters, batches=chosen, seed=seed, scoring=scoring,
                            sketch_rank=sketch_rank,
                            progress=lambda items: tqdm(items, desc=f"scoring ({proxy})", leave=False))
    return scores, adapters.groups()


def calibration_batches(config: RunConfig, batches: int):
    """(the task, its prepared data, ``batches`` shuffled training batches seeded by the config's
    seed) for ``config``: the calibration data of ``score`` and ``recommend``, drawn from the first
    ``4 · batches · batch_size`` training rows (only those are tokenised, so a large task costs no
    more than a small one), through the config's task (classification or a causal LM's objective)."""
    config = replace(config, train_limit=batches * config.batch_size * 4, dev_limit=1)
    chosen_task = task_for(config)
    chosen_task.check_lengths(config)
    prepared = chosen_task.prepare(config)
    loader = DataLoader(prepared.train_rows, batch_size=config.batch_size, shuffle=True, collate_fn=prepared.collator,
                        generator=torch.Generator().manual_seed(config.seed))
    return chosen_task, prepared, [b for _, b in zip(range(batches), loader)]


@dataclass(frozen=True)
class RunSize:
    """What a run's length and speed depend on, known before it starts (for the wall-time estimate,
    :mod:`heterolora_core.analysis.estimate`): the model's parameters (backbone and head), the
    training rows it will use (``train_limit`` applied; None when the data cannot be read now), the
    dev rows it evaluates, the share of the commonest label among those (the score of always
    predicting it; None for regression) and over the whole dev split, and the device it would
    train on."""

    model_params: int
    train_rows: int | None
    dev_rows: int | None
    majority_rate: float | None
    split_majority_rate: float | None
    device: str


def majority_rate(labels: list) -> float | None:
    """The share of the commonest label (the score of always predicting it); None without labels."""
    if not labels:
        return None
    counts: dict = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / len(labels)


def model_parameter_count(model: str, num_labels: int = 2) -> int:
    """Parameters of ``model`` with a ``num_labels`` head, counted on the meta device (no weights)."""
    return sum(p.numel() for p in meta_classifier(model, num_labels=num_labels).parameters())


def run_size(config: RunConfig) -> RunSize:
    """The :class:`RunSize` of a checked config (:func:`check_run` first: this reads the model's
    config and the task's data, and raises what they raise)."""
    from heterolora_core.training.environment import resolve_device

    config = config.normalised()
    params = sum(p.numel() for p in task_for(config).meta_model(config).parameters())  # the task's model
    try:
        data = load_task(config.task, train_file=config.train_file, dev_file=config.dev_file)
    except (ValueError, OSError):  # no local GLUE files and no hub: the length stays unknown
        return RunSize(params, None, None, None, None, resolve_device(config.device))
    train_examples, dev = hold_out(data.train, data.dev, config.heldout_rows)
    train = len(train_examples) if not config.train_limit else min(len(train_examples), config.train_limit)
    primary = dev[next(iter(dev))]
    split = [] if data.is_regression else [e.label for e in primary]
    evaluated = split[: config.dev_limit or None]
    dev_rows = len(primary[: config.dev_limit or None])
    return RunSize(params, train, dev_rows, majority_rate(evaluated), majority_rate(split),
                   resolve_device(config.device))
