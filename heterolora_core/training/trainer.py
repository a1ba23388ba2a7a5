"""Fine-tuning runs with Hugging Face ``Trainer`` (AdamW, weight decay 0.01, constant learning
rate), on GLUE or a user's data, for every registered method.

``run_training`` validates the config, claims the run folder, loads data and model, hands the
model to the run's method (:mod:`heterolora_core.methods`), trains with the method's callbacks
and :class:`~heterolora_core.training.callbacks.RecordCallback`, evaluates every epoch (or every
``eval_every`` steps) and always at the end, then saves the checkpoint and the final summary.

Under ``torchrun`` the scores are averaged across ranks before selection, so every rank enables
the same set; DDP runs with ``find_unused_parameters`` because the set of modules that receive
gradients changes at every reallocation.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from heterolora_core.adapters.checkpoint import save_checkpoint
from heterolora_core.adapters.modules import head_module, head_parameter_count
from heterolora_core.methods import registry
from heterolora_core.methods.base import MethodContext, MethodRun
from heterolora_core.records.home import checked_home, runs_dir
from heterolora_core.records.record import RunRecord, Status, new_run_id, process_identity
from heterolora_core.tasks.base import PreparedTask
from heterolora_core.tasks.registry import task_for
from heterolora_core.training.callbacks import RecordCallback, use_readable_progress
from heterolora_core.training.environment import (CancelOnSignal, RunCancelled, check_report_to, environment_info,
                                                  is_main_process, mean_across_ranks, resolve_device, world_size)
from heterolora_core.training.run_config import RunConfig

TRAINER_SCRATCH = ".trainer"  # Trainer's output_dir inside the run folder (no checkpoints are written)


def run_training(config: RunConfig, out_dir: str | Path | None = None, progress: bool = True,
                 report_to: Sequence[str] = ()) -> RunRecord:
    """Train one run and keep its record up to date. Returns the record (status done); a failure
    or a cancel is recorded and raised.

    ``out_dir``: the run folder; a folder holding a ``queued`` record (made by the run store) is
    claimed; a folder holding any other record is refused. Default: ``$HETEROLORA_HOME/runs/<run-id>``.
    ``report_to``: experiment trackers the Trainer also logs to (tensorboard, mlflow, wandb; none
    unless asked), checked before the run starts; TensorBoard's event files go to ``<run>/tensorboard``.
    """
    config = config.normalised()
    config.validate()
    report_to = check_report_to(report_to)
    main = is_main_process()
    if out_dir is None:
        if world_size() > 1:
            raise ValueError("under torchrun, give --out so that every rank writes the same run folder")
        out_dir = runs_dir(checked_home()) / new_run_id(config.to_dict())  # a home this tool made
    record = RunRecord(out_dir)
    if main:
        claim_record(record, config)
    try:
        with CancelOnSignal():
            _train(config, record if main else None, progress and main, report_to)
        return record
    except (RunCancelled, KeyboardInterrupt) as exc:  # SIGTERM (dashboard's cancel) or Ctrl-C
        if main:
            record.update_summary(status=Status.CANCELLED, error=str(exc) or "cancelled by SIGINT", pid=None,
                                  finished_at=time.time())
        raise
    except BaseException as exc:
        if main:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            record.update_summary(status=Status.FAILED, error=f"{type(exc).__name__}: {message}", pid=None,
                                  finished_at=time.time())
        raise


def claim_record(record: RunRecord, config: RunConfig) -> None:
    """Create the record (or claim the store's queued one) and mark it running by this process."""
    full_config = {**config.to_dict(), **environment_info()}
    me = dict(**process_identity(), started_at=time.time(), progress=0.0)
    if not record.exists():
        RunRecord.create(record.path, full_config, status=Status.RUNNING, **me)
        return
    status = record.raw_summary().status
    if status != Status.QUEUED:
        raise ValueError(f"{record.path} already holds a run ({status}); choose another --out")
    record.write_config({**record.config(), **full_config})  # keeps the store's keys (sweep_id)
    record.update_summary(status=Status.RUNNING, error=None, **me)


def _train(config: RunConfig, record: RunRecord | None, progress: bool, report_to: Sequence[str] = ()) -> None:
    hf_logging.set_verbosity_error()
    if not progress:  # --no-progress: no bar at all, also not transformers' weight loading
        hf_logging.disable_progress_bar()
    started = time.time()
    device = resolve_device(config.device)
    if config.bf16 and not (device.startswith("cuda") and torch.cuda.is_bf16_supported()):
        raise ValueError("--bf16 needs a CUDA device with bfloat16 support")
    task = task_for(config)
    inputs = task.prepare(config)
    torch.manual_seed(config.seed)
    model = task.load_model(config, inputs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = inputs.tokenizer.pad_token_id
    steps_per_epoch = max(1, math.ceil(len(inputs.train_rows) / (config.batch_size * world_size())))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    context = MethodContext(steps_per_epoch, total_steps, record, scoring_batches(inputs, config, model),
                            mean_across_ranks, _progress_bar("scoring") if progress else None)
    run = registry.load(config.mode).prepare(model, config, context)
    head = head_module(run.model)  # None for a causal LM: its tied LM head stays frozen
    for p in head.parameters() if head is not None else ():
        p.requires_grad_(True)
    callback = RecordCallback(record, run, total_steps, started, inputs.metric_key, inputs.higher_is_better)
    trackers = tracker_callbacks(report_to, record)
    args = training_arguments(config, record, device, total_steps, progress, inputs.eval_batch_size,
                              [n for n in report_to if n not in trackers])
    trainer = Trainer(model=run.model, args=args, train_dataset=inputs.train_rows, eval_dataset=inputs.eval_dataset,
                      data_collator=inputs.collator, compute_metrics=inputs.compute_metrics,
                      preprocess_logits_for_metrics=inputs.preprocess_logits,
                      callbacks=[callback, *run.callbacks(), *trackers.values()])
    use_readable_progress(trainer)
    if record is not None:
        record.update_summary(metric=inputs.metric_name, max_steps=total_steps, step=0, num_reallocations=0,
                              planned_reallocations=run.planned_reallocations, **inputs.summary,
                              train_rows=len(inputs.train_rows), dev_rows=inputs.dev_rows,
                              trainable_params=run.trainable_params(), head_params=head_parameter_count(run.model))
    trainer.train()
    if callback.last_eval_step != trainer.state.global_step:  # always evaluate once at the end
        trainer.evaluate()
    if record is not None:
        finish_record(record, run, callback, trainer.state.global_step, device, started)


def finish_record(record: RunRecord, run: MethodRun, callback: RecordCallback, step: int, device: str,
                  started: float) -> None:
    """Save the checkpoint and write the final summary (status done)."""
    shutil.rmtree(record.path / TRAINER_SCRATCH, ignore_errors=True)
    save_checkpoint(record.path / RunRecord.ADAPTERS, run.model, run.checkpoint_tensors(), run.enabled(), run.ranks())
    # peak of tensors this process allocated on the GPU (the allocator's view; RSS is the CPU's)
    peak_gpu = round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None
    record.update_summary(
        status=Status.DONE, device=device, peak_gpu_mb=peak_gpu, progress=1.0, step=step, eta_seconds=0.0, pid=None,
        finished_at=time.time(), best_score=callback.best_score, final_score=callback.final_score,
        num_reallocations=run.num_reallocations, wall_seconds=round(time.time() - started, 2),
        search_seconds=round(run.search_seconds, 3), train_seconds=round(callback.train_seconds, 2),
        trainable_params=run.trainable_params(), head_params=head_parameter_count(run.model), **run.summary_fields())


def tracker_callbacks(report_to: Sequence[str], record: RunRecord | None) -> dict[str, Any]:
    """Trackers that need a callback of our own: TensorBoard writes into the run folder
    (``<run>/tensorboard``; the Trainer's default is its scratch folder, removed at the end)."""
    if "tensorboard" not in report_to or record is None:
        return {}
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return {"tensorboard": TensorBoardCallback(SummaryWriter(log_dir=str(record.path / "tensorboard")))}


def training_arguments(config: RunConfig, record: RunRecord | None, device: str, total_steps: int,
                       show_progress: bool, eval_batch_size: int | None = None,
                       report_to: Sequence[str] = ()) -> TrainingArguments:
    scratch = (record.path if record is not None else Path(os.environ.get("TMPDIR", "/tmp"))) / TRAINER_SCRATCH
    return TrainingArguments(
        output_dir=str(scratch), learning_rate=config.lr, weight_decay=0.01, lr_scheduler_type="constant",
        warmup_steps=0, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=eval_batch_size or max(32, config.batch_size), num_train_epochs=config.epochs,
        max_steps=total_steps, eval_strategy="steps" if config.eval_every else "epoch", eval_steps=config.eval_every,
        logging_steps=config.logging_steps or max(1, min(10, total_steps // 8)), save_strategy="no", report_to=list(report_to),
        seed=config.seed, data_seed=config.seed, use_cpu=(device == "cpu"), bf16=config.bf16,
        dataloader_num_workers=0, disable_tqdm=not show_progress, ddp_find_unused_parameters=True,
        remove_unused_columns=False, ddp_backend="gloo" if device == "cpu" and world_size() > 1 else None,
    )


def scoring_batches(inputs: PreparedTask, config: RunConfig, model) -> Callable[[int, int], list]:
    """``(step, n)`` -> n shuffled training batches on the model's device, seeded by (seed, step):
    the scoring passes of proxies that need passes of their own."""

    def batches(step: int, n: int) -> list:
        gen = torch.Generator().manual_seed(config.seed * 7919 + step)
        loader = DataLoader(inputs.train_rows, batch_size=config.batch_size, shuffle=True,
                            collate_fn=inputs.collator, generator=gen)
        device = next(model.parameters()).device
        out = []
        for batch in loader:
            out.append({k: v.to(device) for k, v in batch.items()})
            if len(out) >= n:
                break
        return out

    return batches


def _progress_bar(description: str) -> Callable:
    return lambda items: tqdm(items, desc=description, leave=False)
