"""How the dashboard writes things: module kinds, run labels, config fields, scores, durations.

Pure functions of engine objects to strings; the engine's analysis never formats. Scores are shown
as GLUE has them, ×100 (:mod:`heterolora_core.analysis.units` holds the one conversion, shared with
the CLI and the grid's report): accuracy 79.90, a difference of scores -8.09 points; a loss or a
perplexity (lower is better) is shown as it is, whenever the caller passes the run's metric.
"""
from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping

import pandas as pd

from heterolora_core.analysis import units
from heterolora_core.analysis.labels import (SEARCH_FIELDS, describe_config, field_label, format_field, format_lr,
                                             plural)
from heterolora_core.methods import registry
from heterolora_core.training.run_config import RunConfig

KIND_LABELS = {
    "q": "query", "k": "key", "v": "value", "o": "output", "ffn_gate": "FFN gate", "ffn_in": "FFN in",
    "ffn_out": "FFN out", "res_attn": "res_attn", "res_ffn": "res_ffn", "cross_attn": "cross_attn",
    "cross_ffn": "cross_ffn",
}
GROUP_TITLES = {"lora": "LoRA modules", "shortcut": "Shortcut modules"}


def kind_label(kind: object) -> str:
    return KIND_LABELS.get(str(kind), str(kind))


def run_label(config: RunConfig | None, include_seed: bool = True) -> str:
    """A run's full description (:func:`heterolora_core.analysis.labels.describe_config`)."""
    return describe_config(config, include_seed)


def readable_fields(frame: pd.DataFrame, fields: Iterable[str], modes: Iterable[object] | None = None) -> pd.DataFrame:
    """``frame`` with each of ``fields`` (config-field columns) as readable text under its
    readable name (:func:`field_label`, :func:`format_field`). ``modes``, one per row: a method
    that does not search shows ``–`` for :data:`SEARCH_FIELDS` (uniform LoRA has no proxy)."""
    fields = [f for f in fields if f in frame.columns]
    searches = [True] * len(frame) if modes is None else [
        (m := registry.find(mode)) is None or m.searches for mode in modes]
    out = frame.copy()
    for name in fields:
        out[name] = [format_field(name, v) if (ok or name not in SEARCH_FIELDS) else "–"
                     for v, ok in zip(out[name], searches)]
    return out.rename(columns={name: field_label(name) for name in fields})


# -- scores: GLUE points, or a loss / perplexity as it is --------------------------------------------


def format_score(value: object, digits: int = 2, metric: object = None) -> str:
    """A score as a person reads it (:func:`heterolora_core.analysis.units.format_score`): a
    fraction in GLUE points, ``0.7990`` -> ``"79.90"``; a loss or perplexity as it is; ``–`` when
    missing."""
    return units.format_score(value, metric, digits)


def score_points(values: pd.Series, metrics: pd.Series | str | None = None) -> pd.Series:
    """A column of scores as people read them, kept numeric so that tables sort: GLUE points (×100)
    for accuracy-like metrics, a loss or perplexity as it is. ``metrics``: one metric for the column,
    or one per row (a table may hold runs of both kinds)."""
    numbers = pd.to_numeric(values, errors="coerce")
    if metrics is None or isinstance(metrics, str):
        return numbers * (units.SCALE if units.in_points(metrics) else 1.0)
    scale = pd.Series(list(metrics), index=values.index).map(lambda m: units.SCALE if units.in_points(m) else 1.0)
    return numbers * scale.astype(float)


def score_curves(curves: pd.DataFrame, metric: object = None) -> pd.DataFrame:
    """A :func:`~heterolora_core.analysis.compare.curves_frame` of evaluation scores with its
    ``value`` column as people read it (GLUE points, or a loss / perplexity as it is)."""
    return curves.assign(value=score_points(curves["value"], None if metric is None else str(metric)))


def format_score_stats(mean: float | None, std: float | None, n: int, with_n: bool = True,
                       metric: object = None) -> str:
    """Mean ± std of scores as read: ``79.90 ± 1.85 (n=3)`` (:func:`format_mean_std` of the shown
    numbers; a perplexity's ``5.12 ± 0.03``)."""
    return format_mean_std(units.shown(mean, metric), units.shown(std, metric), n, digits=2, with_n=with_n)


def format_difference(mean: float | None, low: float | None = None, high: float | None = None,
                      metric: object = None) -> str:
    """A paired difference of scores with its 95% interval, in points (a loss or perplexity as it
    is): ``-8.09 [-17.8, 1.7]`` (no interval with one seed: ``+0.25``); ``–`` without a difference."""
    if units.shown(mean, metric) is None:
        return "–"
    interval = units.format_interval((low, high), metric=metric) if low is not None and high is not None else ""
    return f"{units.format_score(mean, metric, signed=True)} {interval}".strip()


#: The help of a table's score column: what its numbers are.
SCORE_HELP = ("GLUE points (×100) for accuracy, F1 and correlations; a loss or perplexity as it is "
              "(lower is better); the metric column says which")


def format_duration(seconds: float | None) -> str:
    """``95`` -> ``"1m 35s"``; None/NaN -> ``""``."""
    if seconds is None or pd.isna(seconds) or not math.isfinite(seconds):
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_mean_std(mean: float | None, std: float | None, n: int, digits: int = 4, with_n: bool = True) -> str:
    """``0.8512 ± 0.0040 (n=3)`` (``with_n=False``: without the count); a single value prints
    alone; no value prints ``–``."""
    if n == 0 or mean is None or not math.isfinite(mean):
        return "–"
    if n == 1 or std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" + (f" (n={n})" if with_n else "")


def command_line(config: RunConfig, out: str) -> str:
    """The shell command that reruns ``config`` into ``out``, every argument shell-quoted."""
    args = ["python", "-m", "heterolora_core", "train", *config.to_cli_args(), "--out", out]
    return shlex.join(args)


def results_csv_frame(table: pd.DataFrame, labels: Mapping[str, str]) -> pd.DataFrame:
    """A :func:`~heterolora_core.analysis.results.results_table` as users download it: the
    configuration's label first, scores and differences in GLUE points, seeds as ``0,1,2``, then
    the differing config fields and the configuration's key."""
    scores = ["final_mean", "final_std", "final_low", "final_high", "best_mean", "delta_mean", "delta_low", "delta_high"]
    out = table.copy()
    for column in scores:
        out[column] = score_points(out[column], out["metric"] if "metric" in out.columns else None)
    out["seeds"] = out["seeds"].map(lambda seeds: ",".join(map(str, seeds)))
    out.insert(0, "configuration", out["key"].map(labels))
    return out[["configuration", *[c for c in out.columns if c not in ("configuration", "key")], "key"]]


def frequency_csv_frame(frequency: pd.DataFrame) -> pd.DataFrame:
    """The enable-frequency table as users download it: readable kind labels, sorted by module."""
    out = frequency.copy()
    out["kind_label"] = out["kind"].map(kind_label)
    return out[["module", "layer", "group", "kind", "kind_label", "n_enabled", "n_reallocations", "frequency"]]


def rank_csv_frame(ranks) -> pd.DataFrame:
    """A :func:`~heterolora_core.analysis.allocation.rank_timeline` as users download it: one row
    per (module, reallocation) with the reallocation's step and the module's rank (0 = off)."""
    long = ranks.ranks.stack().rename("rank").reset_index()
    long.insert(1, "step", long["reallocation"].map(dict(enumerate(ranks.steps))))
    return long[["module", "reallocation", "step", "rank"]]
