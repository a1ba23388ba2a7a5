"""Comparing runs: pure pandas functions over the run store's rows and run records.

The Runs table (:func:`runs_table`) with its filters and experiments (:func:`filter_runs`,
:func:`experiments_table`), configurations grouped over seeds (:func:`compare_table`,
with :mod:`~heterolora_core.analysis.stats` for the numbers), the overlap of enabled sets and the
rank correlation of scores, and training curves. Labels and number formats are the dashboard's
business (``dashboard/components/formatting.py``).
"""
from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from heterolora_core.analysis.evidence import evidence_of, is_short_run
from heterolora_core.analysis.labels import budget_token
from heterolora_core.analysis.stats import describe, seed_scores
from heterolora_core.methods import registry
from heterolora_core.records.store import StoredRun
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import higher_is_better


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


_TIMING_PARTS = ("runtime", "per_second", "flos", "seconds")
_NON_METRIC_KEYS = {"step", "epoch", "loss", "lr", "learning_rate", "time", "wall_seconds", "elapsed", "grad_norm"}


def metrics_frame(metrics: Sequence[Mapping[str, float]]) -> pd.DataFrame:
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


def curves_frame(runs: Mapping[str, tuple[Sequence[Mapping[str, float]], str | None]], value: str) -> pd.DataFrame:
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

RUN_TABLE_COLUMNS = [
    "run_id", "status", "progress", "eta_seconds", "best_score", "final_score", "metric", "trainable_params",
    "wall_seconds", "created_at", "task", "model", "mode", "proxy", "ranking", "rank", "budget", "lr", "seed",
    "short_run", "device", "sweep_id", "experiment", "error", "path",
]


def budget_text(config: RunConfig | None) -> str | None:
    """A search's budget as stated (``25%`` of the candidates, ``≈r24`` for match-uniform,
    ``73.7k params``: :func:`~.labels.budget_token`); None for methods without one."""
    return budget_token(config) if config is not None else None


