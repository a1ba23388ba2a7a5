"""Pure pandas functions over run records: what the dashboard shows, computed without Streamlit.

Inputs are the plain objects that :class:`heterolora_core.runs.RunRecord` reads (``config()``,
``summary()``, ``metrics()``, ``reallocations()``); outputs are pandas objects. Nothing here reads
files, so every function is cheap to test and the dashboard pages only lay results out.

Vocabulary (``docs/heterolora-method.md`` sections 2 and 6):

- a *module* is one candidate switch, named ``layer.{i}.lora.{kind}`` or ``layer.{i}.shortcut.{kind}``;
- its *family* is ``lora`` or ``shortcut``, its *kind* one of :data:`LORA_KINDS` / :data:`SHORTCUT_KINDS`;
- a *reallocation* is one line of ``reallocations.jsonl``: ``{"step", "scores": {module: float},
  "enabled": [module, ...]}``; a static run has exactly one;
- the *enable frequency* of a module = reallocations in which it was enabled / all reallocations.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

LORA_KINDS = ("q", "k", "v", "o", "ffn_in", "ffn_gate", "ffn_out")
SHORTCUT_KINDS = ("res_attn", "res_ffn", "cross_attn", "cross_ffn")
FAMILIES = ("lora", "shortcut")
KIND_LABELS = {
    "q": "query",
    "k": "key",
    "v": "value",
    "o": "output",
    "ffn_in": "FFN in",
    "ffn_gate": "FFN gate",
    "ffn_out": "FFN out",
    "res_attn": "res_attn",
    "res_ffn": "res_ffn",
    "cross_attn": "cross_attn",
    "cross_ffn": "cross_ffn",
}
_KIND_ORDER = {kind: i for i, kind in enumerate(LORA_KINDS + SHORTCUT_KINDS)}
_MODULE_RE = re.compile(r"^layer\.(\d+)\.(lora|shortcut)\.([A-Za-z0-9_]+)$")

MODULE_COLUMNS = ["module", "layer", "family", "kind"]


class ModuleName(NamedTuple):
    layer: int
    family: str
    kind: str


def parse_module(name: str) -> ModuleName | None:
    """``"layer.3.lora.v"`` -> ``ModuleName(3, "lora", "v")``; None for a name of another shape."""
    match = _MODULE_RE.match(name)
    if not match:
        return None
    return ModuleName(int(match.group(1)), match.group(2), match.group(3))


def module_sort_key(name: str) -> tuple:
    """Order modules by layer, then family (LoRA first), then the canonical kind order."""
    parsed = parse_module(name)
    if parsed is None:
        return (math.inf, 2, 99, name)
    return (parsed.layer, FAMILIES.index(parsed.family), _KIND_ORDER.get(parsed.kind, 99), name)


def modules_frame(names: Iterable[str]) -> pd.DataFrame:
    """One row per module name, sorted by :func:`module_sort_key`.

    Returns columns ``module, layer, family, kind``; names that do not parse are dropped.
    """
    rows = []
    for name in sorted(set(names), key=module_sort_key):
        parsed = parse_module(name)
        if parsed is not None:
            rows.append((name, parsed.layer, parsed.family, parsed.kind))
    return pd.DataFrame(rows, columns=MODULE_COLUMNS).astype({"layer": "int64"})


def all_modules(reallocations: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every module named in any reallocation (scored or enabled), in :func:`module_sort_key` order."""
    names: set[str] = set()
    for realloc in reallocations:
        names.update((realloc.get("scores") or {}).keys())
        names.update(realloc.get("enabled") or [])
    return sorted(names, key=module_sort_key)


def n_layers_of(names: Iterable[str], config: Mapping[str, Any] | None = None) -> int:
    """The model's layer count: one more than the highest layer index among ``names``, or
    ``config["n_layers"]`` / ``config["num_layers"]`` when larger (a record that states it)."""
    highest = max((p.layer for p in map(parse_module, names) if p is not None), default=-1)
    stated = 0
    for key in ("n_layers", "num_layers", "num_hidden_layers"):
        if config and isinstance(config.get(key), int):
            stated = max(stated, int(config[key]))
    return max(highest + 1, stated)


