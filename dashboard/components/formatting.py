"""How the dashboard writes things: module kinds, run labels, scores, durations.

Pure functions of engine objects to strings; the engine's analysis never formats.
"""
from __future__ import annotations

import math
import shlex

import pandas as pd

from heterolora_core.analysis.compare import budget_text
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
    """A short human label: ``dynamic · grad_norm · r32 · 25% · seed 0`` (uniform LoRA: ``lora · r8``);
    ``unreadable record`` without a config."""
    if config is None:
        return "unreadable record"
    method = registry.find(config.mode)
    parts = [str(config.mode)]
    if method is not None and method.searches:
        parts.append(str(config.proxy))
        if config.ranking != "combined":
            parts.append(str(config.ranking))
    parts.append(f"r{config.rank}")
    budget = budget_text(config)
    if budget:
        parts.append(budget)
    if include_seed:
        parts.append(f"seed {config.seed}")
    return " · ".join(parts)


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


def format_mean_std(mean: float | None, std: float | None, n: int, digits: int = 4) -> str:
    """``0.8512 ± 0.0040 (n=3)``; a single value prints alone; no value prints ``–``."""
    if n == 0 or mean is None or not math.isfinite(mean):
        return "–"
    if n == 1 or std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def command_line(config: RunConfig, out: str) -> str:
    """The shell command that reruns ``config`` into ``out``, every argument shell-quoted."""
    args = ["python", "-m", "heterolora_core", "train", *config.to_cli_args(), "--out", out]
    return shlex.join(args)


def frequency_csv_frame(frequency: pd.DataFrame) -> pd.DataFrame:
    """The enable-frequency table as users download it: readable kind labels, sorted by module."""
    out = frequency.copy()
    out["kind_label"] = out["kind"].map(kind_label)
    return out[["module", "layer", "group", "kind", "kind_label", "n_enabled", "n_reallocations", "frequency"]]
