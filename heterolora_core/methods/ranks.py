"""Heterogeneous ranks (``--mode rank_static``, ``rank_dynamic``, ``rank_random``): every candidate
gets its own rank r_i in {0, …, r_max} under an exact parameter budget, from the gradient
statistics the training steps already provide (zero cost).

The candidates are built at r_max = ``--rank``; a candidate of rank r_i uses its first r_i
components and the others are masked (:meth:`~heterolora_core.adapters.modules.AdapterModule.set_rank`):
they get no gradient, :class:`MaskedRankGuard` keeps the optimizer from moving them or their
AdamW state, and only the active components are counted. So a rank can change during training
without losing anything.

* ``rank_static``: one allocation before training, from ``score_window`` extra batches (at B = 0
  the model's function does not depend on the allocation, so the statistics are exact).
* ``rank_dynamic``: re-allocated every ``--realloc-every`` of an epoch from the window's statistics.
* ``rank_random``: the control. ``rank_static``'s allocation, then its ranks dealt at random to
  candidates of equal cost (same rank histogram, same parameter count).
* ``rank_layers`` / ``rank_inverted``: the study's other controls. ``rank_static``'s ranks shuffled
  across layers within each module kind, or given in reverse order of score.

The allocation rule (``--rank-rule``): ``spectrum`` water-fills the singular-value spectra of the
candidates' gradients G (:func:`heterolora_core.search.ranks.water_fill`); ``proportional`` makes
ranks proportional to the ``--proxy`` score. ``--rank-init gradient`` (static only) starts the
A of each candidate from the top right singular vectors of its G instead of Kaiming-uniform (B
stays zero, so the model still computes the pretrained function).
"""
from __future__ import annotations

from torch import nn

from heterolora_core.adapters.families import attach
from heterolora_core.methods.base import AdapterMethod, AdapterRun, MethodContext, PlannedBudget, lora_unit, search_space
from heterolora_core.methods.callbacks import MaskedRankGuard, SearchCallback, SearchRecorder, search_schedule
from heterolora_core.search.budget import budget_params
from heterolora_core.search.ranks import water_fill
from heterolora_core.search.reallocator import RankAllocator
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import RankDeal, RankInit, RankRule


class RankStatic(AdapterMethod):
    """One rank allocation before training."""

    dynamic = False
    deal = RankDeal.ALLOCATED

    def validate(self, config: RunConfig) -> None:
        super().validate(config)
        if config.rank_min > config.rank:
            raise ValueError(f"rank-min {config.rank_min} is above the rank {config.rank} the candidates are built at")
        if RankInit(config.rank_init) is RankInit.GRADIENT and self.dynamic:
            raise ValueError("rank-init gradient starts A from the first allocation's gradients: static modes only")

    def plan(self, config: RunConfig, model: nn.Module) -> PlannedBudget:
        """Before any data: the budget spent on equal spectra (every candidate alike)."""
        adapters = attach(model, search_space(config))
        costs, groups = adapters.costs(), adapters.groups()
        unit = {n: adapters.module(n).d_in + adapters.module(n).d_out for n in costs}
        budget = budget_params(config.budget(), costs, groups, int(config.rank))
        flat = {n: [1.0] * int(config.rank) for n in costs}
        ranks = water_fill(flat, unit, groups, budget, int(config.rank), int(config.rank_min))
        spent = sum(r * unit[n] for n, r in ranks.items())
        notes = (f"a rank per candidate in [{config.rank_min}, {config.rank}] under {budget:,} parameters; "
                 f"the ranks come from the gradients of the first batches",)
        return PlannedBudget(costs, groups, [n for n, r in ranks.items() if r > 0], spent, lora_unit(adapters), notes)

    def prepare(self, model: nn.Module, config: RunConfig, context: MethodContext) -> AdapterRun:
        adapters = attach(model, search_space(config, init_seed=config.seed))
        run = AdapterRun(model, adapters, selected=False)
        recorder = SearchRecorder(run, context.record, adapters)
        allocator = RankAllocator(
            model, adapters, config.proxy, config.budget(), rule=RankRule(config.rank_rule), r_min=int(config.rank_min),
            deal=self.deal, init=RankInit(config.rank_init), seed=config.seed,
            proxy_batches=config.proxy_batches, reduce_scores=context.reduce_scores, on_record=recorder,
            progress=context.progress, scoring=config.scoring, sketch_rank=max(int(config.sketch_rank), int(config.rank)))
        recorder.search = allocator
        schedule = search_schedule(config, context, self.dynamic)
        run.planned_reallocations = 1 + (len(schedule) if schedule is not None else 0)
        # static: the allocation comes from score_window extra batches (more data than the step-0 batch)
        run._callbacks += [SearchCallback(allocator, schedule, int(config.score_window), context.scoring_batches,
                                          int(config.proxy_batches or config.score_window), first_batch=self.dynamic),
                           MaskedRankGuard(adapters)]
        return run


class RankDynamic(RankStatic):
    """Ranks re-allocated every ``realloc_every`` of an epoch."""

    dynamic = True


class RankRandom(RankStatic):
    """The control: ``rank_static``'s ranks, dealt at random among candidates of equal cost."""

    deal = RankDeal.RANDOM


class RankLayers(RankStatic):
    """The control for placement: ``rank_static``'s ranks shuffled across layers within each module
    kind (the mix of kinds kept, the layers lost)."""

    deal = RankDeal.LAYERS


class RankInverted(RankStatic):
    """The control for the score: ``rank_static``'s ranks, the most to the lowest scores."""

    deal = RankDeal.INVERTED
