"""Classification tasks (``--objective classify``): GLUE and own classification files, a fresh head.

The data, tokenisation and metrics are those of :mod:`heterolora_core.training.data` and
:mod:`heterolora_core.training.metrics`; this task puts them together for the trainer and refuses
an SFT file (prompt/completion or messages rows) given as classification data.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from heterolora_core.tasks.base import PreparedTask, Task, hold_out
from heterolora_core.tasks.instructions import looks_like_sft_row
from heterolora_core.training.data import (TASKS, DataError, check_task_source, load_task, make_collator,
                                           tokenize_examples)
from heterolora_core.training.metrics import compute_metrics, headline_metric, logits_to_predictions
from heterolora_core.training.models import load_classifier, load_tokenizer, meta_classifier
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import Objective


class ClassificationTask(Task):
    """GLUE classification / regression, or own files (task ``custom``), with a task head."""

    objective = Objective.CLASSIFY

    def check(self, config: RunConfig) -> None:
        for path in (config.train_file, config.dev_file):
            if path and _is_sft_file(Path(path)):
                raise DataError(f"{path} holds instruction rows (prompt/completion or messages): "
                                f"train them with --task sft --objective lm")
        check_task_source(config.task, train_file=config.train_file, dev_file=config.dev_file)

    def train_count(self, config: RunConfig) -> int:
        return len(load_task(config.task, train_file=config.train_file, dev_file=config.dev_file).train)

    def num_labels(self, config: RunConfig) -> int:
        return TASKS[config.task].num_labels if config.task in TASKS else 2

    def prepare(self, config: RunConfig) -> PreparedTask:
        self.check(config)
        task = load_task(config.task, train_file=config.train_file, dev_file=config.dev_file)
        tokenizer = load_tokenizer(config.model)
        train, dev = hold_out(task.train, task.dev, config.heldout_rows)
        train_rows = tokenize_examples(train, tokenizer, config.max_length, config.train_limit)
        dev_rows = {split: tokenize_examples(rows, tokenizer, config.max_length, config.dev_limit)
                    for split, rows in dev.items()}
        metric = headline_metric(config.task, task.is_regression)
        primary = next(iter(dev_rows))
        split = f"{primary}_" if len(dev_rows) > 1 else ""

        def compute(eval_pred) -> dict[str, float]:
            predictions = logits_to_predictions(eval_pred.predictions, task.is_regression)
            return compute_metrics(config.task, predictions, eval_pred.label_ids, task.is_regression)

        eval_dataset = dev_rows[primary] if len(dev_rows) == 1 else dev_rows
        return PreparedTask(tokenizer, train_rows, eval_dataset, make_collator(tokenizer), metric,
                            f"eval_{split}{metric}", compute,
                            summary=dict(num_labels=task.num_labels, label_names=task.label_names,
                                         is_regression=task.is_regression))

    def load_model(self, config: RunConfig, prepared: PreparedTask, torch_dtype=None):
        regression = prepared.summary["is_regression"]
        return load_classifier(config.model, prepared.summary["num_labels"],
                               problem_type="regression" if regression else None, torch_dtype=torch_dtype)

    def meta_model(self, config: RunConfig):
        return meta_classifier(config.model, num_labels=self.num_labels(config))

    def inference_model(self, config: RunConfig, summary):
        return load_classifier(config.model, summary.num_labels or 2, "regression" if summary.is_regression else None)

    def predict(self, loaded, text: str, text_pair: str | None, max_new_tokens: int) -> dict[str, Any]:
        """``{"label": id, "label_name": name, "probabilities": [...]}``, or ``{"score": x}`` for regression."""
        import torch

        inputs = loaded.tokenizer(text, text_pair, truncation=True, max_length=loaded.config.max_length,
                                  return_tensors="pt")
        with torch.no_grad():
            logits = loaded.model(**inputs).logits[0].float()
        if loaded.is_regression:
            return {"score": float(logits[0])}
        probs = torch.softmax(logits, dim=-1)
        label = int(probs.argmax())
        names = loaded.label_names
        name = names[label] if names and label < len(names) else str(label)
        return {"label": label, "label_name": name, "probabilities": [round(float(p), 6) for p in probs]}


def _is_sft_file(path: Path) -> bool:
    """True when the first row of a JSON-lines file is an SFT row (unreadable files: False, the
    classification reader says what is wrong with them)."""
    if path.suffix.lower() not in (".jsonl", ".json") or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8-sig") as fh:
            first = next((line for line in fh if line.strip()), None)
        row = json.loads(first) if first is not None else None
    except (OSError, ValueError):
        return False
    return isinstance(row, dict) and looks_like_sft_row(row)
