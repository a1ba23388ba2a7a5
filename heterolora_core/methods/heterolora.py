"""HeteroLoRA (``--mode static`` and ``--mode dynamic``): a zero-cost proxy decides which
candidates of the search space train, under a parameter budget (method doc, sections 5 and 6).

Static search scores once before the first step; dynamic search reallocates at the steps of a
:class:`~heterolora_core.search.reallocator.ReallocationSchedule` (every ``realloc_every`` of an
epoch, and at the start of each epoch). With the default proxy settings a reallocation's scores
come from the gradients of the ``score_window`` training steps just before it, so search costs
no extra passes; step 0 of a dynamic run is scored from the first training batch (see
:meth:`SearchCallback.on_pre_optimizer_step`).
"""
from __future__ import annotations

from torch import nn
from transformers import TrainerCallback

from heterolora_core.adapters.families import attach
from heterolora_core.methods.base import (AdapterMethod, AdapterRun, MethodContext, PlannedBudget, lora_unit,
                                          search_space)
from heterolora_core.records.record import RunRecord
from heterolora_core.search.budget import Budget, resolve
from heterolora_core.search.reallocator import Reallocation, ReallocationSchedule, Reallocator
from heterolora_core.search.selection import select
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import Proxy, Ranking, ScoreNorm


def budget_of(config: RunConfig) -> Budget:
    """The run's budget: ``match_uniform_rank`` when set, else ``enable_ratio``."""
    if config.match_uniform_rank is not None:
        return Budget(match_uniform_rank=int(config.match_uniform_rank))
    return Budget(enable_ratio=float(config.enable_ratio))


def scoring_batch_count(config: RunConfig) -> int:
    """Batches of a reallocation that scores with passes of its own: the authors' ``proxy_batches``
    when set, else what the proxy needs (alpha_test 2, synflow 1 for its shape, gradients a window)."""
    if config.proxy_batches:
        return int(config.proxy_batches)
    return {Proxy.ALPHA_TEST: 2, Proxy.SYNFLOW: 1}.get(Proxy(config.proxy), int(config.score_window))


class StaticHeteroLora(AdapterMethod):
    """Score once before training; train the selected candidates for the whole run."""

    dynamic = False

    def plan(self, config: RunConfig, model: nn.Module) -> PlannedBudget:
        adapters = attach(model, search_space(config))
        costs, groups = adapters.costs(), adapters.groups()
        allocation = resolve(budget_of(config), costs, groups, int(config.rank))
        # every score equal: the cheapest candidates that fit (exact when all cost the same)
        enabled = select({n: -float(c) for n, c in costs.items()}, groups, allocation, Ranking.SEPARATED,
                         ScoreNorm.RAW, costs, seed=0)
        return PlannedBudget(costs, groups, enabled, sum(costs[n] for n in enabled), lora_unit(adapters))

    def prepare(self, model: nn.Module, config: RunConfig, context: MethodContext) -> AdapterRun:
        adapters = attach(model, search_space(config, init_seed=config.seed))
        run = AdapterRun(model, adapters, selected=False)
        record = context.record

        def on_record(reallocation: Reallocation) -> None:
            run.selected = True
            run.num_reallocations = len(reallocator.history)
            run.search_seconds = reallocator.search_seconds
            if record is not None:
                _write_reallocation(record, reallocation, adapters.num_trainable())

        reallocator = Reallocator(
            model, adapters, config.proxy, budget_of(config), ranking=config.ranking, score_norm=config.score_norm,
            seed=config.seed, proxy_batches=config.proxy_batches, reduce_scores=context.reduce_scores,
            on_record=on_record, progress=context.progress, scoring=config.scoring, sketch_rank=config.sketch_rank)
        schedule = (ReallocationSchedule(context.steps_per_epoch, context.total_steps, float(config.realloc_every))
                    if self.dynamic else None)
        run.planned_reallocations = 1 + (len(schedule) if schedule is not None else 0)
        run._callbacks.append(SearchCallback(reallocator, schedule, int(config.score_window),
                                             context.scoring_batches, scoring_batch_count(config)))
        return run


class DynamicHeteroLora(StaticHeteroLora):
    """Re-score and re-select every ``realloc_every`` of an epoch."""

    dynamic = True


def _write_reallocation(record: RunRecord, reallocation: Reallocation, trainable: int) -> None:
    """Append a selection to the record, and keep the summary's count on what is enabled now."""
    record.append_reallocation(reallocation.step, reallocation.scores, reallocation.enabled,
                               seconds=round(reallocation.seconds, 4))
    record.update_summary(trainable_params=int(trainable))


class SearchCallback(TrainerCallback):
    """Opens the scoring windows before each reallocation step and reallocates.

    Args:
        reallocator: scores, selects, switches, records.
        schedule: the dynamic search's steps (None: static, one selection at step 0).
        score_window: training steps whose gradients feed each reallocation.
        scoring_batches: ``(step, n)`` -> batches, for reallocations that need passes of their own.
        n_scoring_batches: how many such batches a reallocation takes.
    """

    def __init__(self, reallocator: Reallocator, schedule: ReallocationSchedule | None, score_window: int,
                 scoring_batches, n_scoring_batches: int):
        self.reallocator = reallocator
        self.schedule = schedule
        self.score_window = score_window
        self.scoring_batches = scoring_batches
        self.n_scoring_batches = n_scoring_batches
        self._window = None
        self._first_step_scoring = False

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
        if self.schedule is not None and self.reallocator.scores_from_training:
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
