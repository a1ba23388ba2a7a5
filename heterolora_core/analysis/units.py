"""Scores in GLUE's convention: the one place that knows how a score is shown.

Records store every headline metric as the evaluator returns it, a fraction (``best_score``
0.8125; Matthews and Pearson / Spearman correlations in [-1, 1]). GLUE reports all of them ×100
(accuracy 81.25, F1 88.10, Matthews 52.30), and so does everything a person reads here: the
dashboard, the ``runs`` listing and the grid's tables. Differences of scores are in the same
points. The dashboard's ``components/formatting.py``, the CLI and ``benchmarks/grid/report.py``
format through these functions; nothing else multiplies by 100. A loss or a perplexity (the
causal-LM objective's metrics, lower is better: :func:`heterolora_core.vocab.higher_is_better`) is
not a fraction and is shown as it is (:func:`format_score`).
"""
from __future__ import annotations

import math

from heterolora_core.vocab import higher_is_better

#: A fraction times SCALE is the score in GLUE points.
SCALE = 100.0


def points(value: object) -> float | None:
    """``value`` (a fraction) in GLUE points; None for a missing, non-finite or non-numeric value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) * SCALE


def format_points(value: object, digits: int = 2, missing: str = "–", signed: bool = False) -> str:
    """``0.79902`` -> ``"79.90"`` (``signed``: ``"+79.90"``, for differences); ``missing`` when there
    is no number."""
    shown = points(value)
    if shown is None:
        return missing
    return f"{shown:+.{digits}f}" if signed else f"{shown:.{digits}f}"


def in_points(metric: object) -> bool:
    """Whether a metric's scores are shown in GLUE points (×100): every higher-is-better score
    (accuracy, F1, correlations); a loss or a perplexity is shown as it is."""
    return higher_is_better(metric)


def shown(value: object, metric: object = None) -> float | None:
    """A score as a person reads it, as a number: in GLUE points for a GLUE-like metric (``0.799``
    -> ``79.9``), as it is for a loss or a perplexity; None for a missing or non-finite value."""
    if in_points(metric):
        return points(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def format_score(value: object, metric: object = None, digits: int = 2, missing: str = "–",
                 signed: bool = False) -> str:
    """A headline score (or, ``signed``, a difference of two) as a person reads it: in points for
    GLUE-like metrics (``0.79902`` -> ``"79.90"``), as it is for a loss or perplexity (``5.123`` ->
    ``"5.12"``)."""
    number = shown(value, metric)
    if number is None:
        return missing
    return f"{number:+.{digits}f}" if signed else f"{number:.{digits}f}"


def unit(metric: object) -> str:
    """What a difference of ``metric`` is counted in, for prose: ``points`` for a GLUE-like metric,
    the metric's own name for a loss or perplexity (``+0.05 perplexity``)."""
    return "points" if in_points(metric) else str(metric)


def axis_title(metric: object) -> str:
    """A chart axis for ``metric``: ``accuracy (×100)``; ``perplexity (lower is better)``."""
    name = str(metric) if metric else "metric"
    return f"{name} (×100)" if in_points(metric) else f"{name} (lower is better)"


def format_interval(ci: tuple[float, float] | list[float] | None, digits: int = 1, missing: str = "",
                    metric: object = None) -> str:
    """A 95% interval of scores as a person reads them: ``(0.753, 0.845)`` -> ``"[75.3, 84.5]"`` (in
    points; a loss or perplexity's interval as it is)."""
    if ci is None or len(ci) != 2 or shown(ci[0], metric) is None or shown(ci[1], metric) is None:
        return missing
    return f"[{format_score(ci[0], metric, digits)}, {format_score(ci[1], metric, digits)}]"
