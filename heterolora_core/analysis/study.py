"""The verdict of an allocation study (:mod:`heterolora_core.study`): does allocation pay here?

From a study's finished runs: the arms' scores over seeds, the allocation ``A`` against uniform LoRA
``U`` and against each control (``R`` random ranks, ``T`` ranks shuffled across layers, ``I``
inverted ranks), and ``H`` (A at half the budget) against both uniforms, every difference paired by
seed with its 95% interval (:func:`~.stats.paired_difference`: better / worse / noise), plus one
plain sentence on top that follows those intervals and nothing else.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from heterolora_core.analysis import allocation as alloc
from heterolora_core.analysis import units
from heterolora_core.analysis.compare import mean_grid
from heterolora_core.analysis.labels import plural
from heterolora_core.analysis.stats import PairedDifference, describe, paired_difference, seed_scores
from heterolora_core.methods import registry
from heterolora_core.records.record import Status
from heterolora_core.records.store import StoredRun
from heterolora_core.study import ARM_LABELS, ARM_MODES, ARMS, arm_of
from heterolora_core.vocab import higher_is_better

#: The comparisons a verdict reports: (arm, against).
COMPARISONS = (("A", "U"), ("A", "R"), ("A", "T"), ("A", "I"), ("H", "U"), ("H", "UH"))


@dataclass(frozen=True)
class ArmScores:
    """One arm's final scores per seed and their mean ± std."""

    arm: str
    label: str
    scores: dict[int, float]
    mean: float | None
    std: float | None
    lrs: tuple[float, ...] = ()  # the learning rates of its runs (one, unless the study chose per arm)


@dataclass(frozen=True)
class StudyComparison:
    """``arm`` minus ``against``, paired by seed (None: no seed in common)."""

    arm: str
    against: str
    difference: PairedDifference | None

    @property
    def verdict(self) -> str:
        return self.difference.verdict if self.difference is not None else "not run"


@dataclass(frozen=True)
class StudyVerdict:
    """A study's arms, its comparisons and the sentence that sums them up."""

    sweep_id: str
    rank: int
    budget: int
    arms: dict[str, ArmScores]
    comparisons: tuple[StudyComparison, ...]
    sentence: str
    metric: str | None = None  # the runs' headline metric; its direction reads the differences
    search_shares: tuple[float, ...] = ()  # 100 · search seconds / wall seconds of each finished allocating run

    def search_cost_text(self) -> str | None:
        """``Search cost: median 1.4% of wall time (0.5–2.7%, 25 runs of the allocating arms)``; None without runs."""
        if not self.search_shares:
            return None
        shares = sorted(self.search_shares)
        spread = f"{shares[0]:.1f}–{shares[-1]:.1f}%, " if len(shares) > 1 else ""
        return (f"Search cost: median {statistics.median(shares):.1f}% of wall time "
                f"({spread}{plural(len(shares), 'run')} of the allocating arms)")

    def comparison(self, arm: str, against: str) -> StudyComparison:
        return next(c for c in self.comparisons if (c.arm, c.against) == (arm, against))


def _uniform_reference(runs: Sequence[StoredRun]) -> tuple[int, int] | None:
    """(U's rank, its parameter count P) of a study's runs: the baseline runs of the largest rank."""
    uniform = [r for r in runs if (m := registry.find(r.config.mode)) is not None and m.baseline]
    if not uniform:
        return None
    top = max(int(r.config.rank) for r in uniform)
    counts = [r.summary.trainable_params for r in uniform if int(r.config.rank) == top and r.summary.trainable_params]
    return (top, int(counts[0])) if counts else None


def _amount(d: PairedDifference, metric: str | None) -> str:
    """``+1.23 points [0.2, 2.3]`` (a loss or perplexity: ``-0.05 perplexity [-0.1, -0.0]``)."""
    interval = f" {units.format_interval(d.ci95, metric=metric)}" if d.ci95 else ""
    return f"{units.format_score(d.mean, metric, signed=True)} {units.unit(metric)}{interval}"


