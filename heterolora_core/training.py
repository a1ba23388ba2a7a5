"""Fine-tuning runs: uniform LoRA, static and dynamic HeteroLoRA (and PEFT's AdaLoRA), on GLUE or
a user's data, with Hugging Face ``Trainer`` (AdamW, weight decay 0.01, constant learning rate).

The reallocator plugs in as a ``TrainerCallback``: static search scores once before the first
step; dynamic search reallocates every fraction f of an epoch (and at step 0 of each epoch). With
the default proxy settings, the scores of a reallocation come from the ``score_window`` training
steps just before it (see ``proxies``), so search costs no extra passes after step 0.

Under ``torchrun`` the scores are averaged across ranks before selection, so every rank enables
the same set; DDP runs with ``find_unused_parameters`` because the set of modules that receive
gradients changes at every reallocation.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .runs import RunConfig, RunRecord

ADAPTER_FILE = "adapters.safetensors"


class RunCancelled(Exception):
    """The run received SIGTERM / SIGINT (a cancel from the dashboard or Ctrl-C)."""


# ----------------------------------------------------------------------------------------------
# Validation that needs no heavy work
# ----------------------------------------------------------------------------------------------

def normalise_config(config: RunConfig) -> RunConfig:
    """User files imply the ``custom`` task; lists and types are made canonical."""
    if (config.train_file or config.dev_file) and config.task != "custom":
        config.task = "custom"
    if isinstance(config.lora_targets, str):
        config.lora_targets = [t for t in config.lora_targets.split(",") if t]
    config.lora_targets = list(config.lora_targets)
    return config


def validate_config(config: RunConfig) -> None:
    """Every check that can be made before loading the model's weights or the data; raises
    ValueError (or a subclass) with a one-line message."""
    from .budget import Budget
    from .config import HeteroLoraConfig
    from .data import check_task_source
    from .models import check_model
    from .proxies import check_proxy
    from .runs import MODES, RANKINGS, SCORE_NORMS

    if config.mode not in MODES:
        raise ValueError(f"unknown mode {config.mode!r}; choose from {', '.join(MODES)}")
    check_proxy(config.proxy)
    if config.ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {config.ranking!r}; choose from {', '.join(RANKINGS)}")
    if config.score_norm not in SCORE_NORMS:
        raise ValueError(f"unknown score normalisation {config.score_norm!r}; choose from {', '.join(SCORE_NORMS)}")
    HeteroLoraConfig(rank=config.rank, lora_targets=tuple(config.lora_targets), shortcuts=config.shortcuts)
    if config.mode in ("static", "dynamic"):
        Budget(config.enable_ratio, config.match_uniform_rank)
    if not 0.0 < config.realloc_every <= 1.0:
        raise ValueError(f"realloc_every must be a fraction of an epoch in (0, 1], got {config.realloc_every}")
    for name in ("batch_size", "max_length", "score_window"):
        if int(getattr(config, name)) < 1:
            raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    for name in ("max_steps", "train_limit", "dev_limit", "proxy_batches", "eval_every", "logging_steps"):
        value = getattr(config, name)
        if value is not None and int(value) < 1:
            raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {value}")
    if config.lr <= 0 or config.epochs <= 0:
        raise ValueError("lr and epochs must be positive")
    if config.mode == "adalora":
        from .baselines import check_adalora

        check_adalora(config)
    check_task_source(config.task, train_file=config.train_file, dev_file=config.dev_file)
    check_model(config.model)


def check_budget(config: RunConfig, num_labels: int = 2):
    """The exact plan of trainable parameters (model config only); ValueError when the budget
    enables nothing or the architecture is unsupported."""
    from .budget import plan_budget

    return plan_budget(config.model, config.lora_targets, config.shortcuts and config.mode != "adalora",
                       config.rank, config.enable_ratio, config.match_uniform_rank,
                       mode=config.mode, num_labels=num_labels)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA device is available")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return name


def environment_info() -> dict[str, Any]:
    """Package versions and the project's git commit, stored in config.json."""
    import importlib.metadata as md

    versions = {}
    for package in ("torch", "transformers", "datasets", "evaluate", "peft", "accelerate"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    commit = None
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"versions": versions, "git_commit": commit, "python": sys.version.split()[0]}


# ----------------------------------------------------------------------------------------------
# Reallocation schedule
# ----------------------------------------------------------------------------------------------