def runs_table(rows: Sequence[StoredRun], home: Any = None) -> pd.DataFrame:
    """The Runs table: one row per run, newest first.

    ``progress`` is a fraction 0..1 (1 for done runs), ``created_at`` a pandas Timestamp (local
    time); ``short_run`` marks short runs (:func:`~.evidence.is_short_run`), ``device`` the kind
    of device it ran on (:mod:`~.evidence`); ``error`` holds a failed run's reason or an unreadable record's problem; ``experiment``
    is the run's sweep, else the folder it lives in (relative to the data home ``home``); ``proxy``
    and ``ranking`` are None for methods that do not search.
    """
    records = []
    for row in rows:
        config, summary = row.config, row.summary
        method = registry.find(config.mode) if config else None
        progress = 1.0 if summary.status == "done" else (summary.progress or 0.0)
        records.append({
            "run_id": row.run_id, "status": summary.status, "progress": progress,
            "eta_seconds": summary.eta_seconds if summary.status == "running" else None,
            "best_score": summary.best_score, "final_score": summary.final_score, "metric": summary.metric,
            "trainable_params": summary.trainable_params, "wall_seconds": summary.wall_seconds,
            "created_at": summary.created_at or row.created_at,
            "task": config.task if config else None, "model": config.model if config else None,
            "mode": config.mode if config else None,
            "proxy": config.proxy if method is not None and method.searches else None,
            "ranking": config.ranking if method is not None and method.searches else None,
            "rank": config.rank if config else None, "budget": budget_text(config),
            "lr": config.lr if config else None, "seed": config.seed if config else None,
            "short_run": is_short_run(config, summary),
            "device": evidence_of(config, summary).device if summary.status != "queued" else None,
            "sweep_id": row.sweep_id, "experiment": experiment_of(row, home),
            "error": row.problem or (summary.error if summary.status in ("failed", "cancelled") else None),
            "path": str(row.path),
        })
    frame = pd.DataFrame.from_records(records, columns=RUN_TABLE_COLUMNS)
    for column in ("progress", "eta_seconds", "best_score", "final_score", "wall_seconds", "created_at", "lr"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in ("trainable_params", "rank", "seed"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    frame = frame.sort_values("created_at", ascending=False, kind="stable").reset_index(drop=True)
    frame["created_at"] = pd.to_datetime(frame["created_at"], unit="s", utc=True).dt.tz_convert(None)
    return frame


def experiment_of(row: StoredRun, home: Any = None) -> str:
    """The experiment a run belongs to: its sweep, else its folder's parent relative to the home
    (``runs`` for a run launched on its own)."""
    if row.sweep_id:
        return row.sweep_id
    parent = row.path.parent
    if home is not None:
        try:
            return parent.relative_to(home).as_posix()
        except ValueError:
            pass
    return parent.name


# ---------------------------------------------------------------------------------------------
# Exploring many runs: filters, experiments
# ---------------------------------------------------------------------------------------------

#: The columns of :func:`runs_table` a :class:`RunFilter` can restrict, in the order the Runs page
#: offers them.
FILTER_COLUMNS = ("task", "model", "mode", "proxy", "ranking", "rank", "budget", "lr", "status", "experiment")
#: The text columns a free-text search looks in (those of them the frame has).
SEARCH_COLUMNS = ("label", "run_id", "experiment", "path", "error")


@dataclass(frozen=True)
class RunFilter:
    """Which runs to show: for each of :data:`FILTER_COLUMNS` the values to keep (empty: all), and
    a free-text ``text`` that a run's label, id, experiment, folder or error must contain (case
    ignored). An experiment value also keeps the experiments below it (``results/gpu`` keeps
    ``results/gpu/lr0.0005/mrpc/lora-qv-r8``)."""

    values: Mapping[str, Collection[Any]] = field(default_factory=dict)
    text: str = ""

    @property
    def active(self) -> bool:
        return bool(self.text.strip()) or any(self.values.get(c) for c in FILTER_COLUMNS)


def filter_runs(frame: pd.DataFrame, chosen: RunFilter) -> pd.DataFrame:
    """The rows of a :func:`runs_table` frame that ``chosen`` keeps, in their order. Unknown
    columns and values that no run has keep nothing of their own (a stale filter shows no run; it
    never raises)."""
    keep = pd.Series(True, index=frame.index)
    for column in FILTER_COLUMNS:
        wanted = list(chosen.values.get(column) or ())
        if not wanted or column not in frame.columns:
            continue
        if column == "experiment":
            keep &= _under_any(frame[column], [str(w) for w in wanted])
        else:
            keep &= frame[column].isin(wanted)
    text = chosen.text.strip().casefold()
    if text:
        found = pd.Series(False, index=frame.index)
        for column in (c for c in SEARCH_COLUMNS if c in frame.columns):
            found |= frame[column].astype("string").str.casefold().str.contains(text, regex=False, na=False)
        keep &= found
    return frame[keep]


def _under_any(experiments: pd.Series, folders: list[str]) -> pd.Series:
    text = experiments.astype("string")
    hit = text.isin(folders)
    for folder in folders:
        hit |= text.str.startswith(folder.rstrip("/") + "/", na=False)
    return hit.fillna(False).astype(bool)


def sort_runs(frame: pd.DataFrame, by: str = "created_at", descending: bool = True,
              by_experiment: bool = False) -> pd.DataFrame:
    """A runs frame sorted by column ``by`` (missing values last; an unknown column: newest first),
    within experiments (in name order) when ``by_experiment``. A score column sorts in its metric's
    direction (:func:`goodness`): descending puts the best first, the lowest loss or perplexity
    among them."""
    by = by if by in frame.columns else "created_at"
    sort_key = by
    if by in SCORE_COLUMNS and "metric" in frame.columns:
        sort_key = "_goodness"
        frame = frame.assign(_goodness=goodness(frame[by], frame["metric"]))
    keys, ascending = ([sort_key], [not descending])
    if by_experiment and "experiment" in frame.columns and by != "experiment":
        keys, ascending = ["experiment", sort_key], [True, not descending]
    out = frame.sort_values(keys, ascending=ascending, na_position="last", kind="stable")
    return out.drop(columns="_goodness") if sort_key == "_goodness" else out


def experiment_options(experiments: Iterable[object]) -> list[str]:
    """Every experiment, and every folder above one (``results/gpu/lr0.0005/mrpc`` above
    ``results/gpu/lr0.0005/mrpc/lora-qv-r8``), sorted: what an experiment filter can choose."""
    out: set[str] = set()
    for experiment in experiments:
        if not isinstance(experiment, str) or not experiment:
            continue
        parts = experiment.split("/")
        out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(out)


#: Columns of a runs frame that hold scores (sorted and compared in their metric's direction).
SCORE_COLUMNS = ("final_score", "best_score")
EXPERIMENT_COLUMNS = ["experiment", "runs", "done", "active", "failed", "tasks", "modes", "best_final", "metric",
                      "newest"]


def experiments_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment of a :func:`runs_table` frame, newest first: its runs, how many are
    done, queued or running (``active``) and failed or cancelled, the tasks and modes it holds, the
    best final score of its finished runs in its metric's direction (the lowest perplexity) with that
    metric, and its newest run's creation time."""
    if frame.empty:
        return pd.DataFrame(columns=EXPERIMENT_COLUMNS)
    status = frame["status"]
    metrics = frame["metric"] if "metric" in frame.columns else pd.Series(None, index=frame.index, dtype=object)
    frame = frame.assign(
        _done=status.eq("done"), _active=status.isin(("queued", "running")),
        _failed=status.isin(("failed", "cancelled")),
        _good=goodness(frame["final_score"], metrics).where(status.eq("done")), _metric=metrics,
    )
    parts = frame.groupby("experiment", dropna=False, sort=False)
    best_rows = (frame[frame["_good"].notna()].sort_values("_good", ascending=False, kind="stable")
                 .drop_duplicates("experiment"))
    best = {e: (score, metric) for e, score, metric in
            zip(best_rows["experiment"], best_rows["final_score"], best_rows["_metric"])}
    out = pd.DataFrame({
        "runs": parts.size(), "done": parts["_done"].sum(), "active": parts["_active"].sum(),
        "failed": parts["_failed"].sum(),
        "tasks": parts["task"].agg(lambda v: ", ".join(sorted({str(x) for x in v.dropna()}))),
        "modes": parts["mode"].agg(lambda v: ", ".join(sorted({str(x) for x in v.dropna()}))),
        "newest": parts["created_at"].max(),
    }).reset_index()
    out["best_final"] = [best.get(e, (float("nan"), None))[0] for e in out["experiment"]]
    out["metric"] = [best.get(e, (None, None))[1] for e in out["experiment"]]
    out = out.sort_values("newest", ascending=False, kind="stable").reset_index(drop=True)
    return out[EXPERIMENT_COLUMNS]


#: Config fields that do not change what a run computes (or that vary within a group: the seed).
NOT_IN_CONFIG_KEY = ("seed", "device", "logging_steps")


def config_key(config: RunConfig) -> str:
    """A canonical string of everything in ``config`` that defines the experiment except the seed;
    runs with equal keys are repeats of one configuration."""
    fields = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_CONFIG_KEY}
    return json.dumps(fields, sort_keys=True, default=str)


def differing_fields(configs: Iterable[RunConfig]) -> list[str]:
    """The RunConfig fields (in field order) whose value differs among ``configs``, seed excluded."""
    configs = list(configs)
    if len(configs) < 2:
        return []
    dicts = [c.to_dict() for c in configs]
    return [name for name in RunConfig.field_names()
            if name not in NOT_IN_CONFIG_KEY and len({json.dumps(d[name], default=str) for d in dicts}) > 1]


def run_group_key(row: StoredRun) -> str:
    """The configuration a run belongs to on Compare: :func:`config_key` and the kind of evidence
    (:mod:`~.evidence`: a GPU run and a CPU run of one configuration are two configurations)."""
    return f"{config_key(row.config)}|{evidence_of(row.config, row.summary, row.versions).text}"


def configuration_groups(rows: Sequence[StoredRun]) -> dict[str, list[StoredRun]]:
    """Runs with a readable config by :func:`run_group_key`, in first-seen order."""
    groups: dict[str, list[StoredRun]] = {}
    for row in rows:
        if row.config is not None:
            groups.setdefault(run_group_key(row), []).append(row)
    return groups


def mean_grid(grids: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The cell-wise mean of layer x kind grids (the seeds of one configuration): rows and columns
    the union of theirs, in first-seen order; a cell missing from a grid is left out of its mean."""
    if not grids:
        return pd.DataFrame()
    columns = list(dict.fromkeys(c for g in grids for c in g.columns))
    index = sorted(set().union(*(set(g.index) for g in grids)))
    stacked = np.stack([g.reindex(index=index, columns=columns).to_numpy(dtype=float) for g in grids])
    counts = (~np.isnan(stacked)).sum(axis=0)
    total = np.nansum(stacked, axis=0)
    mean = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)  # a cell no grid has stays empty
    return pd.DataFrame(mean, index=pd.Index(index, name=grids[0].index.name), columns=columns)


def consensus_set(sets: Sequence[Iterable[str]]) -> frozenset[str]:
    """The modules in at least half of ``sets`` (the seeds of one configuration)."""
    sets = [set(s) for s in sets]
    counts: dict[str, int] = {}
    for s in sets:
        for name in s:
            counts[name] = counts.get(name, 0) + 1
    return frozenset(name for name, n in counts.items() if 2 * n >= len(sets))


def mean_score_series(series: Sequence[pd.Series]) -> pd.Series:
    """Per-module scores averaged over runs (each run's own mean score per module)."""
    if not series:
        return pd.Series(dtype="float64")
    return pd.concat(list(series), axis=1).mean(axis=1, skipna=True)


CURVE_BAND_COLUMNS = ["group", "step", "mean", "low", "high", "n"]


def curve_bands(curves: pd.DataFrame, group_of: Mapping[str, str]) -> pd.DataFrame:
    """Curves of a :func:`curves_frame` (one per run) folded into one per configuration: at each
    step the mean over the configuration's runs and the band from their least to their largest
    value, with how many runs have a point there. ``group_of`` maps a run label to its
    configuration's label; runs it does not map are left out."""
    if curves.empty:
        return pd.DataFrame(columns=CURVE_BAND_COLUMNS)
    frame = curves.assign(group=curves["run"].map(group_of)).dropna(subset=["group"])
    out = frame.groupby(["group", "step"], sort=False)["value"].agg(["mean", "min", "max", "count"]).reset_index()
    out = out.rename(columns={"min": "low", "max": "high", "count": "n"})
    return out[CURVE_BAND_COLUMNS].sort_values(["group", "step"], kind="stable").reset_index(drop=True)


def goodness(scores: pd.Series, metrics: pd.Series) -> pd.Series:
    """Scores signed so that larger is better whatever the metric: a higher-is-better score as it
    is, a loss or a perplexity negated (:func:`heterolora_core.vocab.higher_is_better`); for
    sorting best first."""
    sign = metrics.map(lambda m: 1.0 if higher_is_better(m) else -1.0).astype(float)
    return pd.to_numeric(scores, errors="coerce") * sign


COMPARE_COLUMNS = ["key", "metric", "runs", "n_seeds", "seeds", "best_mean", "best_std", "final_mean", "final_std",
                   "trainable_params", "search_seconds", "wall_seconds"]


def compare_table(rows: Sequence[StoredRun]) -> tuple[pd.DataFrame, dict[str, RunConfig]]:
    """Compare runs, grouping those that differ only by seed (see :func:`config_key`).

    Returns the table, one row per configuration (best configuration first) with columns
    :data:`COMPARE_COLUMNS` plus one column per differing config field, and the configuration of
    each ``key``. Runs of any status count (a running run shows its best so far). The scores are
    per seed (:func:`~heterolora_core.analysis.stats.seed_scores`: a seed run twice counts once,
    with the mean of its runs), so ``n_seeds`` and ``seeds`` are the seeds that have a best score
    and the mean ± std are over them; ``runs`` counts every run; the last three columns are means
    over the group's runs.
    """
    groups = configuration_groups(rows)
    configs = {key: members[0].config for key, members in groups.items()}
    differing = differing_fields(configs.values())
    metric = {key: next((m.summary.metric for m in members if m.summary.metric), None) for key, members in groups.items()}
    records = []
    for key, members in groups.items():
        summaries = [m.summary for m in members]
        best_by_seed = seed_scores((m.config.seed, m.summary.best_score) for m in members)
        best = describe(best_by_seed.values())
        final = describe(seed_scores((m.config.seed, m.summary.final_score) for m in members).values())
        records.append({
            "key": key, "metric": metric[key], "runs": len(members), "n_seeds": best.n, "seeds": sorted(best_by_seed),
            "best_mean": best.mean, "best_std": best.std, "final_mean": final.mean, "final_std": final.std,
            "trainable_params": describe(s.trainable_params for s in summaries).mean,
            "search_seconds": describe(s.search_seconds for s in summaries).mean,
            "wall_seconds": describe(s.wall_seconds for s in summaries).mean,
            **{name: getattr(configs[key], name) for name in differing},
        })
    frame = pd.DataFrame.from_records(records, columns=COMPARE_COLUMNS + differing)
    frame = frame.assign(_goodness=goodness(frame["best_mean"], frame["metric"]))
    frame = frame.sort_values("_goodness", ascending=False, na_position="last", kind="stable")
    return frame.drop(columns="_goodness").reset_index(drop=True), configs