def verdict_sentence(comparisons: Sequence[StudyComparison], metric: str | None = None) -> str:
    """One line that follows the intervals: A against U first, then what the controls say. The
    verdicts are read in the metric's direction (a lower loss beats), the amounts in its unit."""
    by_pair = {(c.arm, c.against): c for c in comparisons}
    head = by_pair.get(("A", "U"))
    if head is None or head.difference is None:
        return "Not decided yet: the allocation and uniform LoRA share no finished seed."
    d = head.difference
    n = plural(len(d.seeds), "seed")
    if d.verdict == "better":
        sentence = f"On this model and task, the allocation beat uniform LoRA by {_amount(d, metric)} over {n}"
    elif d.verdict == "worse":
        sentence = f"On this model and task, the allocation lost to uniform LoRA by {_amount(d, metric)} over {n}"
    elif d.verdict == "noise":
        sentence = f"On this model and task, the allocation was indistinguishable from uniform LoRA ({_amount(d, metric)}, noise, {n})"
    else:
        sentence = f"On this model and task, the allocation differs from uniform LoRA by {_amount(d, metric)} on one seed: no verdict"
    controls = []
    for against, what in (("R", "random ranks"), ("T", "layer-shuffled ranks"), ("I", "inverted ranks")):
        c = by_pair.get(("A", against))
        if c is not None and c.difference is not None and c.difference.verdict in ("better", "worse", "noise"):
            word = {"better": "beat", "worse": "lost to", "noise": "tied"}[c.difference.verdict]
            controls.append(f"{word} {what} ({units.format_score(c.difference.mean, metric, signed=True)})")
    half = by_pair.get(("H", "U"))
    tail = ""
    if half is not None and half.difference is not None and half.difference.verdict in ("better", "worse", "noise"):
        word = {"better": "above", "worse": "below", "noise": "level with"}[half.difference.verdict]
        tail = f"; at half the budget it was {word} full-budget uniform LoRA ({units.format_score(half.difference.mean, metric, signed=True)})"
    return sentence + ("; it " + ", ".join(controls) if controls else "") + tail + "."


def study_verdict(rows: Sequence[StoredRun], sweep_id: str) -> StudyVerdict | None:
    """The verdict of the finished runs of study ``sweep_id`` among ``rows`` (None when it has no
    finished uniform run to define the budget)."""
    runs = _finished(rows, sweep_id)
    reference = _uniform_reference(runs)
    if reference is None:
        return None
    rank, budget = reference
    metric = next((r.summary.metric for r in runs if r.summary.metric), None)
    by_arm = _by_arm(runs, rank, budget)
    arms = {}
    for arm in ARMS:
        scores = seed_scores((r.config.seed, r.summary.final_score) for r in by_arm.get(arm, []))
        stats = describe(scores.values())
        lrs = tuple(sorted({float(r.config.lr) for r in by_arm.get(arm, [])}))
        arms[arm] = ArmScores(arm, ARM_LABELS[arm], scores, stats.mean, stats.std, lrs)
    comparisons = tuple(StudyComparison(a, b, paired_difference(arms[a].scores, arms[b].scores,
                                                                higher_is_better(metric)))
                        for a, b in COMPARISONS)
    # A record's times are finite or None (records.record); one with no positive wall time or a negative
    # search time says nothing about the share, so it is left out rather than divided by.
    searching = [r for arm, rs in by_arm.items() if not registry.info(ARM_MODES[arm]).baseline for r in rs]
    shares = tuple(100 * r.summary.search_seconds / r.summary.wall_seconds for r in searching
                   if r.summary.search_seconds is not None and r.summary.search_seconds >= 0
                   and (r.summary.wall_seconds or 0) > 0)
    return StudyVerdict(sweep_id, rank, budget, arms, comparisons, verdict_sentence(comparisons, metric), metric,
                        shares)


