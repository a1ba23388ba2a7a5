"""Budget arithmetic: trainable parameters per module, and how many modules a budget enables.

A candidate of rank r on a d_in -> d_out map trains r · (d_in + d_out) parameters. A budget is
either an enable ratio p at the search rank, or "match uniform LoRA at rank r_u on the chosen
targets", whose parameter count P = Σ_LoRA r_u · (d_in + d_out) becomes the cap; the equivalent
ratio is then p = P / Σ_all r · (d_in + d_out) (capped at 1).

Module counts follow the method doc (section 6): floor(p · n_lora) LoRA modules and
round(p · n_shortcut) shortcut modules (half rounds up); combined ranking picks their sum from
the joint ranking, separated ranking picks each count from its own group. With a parameter cap,
selection never exceeds it (``selection.select`` skips a module that no longer fits), so the count is
"the most modules at the search rank whose cost does not exceed the budget".

Torch-free: the Launch page and the planner use it on shapes alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from heterolora_core.vocab import Group


@dataclass(frozen=True)
class Budget:
    """How much to train: ``params`` (an explicit count of adapter parameters), else
    ``match_uniform_rank`` r_u >= 1, else ``enable_ratio`` p in (0, 1]."""

    enable_ratio: float | None = None
    match_uniform_rank: int | None = None
    params: int | None = None

    def __post_init__(self) -> None:
        if self.params is not None:
            if isinstance(self.params, bool) or not isinstance(self.params, int) or self.params < 1:
                raise ValueError(f"budget-params must be a whole number >= 1, got {self.params}")
        elif self.match_uniform_rank is not None:
            rank = self.match_uniform_rank
            if isinstance(rank, bool) or not isinstance(rank, (int, float)) or int(rank) != rank or rank < 1:
                raise ValueError(f"match_uniform_rank must be an integer >= 1, got {rank}")
        elif self.enable_ratio is None:
            raise ValueError("a budget needs enable_ratio or match_uniform_rank")
        elif not isinstance(self.enable_ratio, (int, float)) or not 0.0 < float(self.enable_ratio) <= 1.0:
            raise ValueError(f"enable ratio must be in (0, 1], got {self.enable_ratio}")


@dataclass(frozen=True)
class Allocation:
    """A budget resolved against one candidate set."""

    ratio: float  # p
    lora_on: int  # floor(p · n_lora)
    shortcut_on: int  # round(p · n_shortcut)
    max_params: int | None  # parameter cap (match-uniform budgets), else None

    @property
    def total_on(self) -> int:
        return self.lora_on + self.shortcut_on


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def resolve(budget: Budget, costs: Mapping[str, int], groups: Mapping[str, str], rank: int) -> Allocation:
    """Turn ``budget`` into module counts for candidates with ``costs`` (at search rank ``rank``).

    Raises ValueError when the budget enables nothing.
    """
    n_lora = sum(1 for g in groups.values() if g == Group.LORA)
    n_shortcut = sum(1 for g in groups.values() if g == Group.SHORTCUT)
    total_cost = sum(costs.values())
    max_params = None
    if budget.params is not None or budget.match_uniform_rank is not None:
        max_params = budget_params(budget, costs, groups, rank)
        ratio = min(1.0, max_params / total_cost)
    else:
        ratio = float(budget.enable_ratio)
    allocation = Allocation(ratio, int(math.floor(ratio * n_lora + 1e-9)), _round_half_up(ratio * n_shortcut), max_params)
    cheapest = min(costs.values()) if costs else 0
    if allocation.total_on == 0 or (max_params is not None and max_params < cheapest):
        what = (f"{budget.params:,} parameters" if budget.params is not None
                else f"uniform rank {budget.match_uniform_rank}" if budget.match_uniform_rank is not None
                else f"enable ratio {ratio:g}")
        raise ValueError(f"the budget enables nothing: {what} at rank {rank} over {n_lora} LoRA + "
                         f"{n_shortcut} shortcut candidates")
    return allocation


def budget_params(budget: Budget, costs: Mapping[str, int], groups: Mapping[str, str], rank: int) -> int:
    """The budget as a parameter count: ``params``; or Σ_LoRA r_u·(d_in + d_out) for
    ``match_uniform_rank`` (``costs`` are at the search rank ``rank``); or p · Σ costs for a ratio."""
    if budget.params is not None:
        return int(budget.params)
    if budget.match_uniform_rank is not None:
        lora_cost = sum(c for n, c in costs.items() if groups[n] == Group.LORA)
        if lora_cost == 0:
            raise ValueError("match-uniform budgets need LoRA targets in the search space")
        return lora_cost * int(budget.match_uniform_rank) // rank
    return int(float(budget.enable_ratio) * sum(costs.values()))