def kinds_present(modules: pd.DataFrame, family: str) -> list[str]:
    """The kinds of ``family`` that occur in ``modules`` (a :func:`modules_frame`), canonical order."""
    kinds = set(modules.loc[modules["family"] == family, "kind"])
    return sorted(kinds, key=lambda k: _KIND_ORDER.get(k, 99))


# ---------------------------------------------------------------------------------------------
# Reallocations: frequency, timeline, scores
# ---------------------------------------------------------------------------------------------


def enable_frequency(reallocations: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-module enable frequency.

    Returns one row per module (every module seen in any reallocation), columns
    ``module, layer, family, kind, n_enabled, n_reallocations, frequency`` with ``frequency`` in
    [0, 1] (NaN for every module when there is no reallocation).
    """
    modules = modules_frame(all_modules(reallocations))
    counts: dict[str, int] = {}
    for realloc in reallocations:
        for name in set(realloc.get("enabled") or []):
            counts[name] = counts.get(name, 0) + 1
    total = len(reallocations)
    modules["n_enabled"] = modules["module"].map(counts).fillna(0).astype("int64")
    modules["n_reallocations"] = total
    modules["frequency"] = modules["n_enabled"] / total if total else np.nan
    return modules


def frequency_grid(frequency: pd.DataFrame, family: str, n_layers: int | None = None) -> pd.DataFrame:
    """Layers x kinds matrix of one family's enable frequency (the paper's Figures 4 / 5).

    ``frequency`` is an :func:`enable_frequency` frame. Returns a frame indexed by layer
    ``0 .. n_layers-1`` (every layer gets a row, even one without candidates of this family) with one
    column per kind of ``family`` present, canonical order; NaN where a layer has no such candidate
    (``cross_ffn`` in layer 0).
    """
    part = frequency[frequency["family"] == family]
    kinds = kinds_present(frequency, family)
    if n_layers is None:
        n_layers = n_layers_of(frequency["module"])
    grid = part.pivot_table(index="layer", columns="kind", values="frequency", aggfunc="mean", dropna=False)
    grid = grid.reindex(index=range(n_layers), columns=kinds)
    grid.index.name = "layer"
    grid.columns.name = "kind"
    return grid.astype("float64")


def frequency_csv_frame(frequency: pd.DataFrame) -> pd.DataFrame:
    """The frequency table as users download it: readable kind labels, sorted by module."""
    out = frequency.copy()
    out["kind_label"] = out["kind"].map(KIND_LABELS).fillna(out["kind"])
    return out[["module", "layer", "family", "kind", "kind_label", "n_enabled", "n_reallocations", "frequency"]]


class Timeline(NamedTuple):
    """Module x reallocation matrices. ``enabled`` holds 0/1, ``scores`` floats (NaN = unscored);
    both are indexed by module (sorted by :func:`module_sort_key`) with one column per reallocation
    (0 .. R-1); ``steps`` gives the training step of each column."""

    enabled: pd.DataFrame
    scores: pd.DataFrame
    steps: list[int]


def timeline(reallocations: Sequence[Mapping[str, Any]]) -> Timeline:
    """The on/off state and proxy score of every module at every reallocation."""
    modules = all_modules(reallocations)
    index = {name: i for i, name in enumerate(modules)}
    n_r = len(reallocations)
    enabled = np.zeros((len(modules), n_r), dtype=np.int8)
    scores = np.full((len(modules), n_r), np.nan, dtype=np.float64)
    for j, realloc in enumerate(reallocations):
        for name, value in (realloc.get("scores") or {}).items():
            try:
                scores[index[name], j] = float(value)
            except (TypeError, ValueError):
                pass
        for name in realloc.get("enabled") or []:
            enabled[index[name], j] = 1
    columns = pd.RangeIndex(n_r, name="reallocation")
    idx = pd.Index(modules, name="module")
    steps = [int(r.get("step", j)) for j, r in enumerate(reallocations)]
    return Timeline(pd.DataFrame(enabled, index=idx, columns=columns), pd.DataFrame(scores, index=idx, columns=columns), steps)


def score_distribution(reallocations: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Every proxy score of every reallocation, long format.

    Returns columns ``reallocation, step, module, layer, family, kind, score, enabled``; one row per
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


SCORE_SUMMARY_COLUMNS = ["family", "kind", "n", "min", "lowerfence", "q1", "median", "q3", "upperfence", "max", "mean"]


def score_summary(distribution: pd.DataFrame) -> pd.DataFrame:
    """Box-plot statistics of the proxy scores per module kind, for drawing without shipping every
    score to the browser.

    ``distribution`` is a :func:`score_distribution` frame. Returns one row per (family, kind) in
    canonical kind order with columns ``family, kind, n, min, lowerfence, q1, median, q3, upperfence,
    max, mean``; the fences are Tukey's (1.5 IQR beyond the quartiles, clipped to the data).
    """
    if distribution.empty:
        return pd.DataFrame(columns=SCORE_SUMMARY_COLUMNS)
    grouped = distribution.groupby(["family", "kind"], sort=False)["score"]
    stats = grouped.quantile([0.25, 0.5, 0.75]).unstack()
    stats.columns = ["q1", "median", "q3"]
    stats["n"] = grouped.size()
    stats["min"], stats["max"], stats["mean"] = grouped.min(), grouped.max(), grouped.mean()
    iqr = stats["q3"] - stats["q1"]
    # Tukey fences: the most extreme data points within 1.5 IQR of the box
    low_limit = (stats["q1"] - 1.5 * iqr).rename("low_limit")
    high_limit = (stats["q3"] + 1.5 * iqr).rename("high_limit")
    with_limits = distribution.join(low_limit, on=["family", "kind"]).join(high_limit, on=["family", "kind"])
    inside = with_limits[(with_limits["score"] >= with_limits["low_limit"]) & (with_limits["score"] <= with_limits["high_limit"])]
    inside_groups = inside.groupby(["family", "kind"], sort=False)["score"]
    stats["lowerfence"] = inside_groups.min().reindex(stats.index).fillna(stats["min"])
    stats["upperfence"] = inside_groups.max().reindex(stats.index).fillna(stats["max"])
    out = stats.reset_index()
    out["_order"] = out["kind"].map(lambda k: _KIND_ORDER.get(k, 99))
    out = out.sort_values(["_order", "family"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return out[SCORE_SUMMARY_COLUMNS]


def mean_scores(reallocations: Sequence[Mapping[str, Any]]) -> pd.Series:
    """Mean proxy score of each module over the reallocations (index: module, NaN-skipping)."""
    return timeline(reallocations).scores.mean(axis=1, skipna=True)


def enabled_set(reallocations: Sequence[Mapping[str, Any]], which: str = "final") -> frozenset[str]:
    """The set of enabled modules of a run.

    ``which="final"``: the last reallocation's selection (a static run's only one);
    ``which="majority"``: modules enabled in at least half of the reallocations.
    """
    if not reallocations:
        return frozenset()
    if which == "final":
        return frozenset(reallocations[-1].get("enabled") or [])
    if which == "majority":
        freq = enable_frequency(reallocations)
        return frozenset(freq.loc[freq["frequency"] >= 0.5, "module"])
    raise ValueError(f"unknown enabled-set rule {which!r}; expected 'final' or 'majority'")


def slot_shares(reallocations: Sequence[Mapping[str, Any]]) -> dict[str, dict[Any, float]]:
    """Where a run's enabled slots went: ``{"layer": {layer: share}, "family": {family: share}}``.

    A module's weight is its enable frequency (reallocations it was on in / all reallocations);
    share = Σ weight over the group / Σ weight over every module, so each mapping sums to 1
    (empty mappings when nothing was ever enabled).
    """
    freq = enable_frequency(reallocations)
    total = float(freq["frequency"].sum()) if len(freq) else 0.0
    if not total or np.isnan(total):
        return {"layer": {}, "family": {}}
    return {key: {k: float(v) / total for k, v in freq.groupby(key)["frequency"].sum().items()}
            for key in ("layer", "family")}


def set_churn(reallocations: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """How much a dynamic search moves its enabled set.

    Over consecutive reallocations t-1 -> t with enabled sets E: ``changes`` counts the
    reallocations whose set differs from the previous one; ``mean_swapped`` is the mean fraction
    of the previous set that was switched off, |E_{t-1} \\ E_t| / |E_{t-1}| (0 = frozen, 1 = all
    replaced); ``ever_enabled`` counts the modules that were on at least once, against
    ``set_size`` = |E| of the first selection. Empty record: zeros.
    """
    sets = [frozenset(r.get("enabled") or []) for r in reallocations]
    pairs = list(zip(sets, sets[1:]))
    swapped = [len(prev - cur) / len(prev) for prev, cur in pairs if prev]
    return {
        "reallocations": len(sets),
        "changes": sum(prev != cur for prev, cur in pairs),
        "mean_swapped": float(np.mean(swapped)) if swapped else 0.0,
        "ever_enabled": len(frozenset().union(*sets)) if sets else 0,
        "set_size": len(sets[0]) if sets else 0,
    }


def score_drift(reallocations: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
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
        enabled = set(prev.get("enabled") or [])
        before, after = prev.get("scores") or {}, cur.get("scores") or {}
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


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|a ∩ b| / |a ∪ b|; NaN when both are empty."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else float("nan")


def jaccard_matrix(sets: Mapping[str, Iterable[str]]) -> pd.DataFrame:
    """Pairwise Jaccard overlap, a square frame indexed and columned by the keys of ``sets``."""
    labels = list(sets)
    frozen = {k: set(v) for k, v in sets.items()}
    data = [[jaccard(frozen[a], frozen[b]) for b in labels] for a in labels]
    return pd.DataFrame(data, index=labels, columns=labels, dtype="float64")


def spearman_matrix(scores: Mapping[str, pd.Series], min_common: int = 3) -> pd.DataFrame:
    """Pairwise Spearman rank correlation of per-module scores over the modules both runs scored.

    ``scores`` maps a run label to a Series indexed by module (e.g. :func:`mean_scores`). Ranks use
    the average of ties (so a constant proxy correlates NaN, not 1). A pair with fewer than
    ``min_common`` common modules gets NaN.
    """
    labels = list(scores)
    out = pd.DataFrame(np.nan, index=labels, columns=labels, dtype="float64")
    for i, a in enumerate(labels):
        for b in labels[i:]:
            joined = pd.concat([scores[a].rename("a"), scores[b].rename("b")], axis=1, join="inner").dropna()
            if len(joined) < min_common:
                rho = np.nan
            else:
                ranks = joined.rank(method="average")
                if ranks["a"].nunique() < 2 or ranks["b"].nunique() < 2:
                    rho = np.nan
                else:
                    rho = float(np.corrcoef(ranks["a"], ranks["b"])[0, 1])
            out.loc[a, b] = out.loc[b, a] = rho
    return out


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

_TIMING_PARTS = ("runtime", "per_second", "flos", "seconds")
_NON_METRIC_KEYS = {"step", "epoch", "loss", "lr", "learning_rate", "time", "wall_seconds", "elapsed", "grad_norm"}


def metrics_frame(metrics: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``metrics.jsonl`` lines as a frame sorted by step (columns are the union of the keys;
    non-numeric values become NaN)."""
    if not metrics:
        return pd.DataFrame(columns=["step"])
    frame = pd.DataFrame.from_records(list(metrics))
    for column in frame.columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    if "step" not in frame.columns:
        frame["step"] = np.arange(len(frame))
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def metric_column(frame: pd.DataFrame, metric: str | None) -> str | None:
    """The column of ``frame`` that holds the run's evaluation metric.

    Tries ``metric`` itself, then ``eval_<metric>`` / ``dev_<metric>``; without a match (or a name),
    the first numeric column that is not a step, loss or timing column.
    """
    if metric:
        for name in (metric, f"eval_{metric}", f"dev_{metric}", f"eval/{metric}"):
            if name in frame.columns and frame[name].notna().any():
                return name
        for name in frame.columns:  # a task with several dev splits: eval_<split>_<metric>
            if name.startswith("eval_") and name.endswith(f"_{metric}") and frame[name].notna().any():
                return name
    for name in frame.columns:
        if (name not in _NON_METRIC_KEYS and not name.endswith("loss") and not any(t in name for t in _TIMING_PARTS)
                and frame[name].notna().any()):
            return name
    return None


