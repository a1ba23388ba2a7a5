"""Loading a finished run's adapters and head onto its base model, and predicting with it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from heterolora_core.adapters.checkpoint import check_head, load_checkpoint, load_head
from heterolora_core.methods import registry
from heterolora_core.records.record import RunRecord
from heterolora_core.training.models import load_classifier, load_tokenizer, meta_classifier
from heterolora_core.training.run_config import RunConfig


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    config: RunConfig
    label_names: list[str] | None
    is_regression: bool


def load_run_for_inference(run_dir: str | Path) -> LoadedRun:
    """Rebuild the run's model: base weights, the method's trained tensors (HeteroLoRA: the same
    search space with the enabled set as at the end of training) and the trained head.
    ValueError with one line when the folder is not a finished run with saved adapters."""
    record = RunRecord(run_dir)
    if not record.exists():
        raise ValueError(f"{run_dir} is not a run folder (no config.json)")
    config, problem = record.run_config()
    if config is None:
        raise ValueError(f"run {record.run_id} cannot be loaded: {problem}")
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
    num_labels = summary.num_labels or 2
    is_regression = bool(summary.is_regression)
    check_head(meta_classifier(config.model, num_labels), checkpoint)  # shapes only, before any weight loads
    model = load_classifier(config.model, num_labels, "regression" if is_regression else None)
    model = registry.load(config.mode).restore(model, config, checkpoint)
    load_head(model, checkpoint)
    model.eval()
    return LoadedRun(model, load_tokenizer(config.model), config, summary.label_names, is_regression)


def predict(loaded: LoadedRun, text: str, text_pair: str | None = None) -> dict[str, Any]:
    """``{"label": id, "label_name": name, "probabilities": [...]}``, or ``{"score": x}`` for regression."""
    inputs = loaded.tokenizer(text, text_pair, truncation=True, max_length=loaded.config.max_length,
                              return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**inputs).logits[0].float()
    if loaded.is_regression:
        return {"score": float(logits[0])}
    probs = torch.softmax(logits, dim=-1)
    label = int(probs.argmax())
    name = loaded.label_names[label] if loaded.label_names and label < len(loaded.label_names) else str(label)
    return {"label": label, "label_name": name, "probabilities": [round(float(p), 6) for p in probs]}