def reallocation_steps(steps_per_epoch: int, total_steps: int, fraction: float) -> list[int]:
    """Global steps (after that many optimizer steps) at which dynamic search reallocates:
    e·S + round(j·f·S) for every epoch e and j = 0 … ceil(1/f) - 1, excluding 0 (done before
    training) and the final step. E.g. S = 100, f = 0.2: 100, 120, 140, …"""
    steps = set()
    per_epoch = math.ceil(1.0 / fraction - 1e-9)
    epochs = math.ceil(total_steps / steps_per_epoch)
    for e in range(epochs):
        for j in range(per_epoch):
            s = e * steps_per_epoch + int(math.floor(j * fraction * steps_per_epoch + 0.5))  # half rounds up
            if 0 < s < total_steps:
                steps.add(s)
    # within one epoch, a fraction so small that rounding repeats a step: the set removes repeats
    return sorted(steps)


@dataclass
class _Plan:
    steps_per_epoch: int
    total_steps: int
    realloc_steps: list[int]


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _mean_across_ranks(scores: dict[str, float]) -> dict[str, float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return scores
    names = sorted(scores)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    values = torch.tensor([scores[n] for n in names], dtype=torch.float64, device=backend_device)
    dist.all_reduce(values)
    values /= dist.get_world_size()
    return {n: float(v) for n, v in zip(names, values.cpu())}


_NOT_INSTALLED = object()


def _install_signal_handlers():
    """SIGTERM raises RunCancelled. Returns the previous handler, to be restored when the run
    ends; ``_NOT_INSTALLED`` off the main thread, where Python allows no signal handlers (the
    run then simply cannot be cancelled by a signal)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _NOT_INSTALLED

    def handler(signum, frame):
        raise RunCancelled(f"cancelled by signal {signal.Signals(signum).name}")

    return signal.signal(signal.SIGTERM, handler)


def run_training(config: RunConfig, out_dir: str | Path | None = None, progress: bool = True) -> RunRecord:
    """Train one run and keep its record up to date. Returns the record (status done/failed/cancelled).

    ``out_dir``: the run folder; a folder holding a ``queued`` record (made by the dashboard's
    store) is claimed; a folder holding any other record is refused. Default:
    ``$HETEROLORA_HOME/runs/<run-id>``.
    """
    from .runs import new_run_id, runs_dir

    config = normalise_config(config)
    validate_config(config)
    main = _is_main_process()
    if out_dir is None:
        if _world_size() > 1:
            raise ValueError("under torchrun, give --out so that every rank writes the same run folder")
        out_dir = runs_dir() / new_run_id(config.to_dict())
    record = RunRecord(out_dir)
    if main:
        record = _claim_record(record, config)
    previous_handler = _NOT_INSTALLED
    try:
        previous_handler = _install_signal_handlers()
        _train(config, record, main, progress)
        return record
    except (RunCancelled, KeyboardInterrupt) as exc:  # SIGTERM (dashboard's cancel) or Ctrl-C
        if main:
            record.update_summary(status="cancelled", error=str(exc) or "cancelled by SIGINT", pid=None)
        raise
    except BaseException as exc:
        if main:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            record.update_summary(status="failed", error=f"{type(exc).__name__}: {message}", pid=None)
        raise
    finally:
        if previous_handler is not _NOT_INSTALLED:
            # None: the previous handler was not installed from Python; the default is the best guess
            signal.signal(signal.SIGTERM, previous_handler if previous_handler is not None else signal.SIG_DFL)


def _claim_record(record: RunRecord, config: RunConfig) -> RunRecord:
    full_config = {**config.to_dict(), **environment_info()}
    if record.exists():
        status = record.raw_summary().get("status")
        if status != "queued":
            raise ValueError(f"{record.path} already holds a run ({status}); choose another --out")
        # keep the queued config's keys, updated with what this process will really run
        existing = record.config()
        existing.update(full_config)
        record.write_config(existing)
    else:
        RunRecord.create(record.path, full_config, status="queued")
    record.update_summary(status="running", pid=os.getpid(), started_at=time.time(), error=None, progress=0.0)
    return record


def _train(config: RunConfig, record: RunRecord, main: bool, progress: bool) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from .adapters import head_module
    from .architectures import attach
    from .budget import Budget
    from .config import HeteroLoraConfig
    from .data import load_task, make_collator, tokenize_examples
    from .metrics import compute_metrics, headline_metric, logits_to_predictions
    from .models import load_classifier, load_tokenizer
    from .search import Reallocator

    hf_logging.set_verbosity_error()
    if not (progress and main):  # --no-progress: no bar at all, also not transformers' weight loading
        hf_logging.disable_progress_bar()
    started = time.time()
    device = resolve_device(config.device)
    if config.bf16 and not (device.startswith("cuda") and torch.cuda.is_bf16_supported()):
        raise ValueError("--bf16 needs a CUDA device with bfloat16 support")

    task = load_task(config.task, train_file=config.train_file, dev_file=config.dev_file)
    tokenizer = load_tokenizer(config.model)
    train_rows = tokenize_examples(task.train, tokenizer, config.max_length, config.train_limit)
    dev_rows = {split: tokenize_examples(rows, tokenizer, config.max_length, config.dev_limit)
                for split, rows in task.dev.items()}
    metric_name = headline_metric(config.task, task.is_regression)

    torch.manual_seed(config.seed)
    model = load_classifier(config.model, task.num_labels,
                            problem_type="regression" if task.is_regression else None)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    world = _world_size()
    steps_per_epoch = max(1, math.ceil(len(train_rows) / (config.batch_size * world)))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))

    adapters = adalora = None
    if config.mode == "adalora":
        from .baselines import attach_adalora

        model, adalora = attach_adalora(model, config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    else:
        hetero = HeteroLoraConfig(rank=config.rank, alpha=config.alpha, lora_targets=tuple(config.lora_targets),
                                  shortcuts=config.shortcuts, init_seed=config.seed)
        adapters = attach(model, hetero)
    head = head_module(model)
    for p in head.parameters():
        p.requires_grad_(True)

    collator = make_collator(tokenizer)
    plan = _Plan(steps_per_epoch, total_steps,
                 reallocation_steps(steps_per_epoch, total_steps, config.realloc_every) if config.mode == "dynamic" else [])

    reallocator = None
    if config.mode in ("static", "dynamic"):
        reallocator = Reallocator(
            model, adapters, config.proxy, Budget(config.enable_ratio, config.match_uniform_rank),
            ranking=config.ranking, score_norm=config.score_norm, seed=config.seed,
            proxy_batches=config.proxy_batches, reduce_scores=_mean_across_ranks,
            on_record=(lambda r: _record_reallocation(record, adapters, r)) if main else None,
            progress=_progress_bar("scoring", progress and main))
    elif adapters is not None:
        adapters.enable_all()
        if main:
            record.append_reallocation(0, {n: 1.0 for n in adapters.names()}, adapters.enabled(), uniform=True)

    eval_strategy = "steps" if config.eval_every else "epoch"
    args = _training_arguments(TrainingArguments, config, record.path / ".trainer", device, total_steps,
                               eval_strategy, progress and main)

    def metrics_fn(eval_pred):
        predictions = logits_to_predictions(eval_pred.predictions, task.is_regression)
        return compute_metrics(config.task, predictions, eval_pred.label_ids, task.is_regression)

    eval_dataset = dev_rows[task.primary_split] if len(dev_rows) == 1 else dev_rows
    callback = _RunCallback(config, record, reallocator, plan, main, started, metric_name,
                            primary=task.primary_split if len(dev_rows) > 1 else None, train_rows=train_rows,
                            collator=collator)
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_dataset,
                      data_collator=collator, compute_metrics=metrics_fn,
                      callbacks=[callback] + ([adalora.callback(record if main else None)] if adalora is not None else []))
    callback.trainer = trainer
    if main:
        counts = _parameter_counts(model, adapters, config)
        if reallocator is not None and not reallocator.history:
            # every candidate is still on until the search selects: the count comes with the first selection
            counts["trainable_params"] = None
        record.update_summary(metric=metric_name, max_steps=total_steps, step=0, num_reallocations=0,
                              realloc_steps=plan.realloc_steps, num_labels=task.num_labels,
                              label_names=task.label_names, is_regression=task.is_regression,
                              train_rows=len(train_rows), dev_rows=len(eval_dataset) if isinstance(eval_dataset, list) else None,
                              **counts)
    trainer.train()
    if callback.last_eval_step != trainer.state.global_step:  # always evaluate once at the end
        trainer.evaluate()
    if main:
        import shutil

        shutil.rmtree(record.path / ".trainer", ignore_errors=True)  # Trainer's scratch folder (no checkpoints)
        counts = _parameter_counts(model, adapters, config)
        _save_adapters(record, model, adapters)
        wall = time.time() - started
        # peak of tensors this process allocated on the GPU (the allocator's view; RSS is the CPU's)
        peak_gpu = round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None
        summary = record.update_summary(device=device, peak_gpu_mb=peak_gpu,
            status="done", progress=1.0, step=trainer.state.global_step, eta_seconds=0.0, pid=None,
            best_score=callback.best_score, final_score=callback.final_score,
            num_reallocations=len(reallocator.history) if reallocator else
            (1 if adapters is not None else adalora.num_records if adalora is not None else 0),
            wall_seconds=round(wall, 2), search_seconds=round(reallocator.search_seconds, 3) if reallocator else 0.0,
            train_seconds=round(callback.train_seconds, 2), **counts)
        return summary
    return {}


def _training_arguments(cls, config: RunConfig, output_dir: Path, device: str, total_steps: int,
                        eval_strategy: str, show_progress: bool):
    return cls(
        output_dir=str(output_dir), learning_rate=config.lr, weight_decay=0.01, lr_scheduler_type="constant",
        warmup_steps=0, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(32, config.batch_size), num_train_epochs=config.epochs,
        max_steps=total_steps, eval_strategy=eval_strategy, eval_steps=config.eval_every,
        logging_steps=config.logging_steps or max(1, min(10, total_steps // 8)), save_strategy="no", report_to=[], seed=config.seed,
        data_seed=config.seed, use_cpu=(device == "cpu"), bf16=config.bf16, dataloader_num_workers=0,
        disable_tqdm=not show_progress, ddp_find_unused_parameters=True, remove_unused_columns=False,
        ddp_backend="gloo" if device == "cpu" and _world_size() > 1 else None,
    )


def _record_reallocation(record, adapters, reallocation) -> None:
    """Append a selection to the record, and keep the summary's count on what is enabled now."""
    record.append_reallocation(reallocation.step, reallocation.scores, reallocation.enabled,
                               seconds=round(reallocation.seconds, 4))
    record.update_summary(trainable_params=int(adapters.num_trainable()))


def _parameter_counts(model, adapters, config: RunConfig) -> dict[str, int]:
    from .adapters import head_parameter_count

    head = head_parameter_count(model)
    if adapters is None:  # AdaLoRA: kept ranks counted by the baseline module (+ initial/target counts)
        from .baselines import adalora_parameter_counts

        return {**adalora_parameter_counts(model), "head_params": int(head)}
    return {"trainable_params": int(adapters.num_trainable()), "head_params": int(head)}


def _progress_bar(description: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=description, leave=False)


def _save_adapters(record: RunRecord, model, adapters) -> None:
    """``adapters/adapters.safetensors``: every adapter factor and the head; the enabled set in
    ``adapters/enabled.json`` (what ``predict`` switches on)."""
    from safetensors.torch import save_file

    from .adapters import head_module

    folder = record.path / RunRecord.ADAPTERS
    folder.mkdir(exist_ok=True)
    tensors = {}
    if adapters is not None:
        for module in adapters.modules_in_order():
            tensors[f"adapters.{module.name}.lora_A"] = module.lora_A.detach().cpu().contiguous()
            tensors[f"adapters.{module.name}.lora_B"] = module.lora_B.detach().cpu().contiguous()
        (folder / "enabled.json").write_text(json.dumps(adapters.enabled()))
    else:  # AdaLoRA: its A, E, B factors (pruned triplets have E = 0), read back by load_adalora_weights
        from .baselines import adalora_state

        tensors.update({f"peft.{name}": value for name, value in adalora_state(model).items()})
    for key, value in head_module(model).state_dict().items():
        tensors[f"head.{key}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(folder / ADAPTER_FILE))


def _make_callback_class():
    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):
        """Writes metrics / summary as training goes, opens the scoring windows and reallocates."""

        def __init__(self, config, record, reallocator, plan, main, started, metric_name, primary,
                     train_rows, collator):
            self.config, self.record, self.reallocator, self.plan = config, record, reallocator, plan
            self.main, self.started, self.metric_name, self.primary = main, started, metric_name, primary
            self.train_rows, self.collator = train_rows, collator
            self.trainer = None
            self.best_score = None
            self.final_score = None
            self.last_eval_step = -1
            self.train_started = None
            self.train_seconds = 0.0
            self._window_open = None
            self._first_step_scoring = False
            self._last_summary_write = 0.0

        # -- scoring batches for step 0 and for proxies that need extra passes -------------------
        def _scoring_batches(self, step: int) -> list:
            import torch
            from torch.utils.data import DataLoader

            n = self.config.proxy_batches or (2 if self.config.proxy == "alpha_test" else
                                              1 if self.config.proxy == "synflow" else self.config.score_window)
            gen = torch.Generator().manual_seed(self.config.seed * 7919 + step)
            loader = DataLoader(self.train_rows, batch_size=self.config.batch_size, shuffle=True,
                                collate_fn=self.collator, generator=gen)
            device = next(self.reallocator.model.parameters()).device
            batches = []
            for batch in loader:
                batches.append({k: v.to(device) for k, v in batch.items()})
                if len(batches) >= n:
                    break
            return batches

        def _reallocate(self, step: int) -> None:
            r = self.reallocator
            batches = self._scoring_batches(step) if r.needs_batches(step) else None
            model = r.model
            was_training = model.training
            r.reallocate(step, batches)
            model.train(was_training)

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_started = time.time()
            if self.reallocator is None:
                return
            if self.config.mode == "dynamic" and self.reallocator.scores_from_training:
                # Step 0 for free: with every B = 0 the model computes the same function whatever
                # is enabled, so the first training batch, run with everything on, gives the scores;
                # the selection is applied before the first optimizer step by dropping the
                # gradients of the modules left off: exactly as if they had been off all along
                # (unless gradient clipping triggers at step 0, which then saw their norms too).
                self.reallocator.adapters.enable_all()
                self._first_step_scoring = True
            else:
                self._reallocate(0)
            self._write_progress(state, force=True)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if not self._first_step_scoring:
                return
            self._first_step_scoring = False
            self._close_window()
            self._reallocate(0)
            adapters = self.reallocator.adapters
            enabled = set(adapters.enabled())
            for module in adapters.modules_in_order():
                if module.name not in enabled:
                    module.lora_A.grad = None
                    module.lora_B.grad = None

        def _window_for(self, step_index: int) -> bool:
            """True when the step about to run (0-based) is in the window before a reallocation."""
            if self.reallocator is None or not self.reallocator.scores_from_training:
                return False
            if self._first_step_scoring and step_index == 0:
                return True
            w = self.config.score_window
            return any(s - w <= step_index < s for s in self.plan.realloc_steps)

        def on_step_begin(self, args, state, control, **kwargs):
            if self._window_for(state.global_step):
                self._window_open = self.reallocator.training_window()
                self._window_open.__enter__()

        def _close_window(self) -> None:
            if self._window_open is not None:
                self._window_open.__exit__(None, None, None)
                self._window_open = None

        def on_step_end(self, args, state, control, **kwargs):
            self._close_window()
            if self.reallocator is not None and state.global_step in self.plan.realloc_steps:
                self._reallocate(state.global_step)
            self._write_progress(state)

        def _write_progress(self, state, force: bool = False) -> None:
            if not self.main:
                return
            now = time.time()
            if not force and now - self._last_summary_write < 1.0 and state.global_step < self.plan.total_steps:
                return
            self._last_summary_write = now
            elapsed = now - (self.train_started or now)
            step = state.global_step
            eta = elapsed / step * (self.plan.total_steps - step) if step else None
            self.record.update_summary(
                progress=round(step / self.plan.total_steps, 4), step=step, eta_seconds=round(eta, 1) if eta else None,
                num_reallocations=len(self.reallocator.history) if self.reallocator else None,
                search_seconds=round(self.reallocator.search_seconds, 3) if self.reallocator else None,
                wall_seconds=round(now - self.started, 2))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not self.main or not logs:
                return
            line = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
            for key, value in logs.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    line[key] = value
            if "loss" not in line and "eval_loss" not in line and not any(k.startswith("eval_") for k in line):
                return
            self.record.append_metrics(**line)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.last_eval_step = state.global_step
            if not metrics:
                return
            prefix = f"eval_{self.primary}_" if self.primary else "eval_"
            score = metrics.get(prefix + self.metric_name)
            if score is None:
                return
            self.final_score = float(score)
            self.best_score = self.final_score if self.best_score is None else max(self.best_score, self.final_score)
            if self.main:
                self.record.update_summary(best_score=self.best_score, final_score=self.final_score)

        def on_train_end(self, args, state, control, **kwargs):
            self.train_seconds = time.time() - (self.train_started or time.time())

    return RunCallback


def _RunCallback(*args, **kwargs):
    return _make_callback_class()(*args, **kwargs)
