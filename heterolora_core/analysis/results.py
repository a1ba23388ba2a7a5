"""Results: runs grouped by configuration, each group's statistics over seeds, and every group's
difference to a chosen reference group, paired by seed (the grid's tables, for any set of runs).

A *configuration* is everything in a run's config but the seed (:func:`~.compare.config_key`), so
the runs of one configuration are its seeds. By default a configuration is also split by the kind of
evidence (:mod:`~.evidence`: the device a run was measured on and torch's minor version), and a
difference is only taken within one kind: a GPU run and a CPU run of one seed are two measurements
that differ by more than noise, not one seed twice. Short runs (:func:`~.evidence.is_short_run`)
are no results and are left out unless asked for. Seeds are the replicates: a group's score per seed is
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
from heterolora_core.analysis.evidence import Evidence, evidence_of, is_short_run
from heterolora_core.analysis.stats import describe, paired_difference, seed_scores
from heterolora_core.methods import registry
from heterolora_core.records.record import Status
from heterolora_core.records.store import StoredRun
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import higher_is_better

REFERENCE, OTHER_TASK, NO_COMMON_SEED = "reference", "other task", "no common seed"
OTHER_EVIDENCE = "other device"


def run_evidence(row: StoredRun) -> Evidence:
    """The :class:`~.evidence.Evidence` of a stored run."""
    return evidence_of(row.config, row.summary, row.versions)


def is_short(row: StoredRun) -> bool:
    """Whether a stored run is a short run (:func:`~.evidence.is_short_run`)."""
    return is_short_run(row.config, row.summary)


@dataclass(frozen=True)
class ConfigGroup:
    """The runs of one configuration: its key, its config (the first run's, seed aside), the runs,
    per seed the final-epoch and best-epoch scores (:func:`~.stats.seed_scores`), the kinds of
    evidence its runs are (``evidences``) and, when groups are split by kind, its one kind
    (``evidence``; None when kinds were pooled)."""

    key: str
    config: RunConfig
    runs: tuple[StoredRun, ...]
    final: dict[int, float]
    best: dict[int, float]
    evidence: Evidence | None = None
    evidences: frozenset[Evidence] = frozenset()

    @property
    def metric(self) -> str | None:
        return next((r.summary.metric for r in self.runs if r.summary.metric), None)

    @property
    def mixed(self) -> bool:
        """True when the group pools runs of more than one kind of evidence."""
        return len(self.evidences) > 1


def group_by_config(rows: Sequence[StoredRun], finished_only: bool = True, split_evidence: bool = True,
                    include_short: bool = False) -> list[ConfigGroup]:
    """Runs grouped by :func:`config_key` (and, with ``split_evidence``, by
    :func:`run_evidence`), in first-seen order. ``finished_only``: only runs whose status is
    ``done`` count (a failed or running run has no result); short runs only with
    ``include_short``; runs without a readable config are left out."""
    members: dict[str, list[StoredRun]] = {}
    for row in rows:
        if row.config is None or (finished_only and row.summary.status != Status.DONE):
            continue
        if not include_short and is_short(row):
            continue
        key = config_key(row.config)
        if split_evidence:
            key = f"{key}|{run_evidence(row).text}"
        members.setdefault(key, []).append(row)
    return [ConfigGroup(key, runs[0].config, tuple(runs),
                        seed_scores((r.config.seed, r.summary.final_score) for r in runs),
                        seed_scores((r.config.seed, r.summary.best_score) for r in runs),
                        run_evidence(runs[0]) if split_evidence else None,
                        frozenset(run_evidence(r) for r in runs))
            for key, runs in members.items()]


def evidence_tokens(groups: Sequence[ConfigGroup]) -> dict[str, tuple[str, ...]]:
    """Key -> the label tokens of the group's kind of evidence, for
    :func:`~.labels.short_labels`'s ``extras``: the device (``GPU``), and torch's version only
    where groups on one kind of device differ in it; a pooled group joins its kinds with ``+``."""
    torch_by_device: dict[str, set] = {}
    for g in groups:
        for kind in g.evidences:
            torch_by_device.setdefault(kind.device, set()).add(kind.torch)
    out = {}
    for g in groups:
        kinds = sorted([g.evidence] if g.evidence is not None else g.evidences)
        devices = " + ".join(dict.fromkeys(k.device for k in kinds))
        versions = [k.tokens[1] for k in kinds if len(torch_by_device.get(k.device, ())) > 1]
        out[g.key] = (devices, " + ".join(dict.fromkeys(versions))) if versions else (devices,)
    return out


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
    if group.evidence != reference.evidence:  # both split by kind of evidence, and of two kinds
        return {**row, "verdict": OTHER_EVIDENCE}
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
    """The group a results table opens against: plain LoRA, what every allocation must beat.

    Among the scored groups of the task with the most runs, and of its kind of evidence with the
    most runs, the baseline method's (:attr:`~heterolora_core.methods.registry.MethodInfo.baseline`)
    group with the most seeds, the best mean final score among those (the strongest plain LoRA);
    without a baseline group, the best of the groups with the most seeds. None without a scored
    group.
    """
    scored = [g for g in groups if g.final]
    if not scored:
        return None
    task = _most_runs(scored, lambda g: g.config.task)
    scored = [g for g in scored if g.config.task == task]
    evidence = _most_runs(scored, lambda g: g.evidence.text if g.evidence else "")
    scored = [g for g in scored if (g.evidence.text if g.evidence else "") == evidence]
    baselines = [g for g in scored if (m := registry.find(g.config.mode)) is not None and m.baseline]
    sign = lambda g: 1.0 if higher_is_better(g.metric) else -1.0  # noqa: E731  the best in the metric's direction
    return max(baselines or scored, key=lambda g: (len(g.final), sign(g) * describe(g.final.values()).mean)).key


def _most_runs(groups: Sequence[ConfigGroup], value) -> str:
    """The value of ``value(group)`` whose groups hold the most runs (ties: the larger value)."""
    runs: dict[str, int] = {}
    for g in groups:
        runs[value(g)] = runs.get(value(g), 0) + len(g.runs)
    return max(runs, key=lambda v: (runs[v], v))


def short_runs_left_out(rows: Sequence[StoredRun]) -> int:
    """How many finished runs :func:`group_by_config` leaves out as short runs (by default)."""
    return sum(1 for r in rows if r.config is not None and r.summary.status == Status.DONE and is_short(r))


def comparable(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`results_table` that can be paired with its reference: the reference
    and every group of its task and kind of evidence (all rows when there is no reference)."""
    if not (table["verdict"] == REFERENCE).any():
        return table
    return table[~table["verdict"].isin((OTHER_TASK, OTHER_EVIDENCE))]
