"""Where runs put their budget: pure pandas functions over reallocation records.

Inputs are :class:`~heterolora_core.records.record.ReallocationLine` lists (what
``RunRecord.reallocations()`` reads); outputs are pandas objects. Nothing here reads files, so
every function is cheap to test and the dashboard pages only lay results out.

Vocabulary (:mod:`heterolora_core.vocab`; method doc sections 2 and 6): a *module* is one
candidate ``layer.{i}.{group}.{kind}``; its *group* is ``lora`` or ``shortcut``; a *reallocation*
is one line of ``reallocations.jsonl`` (a static run has exactly one); the *enable frequency* of a
module = reallocations in which it was enabled / all reallocations.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from heterolora_core.methods import registry
from heterolora_core.records.record import MAX_LAYERS, ReallocationLine
from heterolora_core.vocab import Group, ModuleName, kind_order, module_sort_key

MODULE_COLUMNS = ["module", "layer", "group", "kind"]
GROUPS = tuple(g.value for g in Group)


def modules_frame(names: Iterable[str]) -> pd.DataFrame:
    """One row per module name, sorted by :func:`~heterolora_core.vocab.module_sort_key`.

    Returns columns ``module, layer, group, kind``; names that do not parse are dropped.
    """
    rows = []
    for name in sorted(set(names), key=module_sort_key):
        parsed = ModuleName.parse(name)
        if parsed is not None:
            rows.append((name, parsed.layer, parsed.group.value, parsed.kind))
    return pd.DataFrame(rows, columns=MODULE_COLUMNS).astype({"layer": "int64"})


def all_modules(reallocations: Sequence[ReallocationLine]) -> list[str]:
    """Every module named in any reallocation (scored or enabled), in module order."""
    names: set[str] = set()
    for realloc in reallocations:
        names.update(realloc.scores)
        names.update(realloc.enabled)
    return sorted(names, key=module_sort_key)


def n_layers_of(names: Iterable[str], stated: object = None) -> int:
    """The model's layer count: one more than the highest layer index among ``names``, or
    ``stated`` (a record's ``n_layers``) when larger; never more than
    :data:`~heterolora_core.records.record.MAX_LAYERS` (what a record claims past it is not a model)."""
    highest = max((p.layer for p in map(ModuleName.parse, names) if p is not None and p.layer < MAX_LAYERS),
                  default=-1)
    stated = stated if isinstance(stated, int) and not isinstance(stated, bool) and stated <= MAX_LAYERS else 0
    return max(highest + 1, stated)


def kinds_present(modules: pd.DataFrame, group: str) -> list[str]:
    """The kinds of ``group`` that occur in ``modules`` (a :func:`modules_frame`), canonical order."""
    kinds = set(modules.loc[modules["group"] == group, "kind"])
    return sorted(kinds, key=kind_order)


# ---------------------------------------------------------------------------------------------
# Reallocations: frequency, timeline, scores
# ---------------------------------------------------------------------------------------------


def enable_frequency(reallocations: Sequence[ReallocationLine]) -> pd.DataFrame:
    """Per-module enable frequency.

    Returns one row per module (every module seen in any reallocation), columns
    ``module, layer, group, kind, n_enabled, n_reallocations, frequency`` with ``frequency`` in
    [0, 1] (NaN for every module when there is no reallocation).
    """
    modules = modules_frame(all_modules(reallocations))
    counts: dict[str, int] = {}
    for realloc in reallocations:
        for name in set(realloc.enabled):
            counts[name] = counts.get(name, 0) + 1
    total = len(reallocations)
    modules["n_enabled"] = modules["module"].map(counts).fillna(0).astype("int64")
    modules["n_reallocations"] = total
    modules["frequency"] = modules["n_enabled"] / total if total else np.nan
    return modules


def frequency_grid(frequency: pd.DataFrame, group: str, n_layers: int | None = None) -> pd.DataFrame:
    """Layers x kinds matrix of one group's enable frequency (the paper's Figures 4 / 5).

    ``frequency`` is an :func:`enable_frequency` frame. Returns a frame indexed by layer
    ``0 .. n_layers-1`` (every layer gets a row, even one without candidates of this group) with one
    column per kind of ``group`` present, canonical order; NaN where a layer has no such candidate
    (``cross_ffn`` in layer 0). At most :data:`~heterolora_core.records.record.MAX_LAYERS` rows.
    """
    part = frequency[(frequency["group"] == group) & (frequency["layer"] < MAX_LAYERS)]
    kinds = kinds_present(part, group)
    n_layers = min(n_layers_of(frequency["module"]) if n_layers is None else int(n_layers), MAX_LAYERS)
    grid = part.pivot_table(index="layer", columns="kind", values="frequency", aggfunc="mean", dropna=False)
    grid = grid.reindex(index=range(n_layers), columns=kinds)
    grid.index.name = "layer"
    grid.columns.name = "kind"
    return grid.astype("float64")


class Timeline(NamedTuple):
    """Module x reallocation matrices. ``enabled`` holds 0/1, ``scores`` floats (NaN = unscored);
    both are indexed by module (in module order) with one column per reallocation
    (0 .. R-1); ``steps`` gives the training step of each column."""

    enabled: pd.DataFrame
    scores: pd.DataFrame
    steps: list[int]


def timeline(reallocations: Sequence[ReallocationLine]) -> Timeline:
    """The on/off state and proxy score of every module at every reallocation."""
    modules = all_modules(reallocations)
    index = {name: i for i, name in enumerate(modules)}
    n_r = len(reallocations)
    enabled = np.zeros((len(modules), n_r), dtype=np.int8)
    scores = np.full((len(modules), n_r), np.nan, dtype=np.float64)
    for j, realloc in enumerate(reallocations):
        for name, value in realloc.scores.items():
            scores[index[name], j] = value
        for name in realloc.enabled:
            enabled[index[name], j] = 1
    columns = pd.RangeIndex(n_r, name="reallocation")
    idx = pd.Index(modules, name="module")
    steps = [r.step for r in reallocations]
    return Timeline(pd.DataFrame(enabled, index=idx, columns=columns), pd.DataFrame(scores, index=idx, columns=columns), steps)


def score_distribution(reallocations: Sequence[ReallocationLine]) -> pd.DataFrame:
    """Every proxy score of every reallocation, long format.

    Returns columns ``reallocation, step, module, layer, group, kind, score, enabled``; one row per
    (reallocation, scored module).
    """
    tl = timeline(reallocations)
    if tl.scores.empty:
        return pd.DataFrame(columns=["reallocation", "step", *MODULE_COLUMNS, "score", "enabled"])
    long = tl.scores.stack(future_stack=True).rename("score").reset_index()
    long["enabled"] = tl.enabled.stack(future_stack=True).to_numpy().astype(bool)
    long = long.dropna(subset=["score"])
    long["step"] = long["reallocation"].map(dict(enumerate(tl.steps)))
    meta = modules_frame(tl.scores.index)
    long = long.merge(meta, on="module", how="left")
    return long[["reallocation", "step", *MODULE_COLUMNS, "score", "enabled"]]


SCORE_SUMMARY_COLUMNS = ["group", "kind", "n", "min", "lowerfence", "q1", "median", "q3", "upperfence", "max", "mean"]


def score_summary(distribution: pd.DataFrame) -> pd.DataFrame:
    """Box-plot statistics of the proxy scores per module kind, for drawing without shipping every
    score to the browser.

    ``distribution`` is a :func:`score_distribution` frame. Returns one row per (group, kind) in
    canonical kind order with columns ``group, kind, n, min, lowerfence, q1, median, q3, upperfence,
    max, mean``; the fences are Tukey's (1.5 IQR beyond the quartiles, clipped to the data).
    """
    if distribution.empty:
        return pd.DataFrame(columns=SCORE_SUMMARY_COLUMNS)
    grouped = distribution.groupby(["group", "kind"], sort=False)["score"]
    stats = grouped.quantile([0.25, 0.5, 0.75]).unstack()
    stats.columns = ["q1", "median", "q3"]
    stats["n"] = grouped.size()
    stats["min"], stats["max"], stats["mean"] = grouped.min(), grouped.max(), grouped.mean()
    iqr = stats["q3"] - stats["q1"]
    # Tukey fences: the most extreme data points within 1.5 IQR of the box
    low_limit = (stats["q1"] - 1.5 * iqr).rename("low_limit")
    high_limit = (stats["q3"] + 1.5 * iqr).rename("high_limit")
    with_limits = distribution.join(low_limit, on=["group", "kind"]).join(high_limit, on=["group", "kind"])
    inside = with_limits[(with_limits["score"] >= with_limits["low_limit"]) & (with_limits["score"] <= with_limits["high_limit"])]
    inside_groups = inside.groupby(["group", "kind"], sort=False)["score"]
    stats["lowerfence"] = inside_groups.min().reindex(stats.index).fillna(stats["min"])
    stats["upperfence"] = inside_groups.max().reindex(stats.index).fillna(stats["max"])
    out = stats.reset_index()
    out["_order"] = out["kind"].map(kind_order)
    out = out.sort_values(["_order", "group"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return out[SCORE_SUMMARY_COLUMNS]


def mean_scores(reallocations: Sequence[ReallocationLine]) -> pd.Series:
    """Mean proxy score of each module over the reallocations (index: module, NaN-skipping)."""
    return timeline(reallocations).scores.mean(axis=1, skipna=True)


def enabled_set(reallocations: Sequence[ReallocationLine], which: str = "final") -> frozenset[str]:
    """The set of enabled modules of a run.

    ``which="final"``: the last reallocation's selection (a static run's only one);
    ``which="majority"``: modules enabled in at least half of the reallocations.
    """
    if not reallocations:
        return frozenset()
    if which == "final":
        return frozenset(reallocations[-1].enabled)
    if which == "majority":
        freq = enable_frequency(reallocations)
        return frozenset(freq.loc[freq["frequency"] >= 0.5, "module"])
    raise ValueError(f"unknown enabled-set rule {which!r}; expected 'final' or 'majority'")


def slot_shares(reallocations: Sequence[ReallocationLine]) -> dict[str, dict[Any, float]]:
    """Where a run's enabled slots went: ``{"layer": {layer: share}, "group": {group: share}}``.

    A module's weight is its enable frequency (reallocations it was on in / all reallocations);
    share = Σ weight over the group / Σ weight over every module, so each mapping sums to 1
    (empty mappings when nothing was ever enabled).
    """
    freq = enable_frequency(reallocations)
    total = float(freq["frequency"].sum()) if len(freq) else 0.0
    if not total or np.isnan(total):
        return {"layer": {}, "group": {}}
    return {key: {k: float(v) / total for k, v in freq.groupby(key)["frequency"].sum().items()}
            for key in ("layer", "group")}


def set_churn(reallocations: Sequence[ReallocationLine]) -> dict[str, float | int]:
    """How much a dynamic search moves its enabled set.

    Over consecutive reallocations t-1 -> t with enabled sets E: ``changes`` counts the
    reallocations whose set differs from the previous one; ``mean_swapped`` is the mean fraction
    of the previous set that was switched off, |E_{t-1} \\ E_t| / |E_{t-1}| (0 = frozen, 1 = all
    replaced); ``ever_enabled`` counts the modules that were on at least once, against
    ``set_size`` = |E| of the first selection. Empty record: zeros.
    """
    sets = [frozenset(r.enabled) for r in reallocations]
    pairs = list(zip(sets, sets[1:]))
    swapped = [len(prev - cur) / len(prev) for prev, cur in pairs if prev]
    return {
        "reallocations": len(sets),
        "changes": sum(prev != cur for prev, cur in pairs),
        "mean_swapped": float(np.mean(swapped)) if swapped else 0.0,
        "ever_enabled": len(frozenset().union(*sets)) if sets else 0,
        "set_size": len(sets[0]) if sets else 0,
    }


def score_drift(reallocations: Sequence[ReallocationLine]) -> dict[str, float | int | None]:
    """Does training a module lower its own proxy score? The signature of a self-defeating search.

    For every module m and consecutive reallocations t-1 -> t with s_{t-1}(m) > 0, the ratio
    s_t(m) / s_{t-1}(m), split by whether m was in the enabled set E_{t-1} (trained in between) or
    not (resting). ``on_median`` / ``off_median`` are the medians of the two groups and
    ``on_over_off`` their quotient: below 1, the modules being trained lose score against the resting
    ones, so a top-k selection swaps them out at the next reallocation (churn). ``pairs_on`` /
    ``pairs_off`` count the ratios. A group with no ratio gives None.
    """
    on, off = [], []
    for prev, cur in zip(reallocations, reallocations[1:]):
        enabled = set(prev.enabled)
        before, after = prev.scores, cur.scores
        for module, old in before.items():
            if old > 0 and module in after:
                (on if module in enabled else off).append(after[module] / old)
    on_median = float(np.median(on)) if on else None
    off_median = float(np.median(off)) if off else None
    return {
        "on_median": on_median, "off_median": off_median,
        "on_over_off": on_median / off_median if on_median is not None and off_median else None,
        "pairs_on": len(on), "pairs_off": len(off),
    }


# ---------------------------------------------------------------------------------------------
# Ranks: methods that give each module its own rank (AdaLoRA; rank-allocating modes)
# ---------------------------------------------------------------------------------------------


def has_ranks(reallocations: Sequence[ReallocationLine]) -> bool:
    """True when any reallocation line carries per-module ranks."""
    return any(r.ranks is not None for r in reallocations)


def line_ranks(line: ReallocationLine) -> dict[str, int]:
    """The ranks of one reallocation's enabled modules (a module with no stated rank: 0). Every
    module absent from the result is off: rank 0. Empty for a line without ranks."""
    if line.ranks is None:
        return {}
    return {name: int(line.ranks.get(name, 0)) for name in line.enabled}


def rank_frame(reallocations: Sequence[ReallocationLine], at: int = -1) -> pd.DataFrame:
    """Every module's rank at reallocation ``at`` (default: the last, the final allocation; see
    :func:`line_ranks`).

    Returns columns ``module, layer, group, kind, rank`` (0 = off), one row per module named in any
    reallocation; empty without reallocations. IndexError for an ``at`` the run does not have.
    """
    modules = modules_frame(all_modules(reallocations))
    if not reallocations:
        return modules.assign(rank=pd.Series(dtype="int64"))
    ranks = line_ranks(reallocations[at])
    modules["rank"] = modules["module"].map(ranks).fillna(0).astype("int64")
    return modules


def rank_grid(ranks: pd.DataFrame, group: str, n_layers: int | None = None) -> pd.DataFrame:
    """Layers x kinds matrix of one group's ranks (a :func:`rank_frame`), like
    :func:`frequency_grid`: every layer a row, one column per kind present; 0 = off, NaN where a
    layer has no such candidate."""
    return frequency_grid(ranks.rename(columns={"rank": "frequency"}), group, n_layers)


class RankTimeline(NamedTuple):
    """Module x reallocation matrix of ranks (0 = off), indexed by module (module order) with one
    column per reallocation (0 .. R-1); ``steps`` gives the training step of each column."""

    ranks: pd.DataFrame
    steps: list[int]


def rank_timeline(reallocations: Sequence[ReallocationLine]) -> RankTimeline:
    """Every module's rank at every reallocation (:func:`line_ranks`; 0 = off)."""
    modules = all_modules(reallocations)
    index = {name: i for i, name in enumerate(modules)}
    values = np.zeros((len(modules), len(reallocations)), dtype=np.int64)
    for j, line in enumerate(reallocations):
        for name, rank in line_ranks(line).items():
            values[index[name], j] = rank
    frame = pd.DataFrame(values, index=pd.Index(modules, name="module"),
                         columns=pd.RangeIndex(len(reallocations), name="reallocation"))
    return RankTimeline(frame, [r.step for r in reallocations])


def default_run_index(runs: Sequence[tuple[object, bool]]) -> int:
    """Which of ``runs`` (``(mode, has a recorded selection)``, newest first) the Allocation page
    opens on: the newest with a selection whose method allocates (searches or reallocates) and is
    not a random control, else the newest allocating one, else the newest with a selection, else
    the first."""
    def allocates(mode: object, controls: bool) -> bool:
        method = registry.find(mode)
        return method is not None and (method.searches or method.reallocates) and (controls or not method.control)

    for wanted in (lambda m, has: has and allocates(m, False), lambda m, has: has and allocates(m, True),
                   lambda m, has: has):
        found = next((i for i, (mode, has) in enumerate(runs) if wanted(mode, has)), None)
        if found is not None:
            return found
    return 0
