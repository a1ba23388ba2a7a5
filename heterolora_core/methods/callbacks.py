"""Trainer callbacks shared by the searching methods (on/off HeteroLoRA and heterogeneous ranks).

:class:`SearchCallback` opens the scoring windows before each reallocation step and reallocates;
:class:`MaskedRankGuard` keeps masked rank components (and their AdamW state) exactly where they
were through every optimizer step.
"""
from __future__ import annotations

import torch
from transformers import TrainerCallback

from heterolora_core.adapters.modules import AdapterSet
from heterolora_core.records.record import RunRecord
from heterolora_core.search.reallocator import Reallocation, ReallocationSchedule


def write_reallocation(record: RunRecord, reallocation: Reallocation, trainable: int) -> None:
    """Append a selection to the record, and keep the summary's count on what is enabled now."""
    extra = {"ranks": reallocation.ranks} if reallocation.ranks is not None else {}
    record.append_reallocation(reallocation.step, reallocation.scores, reallocation.enabled,
                               seconds=round(reallocation.seconds, 4), **extra)
    record.update_summary(trainable_params=int(trainable))


class SearchRecorder:
    """The ``on_record`` of a searching method's allocator: marks the run selected, keeps its
    reallocation count and search seconds current, and appends each selection to the record.
    ``search`` (the allocator, built after this) is set by the method."""

    def __init__(self, run, record: RunRecord | None, adapters: AdapterSet):
        self.run, self.record, self.adapters = run, record, adapters
        self.search = None

    def __call__(self, reallocation: Reallocation) -> None:
        self.run.selected = True
        self.run.num_reallocations = len(self.search.history)
        self.run.search_seconds = self.search.search_seconds
        if self.record is not None:
            write_reallocation(self.record, reallocation, self.adapters.num_trainable())


def search_schedule(config, context, dynamic: bool) -> ReallocationSchedule | None:
    """The reallocation steps of a dynamic search (every ``realloc_every`` of an epoch); None for
    a static one (one selection at step 0)."""
    if not dynamic:
        return None
    return ReallocationSchedule(context.steps_per_epoch, context.total_steps, float(config.realloc_every))


class SearchCallback(TrainerCallback):
    """Opens the scoring windows before each reallocation step and reallocates.

    Args:
        reallocator: scores, selects, switches, records (a ``Reallocator`` or ``RankAllocator``).
        schedule: the dynamic search's steps (None: static, one selection at step 0).
        score_window: training steps whose gradients feed each reallocation.
        scoring_batches: ``(step, n)`` -> batches, for reallocations that need passes of their own.
        n_scoring_batches: how many such batches a reallocation takes.
        first_batch: score step 0 from the first training batch (dynamic searches) rather than from
            ``n_scoring_batches`` extra passes.
    """

    def __init__(self, reallocator, schedule: ReallocationSchedule | None, score_window: int, scoring_batches,
                 n_scoring_batches: int, first_batch: bool | None = None):
        self.reallocator = reallocator
        self.schedule = schedule
        self.score_window = score_window
        self.scoring_batches = scoring_batches
        self.n_scoring_batches = n_scoring_batches
        self.first_batch = schedule is not None if first_batch is None else first_batch
        self._window = None
        self._first_step_scoring = False

    def set_length(self, steps_per_epoch: int, total_steps: int) -> None:
        """Rebuild a dynamic search's schedule for a run's length, when it is known only as the
        training starts (a callback in a user's own Trainer)."""
        if self.schedule is not None:
            self.schedule = ReallocationSchedule(int(steps_per_epoch), int(total_steps), self.schedule.fraction)

    def _reallocate(self, step: int) -> None:
        r = self.reallocator
        batches = self.scoring_batches(step, self.n_scoring_batches) if r.needs_batches(step) else None
        was_training = r.model.training
        r.reallocate(step, batches)
        r.model.train(was_training)

    def window_for(self, step_index: int) -> bool:
        """True when the step about to run (0-based) is in the window before a reallocation."""
        if not self.reallocator.scores_from_training:
            return False
        if self._first_step_scoring and step_index == 0:
            return True
        return self.schedule is not None and self.schedule.any_between(step_index, step_index + self.score_window)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.first_batch and self.reallocator.scores_from_training:
            # Step 0 for free: with every B = 0 the model computes the same function whatever
            # is enabled, so the first training batch, run with everything on, gives the scores;
            # the selection is applied before the first optimizer step by dropping the
            # gradients of the modules left off: exactly as if they had been off all along
            # (unless gradient clipping triggers at step 0, which then saw their norms too).
            self.reallocator.adapters.enable_all()
            self._first_step_scoring = True
        else:
            self._reallocate(0)

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

    def on_step_begin(self, args, state, control, **kwargs):
        if self.window_for(state.global_step):
            self._window = self.reallocator.training_window()
            self._window.__enter__()

    def _close_window(self) -> None:
        if self._window is not None:
            self._window.__exit__(None, None, None)
            self._window = None

    def on_step_end(self, args, state, control, **kwargs):
        self._close_window()
        if self.schedule is not None and state.global_step in self.schedule:
            self._reallocate(state.global_step)


class MaskedRankGuard(TrainerCallback):
    """Masked rank components stay exactly as they are through an optimizer step.

    A component beyond a candidate's active rank gets a zero gradient, but AdamW would still move
    it (momentum, weight decay) and update its moment estimates. Before each step the guard copies
    the masked slices of A (rows) and B (columns) and of their AdamW state; after the step it
    writes them back (a state created by this very step is zeroed there, as if never started).
    """

    def __init__(self, adapters: AdapterSet):
        self.adapters = adapters
        self._saved: list = []

    def _masked(self):
        for module in self.adapters.modules_in_order():
            if module.enabled and module.active_rank < module.rank:
                r = module.active_rank
                yield module.lora_A, (slice(r, None), slice(None))
                yield module.lora_B, (slice(None), slice(r, None))

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self._saved = []
        for param, index in self._masked():
            moments = optimizer.state.get(param, {}) if optimizer is not None else {}
            kept = {key: value[index].clone() for key, value in moments.items()
                    if isinstance(value, torch.Tensor) and value.shape == param.shape}
            self._saved.append((param, index, param.detach()[index].clone(), kept))

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        with torch.no_grad():
            for param, index, value, kept in self._saved:
                param[index] = value
                moments = optimizer.state.get(param, {}) if optimizer is not None else {}
                for key, tensor in moments.items():
                    if isinstance(tensor, torch.Tensor) and tensor.shape == param.shape:
                        tensor[index] = kept[key] if key in kept else 0.0
        self._saved = []
