"""How the dashboard writes things: module kinds, run labels, config fields, scores, durations.

Pure functions of engine objects to strings; the engine's analysis never formats. Scores are shown
as GLUE has them, ×100 (:mod:`heterolora_core.analysis.units` holds the one conversion, shared with
the CLI and the grid's report): accuracy 79.90, a difference of scores -8.09 points.
"""
from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping

import pandas as pd

from heterolora_core.analysis import units
from heterolora_core.analysis.compare import budget_text, differing_fields
from heterolora_core.methods import registry
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import DEFAULT_TARGETS, Ranking

KIND_LABELS = {
    "q": "query", "k": "key", "v": "value", "o": "output", "ffn_gate": "FFN gate", "ffn_in": "FFN in",
    "ffn_out": "FFN out", "res_attn": "res_attn", "res_ffn": "res_ffn", "cross_attn": "cross_attn",
    "cross_ffn": "cross_ffn",
}
GROUP_TITLES = {"lora": "LoRA modules", "shortcut": "Shortcut modules"}


def kind_label(kind: object) -> str:
    return KIND_LABELS.get(str(kind), str(kind))


def format_lr(lr: object) -> str:
    """A learning rate as people write it: ``0.0005`` -> ``"5e-4"``, ``0.00125`` -> ``"1.25e-3"``."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
        return str(lr)
    if lr == 0 or abs(lr) >= 0.01:
        return f"{lr:g}"
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _space_text(config: RunConfig, method: registry.MethodInfo | None) -> list[str]:
    """The search space, only where it is not the method's default (q,v, shortcuts if it can)."""
    parts = []
    if list(config.lora_targets) != list(DEFAULT_TARGETS):
        parts.append(",".join(map(str, config.lora_targets)))
    if method is not None and method.shortcuts and not config.shortcuts:
        parts.append("no shortcuts")
    return parts


def run_label(config: RunConfig | None, include_seed: bool = True) -> str:
    """A run as the fields that define it: ``mrpc · dynamic · grad_norm · r32 · 25% · lr 5e-4 · seed 0``
    (task · mode · [search space when not the default] · proxy · [ranking when separated] · rank ·
    [the method's own options] · budget · learning rate · seed; uniform LoRA: ``mrpc · lora · r8 ·
    lr 5e-4 · seed 0``); ``unreadable record`` without a config."""
    if config is None:
        return "unreadable record"
    method = registry.find(config.mode)
    parts = [str(config.task), str(config.mode), *_space_text(config, method)]
    if method is not None and method.searches:
        parts.append(str(config.proxy))
        if config.ranking != Ranking.COMBINED.value:
            parts.append(str(config.ranking))
    parts.append(f"r{config.rank}")
    if method is not None:
        parts += [f"{name.removeprefix(config.mode + '_')} {getattr(config, name)}" for name in method.options]
    budget = budget_text(config)
    if budget:
        parts.append(budget)
    parts.append(f"lr {format_lr(config.lr)}")
    if include_seed:
        parts.append(f"seed {config.seed}")
    return " · ".join(parts)


#: Readable names of RunConfig fields (Compare's and Results' differing-field columns).
FIELD_LABELS = {
    "mode": "method", "enable_ratio": "enable ratio", "match_uniform_rank": "budget: match uniform rank",
    "score_norm": "score normalisation", "lora_targets": "LoRA targets", "lr": "learning rate",
    "max_steps": "max steps", "train_limit": "training examples", "dev_limit": "dev examples",
    "realloc_every": "reallocate every (epochs)", "proxy_batches": "extra scoring batches",
    "score_window": "score window (steps)", "sketch_rank": "sketch rank", "batch_size": "batch size",
    "max_length": "max length", "eval_every": "evaluate every (steps)", "logging_steps": "log every (steps)",
    "train_file": "training file", "dev_file": "dev file", "adalora_init_r": "AdaLoRA initial rank",
    "adalora_target_r": "AdaLoRA target rank",
}


def field_label(name: str) -> str:
    """``"max_steps"`` -> ``"max steps"`` (:data:`FIELD_LABELS`, else the name with spaces)."""
    return FIELD_LABELS.get(name, name.replace("_", " "))


def format_field(name: str, value: object) -> str:
    """A config value as a cell: lists joined, booleans on/off, rates and ratios readable, None (or
    a table's NaN) as ``–``, whole numbers without a decimal point."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if name == "lr":
        return format_lr(value)
    if name == "enable_ratio" and isinstance(value, (int, float)):
        return f"{float(value):.0%}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


#: Config fields that only a searching method reads (shown as ``–`` for the others).
SEARCH_FIELDS = ("proxy", "ranking", "score_norm", "enable_ratio", "match_uniform_rank", "proxy_batches", "score_window")


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


def group_labels(configs: Mapping[str, RunConfig]) -> dict[str, str]:
    """Configuration key -> a label without the seed (:func:`run_label`), unique: configurations
    that share a label get the fields in which they differ, ``(max steps 4)``."""
    by_label: dict[str, list[str]] = {}
    for key, config in configs.items():
        by_label.setdefault(run_label(config, include_seed=False), []).append(key)
    out: dict[str, str] = {}
    for label, keys in by_label.items():
        fields = differing_fields(configs[k] for k in keys) if len(keys) > 1 else []
        for i, key in enumerate(keys, start=1):
            extra = ", ".join(f"{field_label(f)} {format_field(f, getattr(configs[key], f))}" for f in fields)
            out[key] = f"{label} ({extra})" if extra else (label if len(keys) == 1 else f"{label} #{i}")
    return out


# -- scores: GLUE points ---------------------------------------------------------------------------


def format_score(value: object, digits: int = 2) -> str:
    """A score (a fraction in the records) in GLUE points: ``0.7990`` -> ``"79.90"``; ``–`` when missing."""
    return units.format_points(value, digits)


def score_points(values: pd.Series) -> pd.Series:
    """A column of scores (fractions) in GLUE points, for tables that keep numbers sortable."""
    return pd.to_numeric(values, errors="coerce") * units.SCALE


def score_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """A :func:`~heterolora_core.analysis.compare.curves_frame` of evaluation scores with its
    ``value`` column in GLUE points."""
    return curves.assign(value=score_points(curves["value"]))


def format_score_stats(mean: float | None, std: float | None, n: int, with_n: bool = True) -> str:
    """Mean ± std of scores in points: ``79.90 ± 1.85 (n=3)`` (:func:`format_mean_std` of the points)."""
    return format_mean_std(units.points(mean), units.points(std), n, digits=2, with_n=with_n)


def format_difference(mean: float | None, low: float | None = None, high: float | None = None) -> str:
    """A paired difference of scores in points with its 95% interval: ``-8.09 [-17.8, 1.7]``
    (no interval with one seed: ``+0.25``); ``–`` without a difference."""
    if units.points(mean) is None:
        return "–"
    interval = units.format_interval((low, high)) if low is not None and high is not None else ""
    return f"{units.format_points(mean, signed=True)} {interval}".strip()


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
        out[column] = score_points(out[column])
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
