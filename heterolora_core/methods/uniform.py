"""Uniform LoRA (``--mode lora``): every candidate of the search space on, at the same rank.

With ``--no-shortcuts`` this is plain LoRA on the chosen targets (query and value by default);
with shortcuts it is the method doc's "LoRA + shortcuts, all on". The run record gets one
reallocation line (every candidate, score 1) so that every page can draw it like a search.
"""
from __future__ import annotations

from torch import nn

from heterolora_core.adapters.families import attach
from heterolora_core.methods.base import (AdapterMethod, AdapterRun, MethodContext, PlannedBudget, lora_unit,
                                          search_space)
from heterolora_core.training.run_config import RunConfig


class UniformLora(AdapterMethod):
    """Every candidate enabled for the whole run."""

    def plan(self, config: RunConfig, model: nn.Module) -> PlannedBudget:
        adapters = attach(model, search_space(config))
        costs = adapters.costs()
        return PlannedBudget(costs, adapters.groups(), list(costs), sum(costs.values()), lora_unit(adapters))

    def prepare(self, model: nn.Module, config: RunConfig, context: MethodContext) -> AdapterRun:
        adapters = attach(model, search_space(config, init_seed=config.seed))
        adapters.enable_all()
        if context.record is not None:
            context.record.append_reallocation(0, {n: 1.0 for n in adapters.names()}, adapters.enabled(), uniform=True)
        run = AdapterRun(model, adapters)
        run.num_reallocations = run.planned_reallocations = 1
        return run
