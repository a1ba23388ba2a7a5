"""``HeteroLoraCallback``: the search inside the user's own ``transformers.Trainer`` or TRL
``SFTTrainer``, in a few lines::

    from heterolora_core import HeteroLoraCallback
    cb = HeteroLoraCallback(model, out="runs/my-run", mode="dynamic", proxy="grad_norm", rank=16,
                            enable_ratio=0.25, lora_targets=["q", "v"], shortcuts=False, realloc_every=0.2)
    trainer = Trainer(model=model, args=args, train_dataset=..., callbacks=[cb])
    trainer.train()

The settings are ``train``'s options in Python form (the fields of
:class:`~heterolora_core.training.run_config.RunConfig` that describe the search), checked as a
launch is (:meth:`RunConfig.validate`). The callback is the engine, not a copy of it: construction
runs the method's own ``prepare`` (:mod:`heterolora_core.methods`), which attaches every candidate
to ``model`` (before the Trainer builds its optimizer, so the adapters' parameters are in it) and
returns the method's Trainer callbacks (:class:`~heterolora_core.methods.callbacks.SearchCallback`,
:class:`~heterolora_core.methods.callbacks.MaskedRankGuard`); this callback forwards the Trainer's
events to them and to the run record's :class:`~heterolora_core.training.callbacks.RecordCallback`.
So scores come from the gradients of ordinary steps (read in ``on_pre_optimizer_step``, where they
still exist), reallocations happen at the same steps as in ``python -m heterolora_core train``,
and a run with the same seed and data order selects the same modules at every reallocation.

Gradient accumulation: the Trainer calls ``on_step_begin`` / ``on_step_end`` once per optimizer
step, so a scoring window sums every micro-batch of its steps and a reallocation happens once per
optimizer step. The schedule's epoch is the Trainer's: ceil(batches per epoch / accumulation).

The record (``out``, default ``$HETEROLORA_HOME/runs/<id>``) is a run folder like any other:
``config.json`` (``source: callback``), the summary, the losses the Trainer logs, every
reallocation, and at the end the adapters and head (``adapters/``); ``export=`` also writes the
final allocation as a PEFT adapter folder. The head (``classifier`` / ``score``) is trained, as in
our runs (``train_head=False`` leaves it as the user set it).

Not supported: DeepSpeed ZeRO-3 and FSDP (they partition the weights the candidates read; refused
when training starts), methods built on PEFT's own modules (adalora, eva), and settings that belong
to the Trainer (learning rate, epochs, batch size, ...: set them in ``TrainingArguments``).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from heterolora_core.adapters.checkpoint import export_peft
from heterolora_core.adapters.modules import head_module, head_parameter_count
from heterolora_core.methods import registry
from heterolora_core.methods.base import AdapterMethod, MethodContext
from heterolora_core.methods.callbacks import SearchCallback
from heterolora_core.records.home import runs_dir
from heterolora_core.records.record import RunRecord, Status, new_run_id, process_identity
from heterolora_core.training.callbacks import RecordCallback
from heterolora_core.training.data import CUSTOM_TASK
from heterolora_core.training.environment import environment_info, is_main_process, mean_across_ranks
from heterolora_core.training.run_config import RunConfig
from heterolora_core.training.trainer import finish_record

#: RunConfig fields that the user's Trainer decides (given to the callback: an error naming where they go).
TRAINER_OWNED = ("task", "model", "lr", "epochs", "max_steps", "train_limit", "dev_limit", "heldout_rows", "batch_size",
                 "max_length", "eval_every", "logging_steps", "device", "bf16", "train_file", "dev_file")
SOURCE = "callback"


def callback_config(model: torch.nn.Module, settings: dict[str, Any]) -> RunConfig:
    """The RunConfig of ``settings`` (``train``'s option names), checked like a launch."""
    owned = sorted(set(settings) & set(TRAINER_OWNED))
    if owned:
        raise ValueError(f"{', '.join(owned)}: set these in your TrainingArguments / Trainer, not in the callback")
    unknown = sorted(set(settings) - set(RunConfig.field_names()))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; use the names of train's options "
                         f"(mode, proxy, rank, enable_ratio, budget_params, lora_targets, shortcuts, realloc_every, ...)")
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    # the data is the Trainer's: the record names the task "custom" (own data), not a GLUE task
    config = RunConfig.from_dict({**settings, "model": name, "task": CUSTOM_TASK}).normalised()
    config.validate()
    if not isinstance(registry.load(config.mode), AdapterMethod):
        raise ValueError(f"mode {config.mode} runs on PEFT's own modules; use PEFT directly for it")
    return config


