"""HeteroLoRA (``--mode static`` and ``--mode dynamic``): a zero-cost proxy decides which
candidates of the search space train, under a parameter budget (method doc, sections 5 and 6).

Static search scores once before the first step; dynamic search reallocates at the steps of a
:class:`~heterolora_core.search.reallocator.ReallocationSchedule` (every ``realloc_every`` of an
epoch, and at the start of each epoch). With the default proxy settings a reallocation's scores
come from the gradients of the ``score_window`` training steps just before it, so search costs
no extra passes; step 0 of a dynamic run is scored from the first training batch (see
:meth:`heterolora_core.methods.callbacks.SearchCallback.on_pre_optimizer_step`).
"""
from __future__ import annotations

from torch import nn

from heterolora_core.adapters.families import attach
from heterolora_core.methods.base import (AdapterMethod, AdapterRun, MethodContext, PlannedBudget, lora_unit,
                                          search_space)
from heterolora_core.methods.callbacks import SearchCallback, SearchRecorder, search_schedule
from heterolora_core.search.budget import resolve
from heterolora_core.search.reallocator import Reallocator
from heterolora_core.search.selection import select
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import Proxy, Ranking, ScoreNorm


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
        allocation = resolve(config.budget(), costs, groups, int(config.rank))
        # every score equal: the cheapest candidates that fit (exact when all cost the same)
        enabled = select({n: -float(c) for n, c in costs.items()}, groups, allocation, Ranking.SEPARATED,
                         ScoreNorm.RAW, costs, seed=0)
        return PlannedBudget(costs, groups, enabled, sum(costs[n] for n in enabled), lora_unit(adapters))

    def prepare(self, model: nn.Module, config: RunConfig, context: MethodContext) -> AdapterRun:
        adapters = attach(model, search_space(config, init_seed=config.seed))
        run = AdapterRun(model, adapters, selected=False)
        recorder = SearchRecorder(run, context.record, adapters)
        reallocator = Reallocator(
            model, adapters, config.proxy, config.budget(), ranking=config.ranking, score_norm=config.score_norm,
            seed=config.seed, proxy_batches=config.proxy_batches, reduce_scores=context.reduce_scores,
            on_record=recorder, progress=context.progress, scoring=config.scoring, sketch_rank=config.sketch_rank)
        recorder.search = reallocator
        schedule = search_schedule(config, context, self.dynamic)
        run.planned_reallocations = 1 + (len(schedule) if schedule is not None else 0)
        run._callbacks.append(SearchCallback(reallocator, schedule, int(config.score_window),
                                             context.scoring_batches, scoring_batch_count(config)))
        return run


class DynamicHeteroLora(StaticHeteroLora):
    """Re-score and re-select every ``realloc_every`` of an epoch."""

    dynamic = True
