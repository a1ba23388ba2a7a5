"""Results: runs grouped by configuration, each group's statistics over seeds, and every group's
difference to a chosen reference group, paired by seed (the grid's tables, for any set of runs).

A *configuration* is everything in a run's config but the seed (:func:`~.compare.config_key`), so
the runs of one configuration are its seeds. Seeds are the replicates: a group's score per seed is
the finished runs' headline score (``summary.final_score``: the final epoch, the grid's headline;
``best_score``: the best epoch), and a seed that was run twice (a copy, a rerun on another device)
counts once, with the mean of its runs (:func:`~.stats.seed_scores`). The numbers come from
:mod:`~heterolora_core.analysis.stats` (mean ± std, Student's t 95% interval, the paired difference
and its better / worse / noise verdict); a difference is only taken against a reference of the same
task and metric (paired seeds of two tasks share nothing).

Everything here is a fraction, as records store it; points (×100) are for display
(:mod:`~heterolora_core.analysis.units`).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from heterolora_core.analysis.compare import config_key, differing_fields, goodness
from heterolora_core.analysis.stats import describe, paired_difference, seed_scores
from heterolora_core.records.record import Status
from heterolora_core.records.store import StoredRun
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import higher_is_better

REFERENCE, OTHER_TASK, NO_COMMON_SEED = "reference", "other task", "no common seed"


@dataclass(frozen=True)
class ConfigGroup:
    """The runs of one configuration: its key, its config (the first run's, seed aside), the runs,
    and per seed the final-epoch and best-epoch scores (:func:`~.stats.seed_scores`)."""

    key: str
    config: RunConfig
    runs: tuple[StoredRun, ...]
    final: dict[int, float]
    best: dict[int, float]

    @property
    def metric(self) -> str | None:
        return next((r.summary.metric for r in self.runs if r.summary.metric), None)


def group_by_config(rows: Sequence[StoredRun], finished_only: bool = True) -> list[ConfigGroup]:
    """Runs grouped by :func:`config_key`, in first-seen order. ``finished_only``: only runs whose
    status is ``done`` count (a failed or running run has no result); runs without a readable
    config are left out."""
    members: dict[str, list[StoredRun]] = {}
    for row in rows:
        if row.config is None or (finished_only and row.summary.status != Status.DONE):
            continue
        members.setdefault(config_key(row.config), []).append(row)
    return [ConfigGroup(key, runs[0].config, tuple(runs),
                        seed_scores((r.config.seed, r.summary.final_score) for r in runs),
                        seed_scores((r.config.seed, r.summary.best_score) for r in runs))
            for key, runs in members.items()]


RESULT_COLUMNS = [
    "key", "task", "metric", "runs", "n_seeds", "seeds", "final_mean", "final_std", "final_low", "final_high",
    "best_mean", "delta_mean", "delta_low", "delta_high", "delta_seeds", "verdict", "trainable_params",
    "wall_seconds",
]


def _mean(values: Iterable[object]) -> float | None:
    return describe(values).mean


def _group_row(group: ConfigGroup, reference: ConfigGroup | None) -> dict:
    final, best = describe(group.final.values()), describe(group.best.values())
    row = {
        "key": group.key, "task": group.config.task, "metric": group.metric, "runs": len(group.runs),
        "n_seeds": final.n, "seeds": sorted(group.final), "final_mean": final.mean, "final_std": final.std,
        "final_low": final.ci95[0] if final.ci95 else None, "final_high": final.ci95[1] if final.ci95 else None,
        "best_mean": best.mean, "delta_mean": None, "delta_low": None, "delta_high": None, "delta_seeds": 0,
        "verdict": None,
        "trainable_params": _mean(r.summary.trainable_params for r in group.runs),
        "wall_seconds": _mean(r.summary.wall_seconds for r in group.runs),
    }
    if reference is None:
        return row
    if group.key == reference.key:
        return {**row, "verdict": REFERENCE}
    if (group.config.task, group.metric) != (reference.config.task, reference.metric):
        return {**row, "verdict": OTHER_TASK}
    diff = paired_difference(group.final, reference.final, higher_is_better(group.metric))
    if diff is None:
        return {**row, "verdict": NO_COMMON_SEED}
    low, high = diff.ci95 if diff.ci95 else (None, None)
    return {**row, "delta_mean": diff.mean, "delta_low": low, "delta_high": high, "delta_seeds": len(diff.seeds),
            "verdict": diff.verdict}


def results_table(groups: Sequence[ConfigGroup], reference: str | None = None) -> pd.DataFrame:
    """One row per configuration group: columns :data:`RESULT_COLUMNS` (fractions; ``final_low`` /
    ``final_high`` the 95% t-interval of the mean final score; ``delta_*`` the paired difference to
    the group whose key is ``reference``, over the ``delta_seeds`` seeds both have, with its
    ``verdict``: better / worse / noise / ``n/a (1 seed)``, or ``reference``, ``other task``,
    ``no common seed``), then one column per config field that differs between the groups.

    Sorted by task, then mean final score, best first in the metric's direction (a loss or a
    perplexity: least first; groups without a score last). An unknown ``reference`` key is no
    reference (no differences); a verdict reads the difference in the metric's direction.
    """
    by_key = {g.key: g for g in groups}
    ref = by_key.get(reference) if reference is not None else None
    differing = [f for f in differing_fields(g.config for g in groups) if f not in RESULT_COLUMNS]
    records = [{**_group_row(g, ref), **{name: getattr(g.config, name) for name in differing}} for g in groups]
    frame = pd.DataFrame.from_records(records, columns=RESULT_COLUMNS + differing)
    numeric = ["final_mean", "final_std", "final_low", "final_high", "best_mean", "delta_mean", "delta_low",
               "delta_high", "trainable_params", "wall_seconds"]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    frame["_goodness"] = goodness(frame["final_mean"], frame["metric"])
    frame = frame.sort_values(["task", "_goodness"], ascending=[True, False], na_position="last", kind="stable")
    return frame.drop(columns="_goodness").reset_index(drop=True)


def default_reference(groups: Sequence[ConfigGroup]) -> str | None:
    """The group a results table opens against: among the groups of the task with the most runs,
    the best mean final score (in the metric's direction) of those with the most seeds (None
    without a scored group)."""
    scored = [g for g in groups if g.final]
    if not scored:
        return None
    runs_per_task: dict[str, int] = {}
    for g in scored:
        runs_per_task[g.config.task] = runs_per_task.get(g.config.task, 0) + len(g.runs)
    task = max(runs_per_task, key=lambda t: (runs_per_task[t], t))
    sign = lambda g: 1.0 if higher_is_better(g.metric) else -1.0  # noqa: E731
    return max((g for g in scored if g.config.task == task),
               key=lambda g: (len(g.final), sign(g) * describe(g.final.values()).mean)).key