class HeteroLoraCallback(TrainerCallback):
    """The search of ``python -m heterolora_core train`` as a Trainer callback (module docstring).

    Args:
        model: the model the Trainer will train (the same object); the candidates attach to it now.
        out: the run record's folder (default ``$HETEROLORA_HOME/runs/<id>``); it must not hold a run.
        export: a new folder for the final allocation as a PEFT adapter (needs ``shortcuts=False``).
        metric: the key of your ``compute_metrics`` result the record tracks as best / final score.
        train_head: make the classification head trainable (the engine's runs train it).
        **settings: ``train``'s options by their Python names.
    """

    def __init__(self, model: torch.nn.Module, out: str | Path | None = None, export: str | Path | None = None,
                 metric: str | None = None, train_head: bool = True, **settings: Any):
        self.config = config = callback_config(model, settings)
        if export is not None and config.shortcuts:
            raise ValueError("export= writes a PEFT adapter, and PEFT has no shortcut modules: add shortcuts=False")
        if export is not None and Path(export).exists():
            raise ValueError(f"{export} already exists; choose another export folder")
        self.model, self.export, self.metric = model, export, metric
        self.started = time.time()
        self.record = self._create_record(out) if is_main_process() else None
        self._loader = None
        self._args = None
        context = MethodContext(steps_per_epoch=1, total_steps=1, record=self.record,
                                scoring_batches=self._scoring_batches, reduce_scores=mean_across_ranks)
        self.run = registry.load(config.mode).prepare(model, config, context)  # attaches the candidates
        if train_head and head_module(model) is not None:
            for p in head_module(model).parameters():
                p.requires_grad_(True)
        self.inner: list = list(self.run.callbacks())
        self.recorder: RecordCallback | None = None

    @property
    def adapters(self):
        return self.run.adapters

    @property
    def history(self):
        """Every reallocation so far (step, scores, enabled set, ranks); empty for uniform LoRA."""
        search = self._search()
        return search.reallocator.history if search is not None else []

    def _search(self) -> SearchCallback | None:
        """The method's search callback (None: uniform LoRA selects nothing)."""
        return next((cb for cb in self.inner if isinstance(cb, SearchCallback)), None)

    def _create_record(self, out: str | Path | None) -> RunRecord:
        path = Path(out) if out is not None else runs_dir() / new_run_id(self.config.to_dict())
        if RunRecord(path).exists():
            raise ValueError(f"{path} already holds a run; choose another out=")
        full = {**self.config.to_dict(), **environment_info(), "source": SOURCE}
        return RunRecord.create(path, full, status=Status.RUNNING, started_at=time.time(), progress=0.0,
                                **process_identity())

    def _scoring_batches(self, step: int, n: int) -> list:
        """``n`` shuffled batches of the Trainer's own training data and collator, seeded by
        (seed, step) as our trainer's are: for proxies that score with passes of their own."""
        gen = torch.Generator().manual_seed(self.config.seed * 7919 + step)
        loader = DataLoader(self._loader.dataset, batch_size=self._args.per_device_train_batch_size, shuffle=True,
                            collate_fn=self._loader.collate_fn, generator=gen)
        device = next(self.model.parameters()).device
        out = []
        for batch in loader:
            out.append({k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()})
            if len(out) >= n:
                break
        return out

    # -- Trainer events ----------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        _refuse_partitioned_weights(args)
        self._args, self._loader = args, kwargs.get("train_dataloader")
        steps_per_epoch = _steps_per_epoch(self._loader, args, state)
        search = self._search()
        if search is not None:
            search.set_length(steps_per_epoch, state.max_steps)
            self.run.planned_reallocations = 1 + (len(search.schedule) if search.schedule is not None else 0)
        self.recorder = RecordCallback(self.record, self.run, state.max_steps, self.started,
                                       f"eval_{self.metric}" if self.metric else "")
        if self.record is not None:
            self.record.update_summary(max_steps=state.max_steps, step=0, num_reallocations=0,
                                       planned_reallocations=self.run.planned_reallocations,
                                       head_params=head_parameter_count(self.model), metric=self.metric)
        self._forward("on_train_begin", args, state, control, kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        self._forward("on_train_end", args, state, control, kwargs)
        if self.record is not None:
            device = str(next(self.model.parameters()).device)
            finish_record(self.record, self.run, self.recorder, state.global_step, device, self.started)
            if self.export is not None:
                export_peft(self.model, self.adapters, self.export,
                            base_model_name_or_path=self.config.model)

    # the events the method's callbacks and the record act on, passed through in this order
    def on_step_begin(self, args, state, control, **kwargs):
        self._forward("on_step_begin", args, state, control, kwargs)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._forward("on_pre_optimizer_step", args, state, control, kwargs)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._forward("on_optimizer_step", args, state, control, kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        self._forward("on_step_end", args, state, control, kwargs)

    def on_log(self, args, state, control, **kwargs):
        self._forward("on_log", args, state, control, kwargs)

    def on_evaluate(self, args, state, control, **kwargs):
        self._forward("on_evaluate", args, state, control, kwargs)

    def _forward(self, event: str, args, state, control, kwargs) -> None:
        for cb in [*self.inner, self.recorder]:
            if cb is not None:
                getattr(cb, event)(args, state, control, **kwargs)


def _steps_per_epoch(loader, args, state) -> int:
    """Optimizer steps per epoch as the Trainer counts them: ceil(batches / accumulation)."""
    try:
        batches = len(loader)
    except TypeError:  # an iterable dataset has no length: the run's length stands for an epoch
        return max(1, int(state.max_steps))
    return max(1, math.ceil(batches / max(1, int(args.gradient_accumulation_steps))))


def _refuse_partitioned_weights(args) -> None:
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ValueError("HeteroLoraCallback does not support DeepSpeed ZeRO-3: it partitions the weights the "
                         "candidates read (use ZeRO-1/2 or plain DDP)")
    if getattr(args, "fsdp", None):
        raise ValueError("HeteroLoraCallback does not support FSDP: it shards the weights the candidates read")
