"""Task metrics: GLUE conventions, computed by the local ``evaluate`` module in ``glue_metric/``.

    task                 compute_metrics keys            headline
    cola                 matthews_correlation            matthews_correlation
    mrpc, qqp            accuracy, f1                    accuracy
    stsb                 pearson, spearmanr              pearson
    sst2 mnli qnli rte wnli  accuracy                    accuracy   (MNLI: each dev split alike)
    custom               accuracy, or pearson + spearmanr for regression data

``custom`` needs ``is_regression`` (``TaskData.is_regression``) to pick between the two.
``evaluate`` is imported only when a metric is computed: it pulls in transformers (seconds), and the
dashboard asks for ``headline_metric`` alone. Loading the module from its folder touches no network,
so it works with ``HF_HUB_OFFLINE`` / ``HF_EVALUATE_OFFLINE`` set or unset.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from heterolora_core.training.data import CUSTOM_TASK, TASKS

GLUE_METRIC_DIR = Path(__file__).resolve().with_name("glue_metric")


def metric_config(task: str, is_regression: bool | None = None) -> str:
    """The ``glue_metric`` config that scores ``task``: the task id itself, or for ``custom`` data
    ``regression`` / ``classification``."""
    if task in TASKS:
        return task
    if task != CUSTOM_TASK:
        raise ValueError(f"unknown task {task!r}; valid ids: {', '.join((*TASKS, CUSTOM_TASK))}")
    if is_regression is None:
        raise ValueError("task 'custom' needs is_regression (TaskData.is_regression) to choose its metric")
    return "regression" if is_regression else "classification"


def headline_metric(task: str, is_regression: bool | None = None) -> str:
    """The key of the one score that ranks runs of ``task`` (a key of ``compute_metrics``)."""
    config = metric_config(task, is_regression)
    if config in TASKS:
        return TASKS[config].metric
    return "pearson" if config == "regression" else "accuracy"


def load_glue_metric(task: str, is_regression: bool | None = None):
    """The ``evaluate`` module for ``task``, loaded from ``glue_metric/`` and kept in memory (no
    cache files or locks on disk). A fresh instance per call: instances hold state during
    ``compute`` and must not be shared between threads; reloading costs milliseconds."""
    import evaluate

    return evaluate.load(str(GLUE_METRIC_DIR), config_name=metric_config(task, is_regression),
                         keep_in_memory=True)


def compute_metrics(task: str, predictions: Any, references: Any,
                    is_regression: bool | None = None) -> dict[str, float]:
    """GLUE scores of ``predictions`` against ``references`` (class ids, or floats for regression)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape or predictions.ndim != 1 or predictions.size == 0:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} must be "
                         f"non-empty 1-d arrays of the same length")
    scores = load_glue_metric(task, is_regression).compute(predictions=predictions, references=references)
    return {key: float(value) for key, value in scores.items()}


def logits_to_predictions(logits: Any, is_regression: bool) -> np.ndarray:
    """Model outputs to predictions: the argmax class id per row, or for regression the single
    output per row. Takes NumPy arrays or torch tensors (any dtype or device), or a tuple whose
    first item is the logits (``EvalPrediction.predictions`` of a model with extra outputs)."""
    if isinstance(logits, tuple):  # Trainer passes (logits, *extra outputs) when a model returns more
        logits = logits[0]
    if hasattr(logits, "detach"):  # torch: NumPy has no bfloat16, and the tensor may be on a GPU
        logits = logits.detach().float().cpu().numpy()
    logits = np.asarray(logits)
    if not is_regression:
        return logits.argmax(axis=-1)
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim != 1:
        raise ValueError(f"regression logits must have one output per row, got shape {logits.shape}")
    return logits