@dataclass(frozen=True)
class LrChoice:
    """One arm's learning rate chosen on held-out training rows: each rate's score there, and the best."""

    arm: str
    scores: dict[float, float]
    chosen: float
    metric: str | None = None  # the held-out score's metric


def choose_learning_rates(rows: Sequence[StoredRun], tune_id: str, lrs: Sequence[float], rank: int,
                          budget: int) -> list[LrChoice] | None:
    """Each arm's learning rate from the finished runs of the tuning sweep ``tune_id``
    (:func:`heterolora_core.study.tuning_spec`): the rate in ``lrs`` whose held-out score is best in
    the metric's direction (a tie goes to the smaller rate). None until every arm has a finished run
    at every rate: a choice from part of the rates is no choice."""
    runs = _finished(rows, tune_id)
    metric = next((r.summary.metric for r in runs if r.summary.metric), None)
    by_arm = _by_arm(runs, rank, budget)
    rates = sorted({float(lr) for lr in lrs})
    choices = []
    for arm in ARMS:
        scores = {float(r.config.lr): r.summary.final_score for r in by_arm.get(arm, [])
                  if r.summary.final_score is not None}
        if any(lr not in scores for lr in rates):
            return None
        sign = 1 if higher_is_better(metric) else -1
        chosen = max(rates, key=lambda lr: (sign * scores[lr], -lr))
        choices.append(LrChoice(arm, {lr: scores[lr] for lr in rates}, chosen, metric))
    return choices


def _finished(rows: Sequence[StoredRun], sweep_id: str) -> list[StoredRun]:
    return [r for r in rows if r.sweep_id == sweep_id and r.config is not None and r.summary.status == Status.DONE]


def _by_arm(runs: Sequence[StoredRun], rank: int, budget: int) -> dict[str, list[StoredRun]]:
    by_arm: dict[str, list[StoredRun]] = {}
    for r in runs:
        arm = arm_of(r.config, rank, budget)
        if arm is not None:
            by_arm.setdefault(arm, []).append(r)
    return by_arm


@dataclass(frozen=True)
class RankPlacement:
    """Where an arm's final ranks went, over its seeds: ``grid`` is the layers x kinds mean rank of
    the LoRA group (0 = off; :func:`~.allocation.rank_grid`), ``by_kind`` and ``by_layer`` each
    kind's and each layer's share of the grid's total rank, in percent (they sum to 100)."""

    grid: pd.DataFrame
    by_kind: pd.Series
    by_layer: pd.Series
    seeds: int

    def shares_text(self, by: str) -> str:
        """``q 4%, k 13%, …`` (``by="kind"``) or ``layer 0 10%, layer 1 12%, …`` (``by="layer"``)."""
        shares = self.by_kind if by == "kind" else self.by_layer.rename(lambda i: f"layer {i}")
        return ", ".join(f"{k} {v:.0f}%" for k, v in shares.items())


def rank_placement(frames: Sequence[pd.DataFrame], n_layers: int | None = None) -> RankPlacement | None:
    """The :class:`RankPlacement` of an arm's seeds, from one :func:`~.allocation.rank_frame` per
    seed (its final allocation). None when no frame holds a LoRA rank.

    grid[layer, kind] = mean over seeds of that module's rank; by_kind[k] = 100 · Σ_layers grid[·, k] / Σ grid.
    """
    grids = [alloc.rank_grid(f, "lora", n_layers) for f in frames if len(f)]
    grid = mean_grid([g for g in grids if g.size])
    total = float(grid.sum().sum()) if grid.size else 0.0
    if total <= 0:
        return None
    return RankPlacement(grid, 100 * grid.sum(axis=0) / total, 100 * grid.sum(axis=1) / total, len(grids))


def arm_runs(rows: Sequence[StoredRun], verdict: StudyVerdict, arm: str) -> list[StoredRun]:
    """The finished runs of one arm of the study ``verdict`` was made from (where A's ranks went)."""
    return _by_arm(_finished(rows, verdict.sweep_id), verdict.rank, verdict.budget).get(arm, [])
