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
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from heterolora_core.adapters.config import HeteroLoraConfig
from heterolora_core.adapters.families import attach
from heterolora_core.adapters.modules import head_parameter_count
from heterolora_core.methods import registry
from heterolora_core.search.proxies import compute_scores
from heterolora_core.sweeps import PlannedRun, run_key
from heterolora_core.training.data import (TASKS, TaskData, check_task_source, load_task, make_collator,
                                           tokenize_examples)
from heterolora_core.training.models import (check_model, load_classifier, load_config, load_tokenizer,
                                             meta_classifier)
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import DEFAULT_SKETCH_RANK, Group, Scoring


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


def plan_budget(config: RunConfig, num_labels: int = 2) -> BudgetPlan:
    """Exact trainable parameters of ``config``, from the model's config only (no weights).

    The enabled count is the budget's; with equal module costs (true for every query/value/shortcut
    candidate) the parameter count is exact, otherwise it is the count of the cheapest modules
    that fit. ValueError when the budget enables nothing or the architecture is unsupported.
    """
    config = config.normalised()
    meta = meta_classifier(config.model, num_labels=num_labels)
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
    check_task_source(config.task, train_file=config.train_file, dev_file=config.dev_file)
    check_model(config.model)
    num_labels = TASKS[config.task].num_labels if config.task in TASKS else 2
    try:
        plan = plan_budget(config, num_labels=num_labels)
        positions = _max_positions(config.model)
    except ValueError:
        raise
    except Exception as exc:  # anything else reading a user-named model must not become a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot plan a budget for model {config.model!r}: {first}") from None
    if positions is not None and config.max_length > positions:
        raise ValueError(f"max-length {config.max_length} exceeds the {positions} positions of model {config.model!r}")
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
                     sketch_rank: int = DEFAULT_SKETCH_RANK) -> tuple[dict[str, float], dict[str, Group]]:
    """Every candidate's ``proxy`` score on ``batches`` training batches at initialisation, and
    each candidate's group. ValueError for bad input, before the model's weights are loaded."""
    task_id = "custom" if train_file else task
    check_task_source(task_id, train_file=train_file, dev_file=dev_file)
    check_model(model)
    space = HeteroLoraConfig(rank=rank, lora_targets=tuple(lora_targets), shortcuts=shortcuts, init_seed=seed)
    data = load_task(task_id, train_file=train_file, dev_file=dev_file)
    chosen = calibration_batches(data, model, batches, batch_size, max_length, seed)
    torch.manual_seed(seed)
    classifier = load_classifier(model, data.num_labels, "regression" if data.is_regression else None)
    adapters = attach(classifier, space)
    scores = compute_scores(proxy, classifier, adapters, batches=chosen, seed=seed, scoring=scoring,
                            sketch_rank=sketch_rank,
                            progress=lambda items: tqdm(items, desc=f"scoring ({proxy})", leave=False))
    return scores, adapters.groups()


def calibration_batches(data: TaskData, model: str, batches: int, batch_size: int, max_length: int,
                        seed: int) -> list[dict[str, torch.Tensor]]:
    """``batches`` shuffled training batches (seeded by ``seed``) drawn from the first
    ``4 · batches · batch_size`` training rows, tokenised for ``model``: the data of ``score`` and
    ``recommend`` (only those rows are tokenised, so a large task costs no more than a small one)."""
    tokenizer = load_tokenizer(model)
    rows = tokenize_examples(data.train, tokenizer, max_length, limit=batches * batch_size * 4)
    loader = DataLoader(rows, batch_size=batch_size, shuffle=True, collate_fn=make_collator(tokenizer),
                        generator=torch.Generator().manual_seed(seed))
    return [b for _, b in zip(range(batches), loader)]


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
    num_labels = TASKS[config.task].num_labels if config.task in TASKS else 2
    params = model_parameter_count(config.model, num_labels)
    try:
        data = load_task(config.task, train_file=config.train_file, dev_file=config.dev_file)
    except (ValueError, OSError):  # no local GLUE files and no hub: the length stays unknown
        return RunSize(params, None, None, None, None, resolve_device(config.device))
    train = len(data.train) if not config.train_limit else min(len(data.train), config.train_limit)
    split = [] if data.is_regression else [e.label for e in data.dev[data.primary_split]]
    evaluated = split[: config.dev_limit or None]
    dev_rows = len(data.dev[data.primary_split][: config.dev_limit or None])
    return RunSize(params, train, dev_rows, majority_rate(evaluated), majority_rate(split),
                   resolve_device(config.device))