def curves_frame(runs: Mapping[str, tuple[Sequence[Mapping[str, Any]], str | None]], value: str) -> pd.DataFrame:
    """Long frame ``run, step, value`` of one curve per run, for overlaid line charts.

    ``runs`` maps a run label to ``(metrics lines, metric name)``; ``value`` is ``"loss"`` or
    ``"metric"`` (the run's evaluation metric found by :func:`metric_column`).
    """
    parts = []
    for label, (metrics, metric) in runs.items():
        frame = metrics_frame(metrics)
        column = "loss" if value == "loss" else metric_column(frame, metric)
        if column is None or column not in frame.columns:
            continue
        part = frame[["step", column]].dropna().rename(columns={column: "value"})
        part.insert(0, "run", label)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["run", "step", "value"])
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Run tables
# ---------------------------------------------------------------------------------------------


def run_label(config: Mapping[str, Any], include_seed: bool = True) -> str:
    """A short human label: ``dynamic · grad_norm · r32 · 25% · seed 0`` (uniform LoRA: ``lora · r8``)."""
    mode = config.get("mode", "?")
    parts = [str(mode)]
    if mode in ("static", "dynamic"):
        parts.append(str(config.get("proxy", "?")))
        if config.get("ranking") and config.get("ranking") != "combined":
            parts.append(str(config["ranking"]))
    parts.append(f"r{config.get('rank', '?')}")
    if mode in ("static", "dynamic"):
        if config.get("match_uniform_rank"):
            parts.append(f"≈r{config['match_uniform_rank']}")
        elif config.get("enable_ratio") is not None:
            parts.append(f"{float(config['enable_ratio']):.0%}")
    if include_seed:
        parts.append(f"seed {config.get('seed', 0)}")
    return " · ".join(parts)


