"""The Trainer callback that keeps a run's record up to date while it trains.

:class:`RecordCallback` appends the logged losses and evaluation metrics to ``metrics.jsonl``,
rewrites the summary's progress, ETA, reallocation count and search time at most once a second,
and tracks the best and final evaluation of the headline metric. The method's own callbacks
(reallocation, AdaLoRA's rank updates) live with the methods.
"""
from __future__ import annotations

import math
import time

from collections.abc import Mapping

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from heterolora_core.methods.base import MethodRun
from heterolora_core.records.record import RunRecord

SUMMARY_WRITE_SECONDS = 1.0


class RecordCallback(TrainerCallback):
    """Writes metrics and progress of one run.

    Args:
        record: the run record (None on non-main ranks: only evaluation is tracked).
        run: the method's run (reallocation count, search seconds).
        total_steps: the run's length.
        started: when the run started (``time.time()``), for the wall time.
        metric_key: the evaluation key of the headline metric (``eval_accuracy``;
            ``eval_dev_matched_accuracy`` for a task with several dev splits).
        higher_is_better: the metric's direction (False for a loss or a perplexity): the best
            score is the largest, or the smallest.
    """

    def __init__(self, record: RunRecord | None, run: MethodRun, total_steps: int, started: float, metric_key: str,
                 higher_is_better: bool = True):
        self.record = record
        self.run = run
        self.total_steps = total_steps
        self.started = started
        self.metric_key = metric_key
        self.better = max if higher_is_better else min
        self.best_score: float | None = None
        self.final_score: float | None = None
        self.last_eval_step = -1
        self.train_started: float | None = None
        self.train_seconds = 0.0
        self._last_write = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_started = time.time()
        self.write_progress(state.global_step, force=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.write_progress(state.global_step)

    def write_progress(self, step: int, force: bool = False) -> None:
        if self.record is None:
            return
        now = time.time()
        if not force and now - self._last_write < SUMMARY_WRITE_SECONDS and step < self.total_steps:
            return
        self._last_write = now
        elapsed = now - (self.train_started or now)
        eta = elapsed / step * (self.total_steps - step) if step else None
        self.record.update_summary(
            progress=round(step / self.total_steps, 4), step=step, eta_seconds=round(eta, 1) if eta else None,
            num_reallocations=self.run.num_reallocations, search_seconds=round(self.run.search_seconds, 3),
            trainable_params=self.run.trainable_params(), wall_seconds=round(now - self.started, 2))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.record is None or not logs:
            return
        line = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                line[key] = value
        if "loss" in line or any(k.startswith("eval_") for k in line):
            self.record.append_metrics(**line)
        if isinstance(line.get("loss"), float) and not math.isfinite(line["loss"]):
            raise FloatingPointError(f"the training loss became {line['loss']} by step {state.global_step} "
                                     f"(is the learning rate too high?)")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.last_eval_step = state.global_step
        score = (metrics or {}).get(self.metric_key)
        if score is None:
            return
        self.final_score = float(score)
        self.best_score = self.final_score if self.best_score is None else self.better(self.best_score, self.final_score)
        if self.record is not None:
            self.record.update_summary(best_score=self.best_score, final_score=self.final_score)

    def on_train_end(self, args, state, control, **kwargs):
        self.train_seconds = time.time() - (self.train_started or time.time())


#: How Trainer's log keys read on the terminal: its ``grad_norm`` is the norm of every trainable
#: parameter's gradient before clipping, not the ``grad_norm`` proxy of the search.
_LOG_NAMES = {"loss": "training loss", "learning_rate": "learning rate",
              "grad_norm": "gradient norm (before clipping)", "epoch": "epoch"}
_LOG_SKIPPED = ("total_flos", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
                "train_runtime", "train_samples_per_second", "train_steps_per_second")


def format_log(logs: Mapping[str, object], step: int, max_steps: int) -> str:
    """One readable terminal line for a Trainer log: ``step 8/32 · epoch 0.25 · training loss 0.6856
    · learning rate 5e-4 · gradient norm (before clipping) 1.23``; evaluation scores read ``dev
    accuracy 79.90`` (GLUE points), losses as they are; timing keys are left out."""
    from heterolora_core.analysis.labels import format_lr
    from heterolora_core.analysis.units import format_points

    parts = [f"step {step}/{max_steps}"]
    for key, value in logs.items():
        if key in _LOG_SKIPPED or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        name = _LOG_NAMES.get(key) or ("dev " + key.removeprefix("eval_").replace("_", " ") if key.startswith("eval_")
                                       else key.replace("_", " "))
        if key == "learning_rate":
            text = format_lr(value)
        elif key == "epoch":
            text = f"{value:.2f}"
        elif key.startswith("eval_") and not key.endswith("loss"):  # a score: GLUE points, as everywhere
            text = format_points(value)
        else:
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
        parts.append(f"{name} {text}")
    return " · ".join(parts)


class ReadableProgress(ProgressCallback):
    """Trainer's progress bars, with each log written as :func:`format_log` instead of a dict of
    quoted numbers."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(format_log(logs, state.global_step, state.max_steps))


class ReadablePrinter(PrinterCallback):
    """Trainer's log printer (progress bars off), each log written as :func:`format_log`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(format_log(logs, state.global_step, state.max_steps), flush=True)


def use_readable_progress(trainer) -> None:
    """Swap a Trainer's :class:`ProgressCallback` (progress bars on) for :class:`ReadableProgress`
    and its :class:`PrinterCallback` (bars off) for :class:`ReadablePrinter`."""
    callbacks = trainer.callback_handler.callbacks
    for stock, readable in ((ProgressCallback, ReadableProgress), (PrinterCallback, ReadablePrinter)):
        if any(type(cb) is stock for cb in callbacks):
            trainer.remove_callback(stock)
            trainer.add_callback(readable)
