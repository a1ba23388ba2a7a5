"""Loading a finished run's adapters and head onto its base model, and predicting with it.

What a prediction is belongs to the run's task (:mod:`heterolora_core.tasks`): a classifier's label
and probabilities (or a regression score), or a causal LM's greedy completion of the prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heterolora_core.adapters.checkpoint import check_head, load_checkpoint, load_head
from heterolora_core.methods import registry
from heterolora_core.records.record import RunRecord, readable_run
from heterolora_core.tasks.base import Task
from heterolora_core.tasks.registry import task_for
from heterolora_core.training.models import load_tokenizer, meta_classifier
from heterolora_core.training.run_config import RunConfig

#: The most tokens ``predict`` generates for a causal-LM run (``--max-new-tokens`` is checked against it).
MAX_NEW_TOKENS = 1024


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    config: RunConfig
    label_names: list[str] | None
    is_regression: bool
    task: Task | None = None
    summary: Any = None


def load_run_for_inference(run_dir: str | Path) -> LoadedRun:
    """Rebuild the run's model: base weights, the method's trained tensors (HeteroLoRA: the same
    search space with the enabled set as at the end of training) and the trained head.
    ValueError with one line when the folder is not a finished run with saved adapters."""
    record, config = readable_run(run_dir, "loaded")
    try:  # no size is trusted from a record: every one within the launch limits before anything is built
        config.validate()
    except ValueError as exc:
        raise ValueError(f"run {record.run_id} cannot be loaded: config.json: {exc}") from None
    summary = record.raw_summary()
    unusable = [p for p in summary.problems if p.startswith(("summary.json: num_labels ", "summary.json: is_regression "))]
    if unusable:
        raise ValueError(f"run {record.run_id} cannot be loaded: {unusable[0]}")
    if not (record.path / RunRecord.ADAPTERS).is_dir():
        raise ValueError(f"run {record.run_id} has no saved adapters (status {record.summary().status})")
    checkpoint = load_checkpoint(record.path / RunRecord.ADAPTERS)
    task = task_for(config)
    if task.num_labels(config):  # a classifier: its saved head must fit, shapes only, before any weight loads
        check_head(meta_classifier(config.model, summary.num_labels or 2), checkpoint)
    model = task.inference_model(config, summary)
    model = registry.load(config.mode).restore(model, config, checkpoint)
    load_head(model, checkpoint)
    model.eval()
    return LoadedRun(model, load_tokenizer(config.model), config, summary.label_names, bool(summary.is_regression),
                     task, summary)


def predict(loaded: LoadedRun, text: str, text_pair: str | None = None,
            max_new_tokens: int = 64) -> dict[str, Any]:
    """The run's task's prediction for ``text`` (and ``text_pair``): ``{"label": id, "label_name":
    name, "probabilities": [...]}``, ``{"score": x}`` for regression, ``{"completion": text,
    "new_tokens": n}`` for a causal-LM run (greedy, at most ``max_new_tokens`` new tokens)."""
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max-new-tokens must be in [1, {MAX_NEW_TOKENS}], got {max_new_tokens}")
    task = loaded.task or task_for(loaded.config)
    return task.predict(loaded, text, text_pair, max_new_tokens)