RUN_TABLE_COLUMNS = [
    "run_id", "status", "progress", "eta_seconds", "best_score", "metric", "trainable_params", "wall_seconds",
    "created_at", "task", "model", "mode", "proxy", "rank", "seed", "sweep_id", "label", "error", "path",
]


def runs_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The Runs table: one row per run, newest first.

    ``rows`` are store rows (``run_id, path, sweep_id, config, summary``; see
    ``heterolora_core.store.RunStore.list_runs``). ``progress`` is a fraction 0..1 (1 for done runs),
    ``created_at`` a pandas Timestamp (local time).
    """
    records = []
    for row in rows:
        config, summary = row.get("config") or {}, row.get("summary") or {}
        status = summary.get("status", "failed")
        progress = summary.get("progress")
        if status == "done":
            progress = 1.0
        records.append({
            "run_id": row["run_id"],
            "status": status,
            "progress": float(progress) if isinstance(progress, (int, float)) else 0.0,
            "eta_seconds": summary.get("eta_seconds") if status == "running" else None,
            "best_score": summary.get("best_score"),
            "metric": summary.get("metric"),
            "trainable_params": summary.get("trainable_params"),
            "wall_seconds": summary.get("wall_seconds"),
            "created_at": summary.get("created_at") or row.get("created_at"),
            "task": config.get("task"),
            "model": config.get("model"),
            "mode": config.get("mode"),
            "proxy": config.get("proxy") if config.get("mode") in ("static", "dynamic") else None,
            "rank": config.get("rank"),
            "seed": config.get("seed"),
            "sweep_id": row.get("sweep_id"),
            "label": run_label(config),
            "error": summary.get("error") if status in ("failed", "cancelled") else None,
            "path": str(row.get("path", "")),
        })
    frame = pd.DataFrame.from_records(records, columns=RUN_TABLE_COLUMNS)
    for column in ("progress", "eta_seconds", "best_score", "wall_seconds", "created_at"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["trainable_params"] = pd.to_numeric(frame["trainable_params"], errors="coerce").astype("Int64")
    frame = frame.sort_values("created_at", ascending=False, kind="stable").reset_index(drop=True)
    frame["created_at"] = pd.to_datetime(frame["created_at"], unit="s", utc=True).dt.tz_convert(None)
    return frame


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std, n) of the finite values; std is NaN for n < 2, mean NaN for n = 0."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan"), 0
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return float(arr.mean()), std, int(arr.size)


def format_mean_std(mean: float, std: float, n: int, digits: int = 4) -> str:
    """``0.8512 ± 0.0040 (n=3)``; a single value prints alone; no value prints ``–``."""
    if n == 0 or not np.isfinite(mean):
        return "–"
    if n == 1 or not np.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


#: Config keys that do not change what a run computes (or that vary within a group: the seed).
_NOT_IN_CONFIG_KEY = {"seed", "device", "sweep_id", "logging_steps"}


def config_key(config: Mapping[str, Any]) -> str:
    """A canonical string of everything in ``config`` that defines the experiment except the seed;
    runs with equal keys are repeats of one configuration. Extra keys (versions, git commit,
    environment) written beside the RunConfig fields are ignored."""
    from heterolora_core.runs import RunConfig

    fields = RunConfig.from_dict(dict(config)).to_dict()
    return json.dumps({k: v for k, v in fields.items() if k not in _NOT_IN_CONFIG_KEY}, sort_keys=True, default=str)


def _distinct_labels(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """key -> :func:`run_label` without the seed, with the differing settings appended where two
    different configurations would otherwise read the same (``… · max_steps 2``)."""
    base = {key: run_label(config, include_seed=False) for key, config in configs.items()}
    out = dict(base)
    for label in set(base.values()):
        keys = [k for k, lab in base.items() if lab == label]
        if len(keys) < 2:
            continue
        parsed = {k: json.loads(k) for k in keys}
        differing = [f for f in parsed[keys[0]] if len({json.dumps(parsed[k].get(f), default=str) for k in keys}) > 1]
        for k in keys:
            out[k] = label + "".join(f" · {f} {parsed[k].get(f)}" for f in differing)
    return out


def compare_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Compare runs, grouping those that differ only by seed (see :func:`config_key`).

    ``rows`` are store rows (``config, summary``). Returns one row per configuration with columns
    ``config, runs, seeds, best_score (str mean ± std), best_mean, best_std, trainable_params,
    search_seconds, wall_seconds`` (the last three are means over the group), best configuration first.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(config_key(row.get("config") or {}), []).append(row)
    labels = _distinct_labels({key: members[0].get("config") or {} for key, members in groups.items()})
    records = []
    for key, members in groups.items():
        label = labels[key]
        summaries = [m.get("summary") or {} for m in members]

        def values(key: str) -> list[float]:
            return [float(s[key]) for s in summaries if isinstance(s.get(key), (int, float))]

        best_mean, best_std, n = mean_std(values("best_score"))
        records.append({
            "config": label,
            "runs": len(members),
            "seeds": ", ".join(str((m.get("config") or {}).get("seed", "?")) for m in members),
            "best_score": format_mean_std(best_mean, best_std, n),
            "best_mean": best_mean,
            "best_std": best_std,
            "trainable_params": mean_std(values("trainable_params"))[0],
            "search_seconds": mean_std(values("search_seconds"))[0],
            "wall_seconds": mean_std(values("wall_seconds"))[0],
        })
    columns = ["config", "runs", "seeds", "best_score", "best_mean", "best_std", "trainable_params", "search_seconds", "wall_seconds"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    return frame.sort_values("best_mean", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def format_duration(seconds: float | None) -> str:
    """``95`` -> ``"1m 35s"``; None/NaN -> ``""``."""
    if seconds is None or not np.isfinite(seconds):
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
