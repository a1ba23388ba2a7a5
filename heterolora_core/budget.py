"""Budget arithmetic: trainable parameters per module, and how many modules a budget enables.

A candidate of rank r on a d_in -> d_out map trains r · (d_in + d_out) parameters. A budget is
either an enable ratio p at the search rank, or "match uniform LoRA at rank r_u on the chosen
targets", whose parameter count P = Σ_LoRA r_u · (d_in + d_out) becomes the cap; the equivalent
ratio is then p = P / Σ_all r · (d_in + d_out) (capped at 1).

Module counts follow the method doc (section 6): floor(p · n_lora) LoRA modules and
round(p · n_shortcut) shortcut modules (half rounds up); combined ranking picks their sum from
the joint ranking, separated ranking picks each count from its own group. With a parameter cap,
selection never exceeds it (``search.select`` skips a module that no longer fits), so the count is
"the most modules at the search rank whose cost does not exceed the budget".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from .adapters import LORA, SHORTCUT


@dataclass(frozen=True)
class Budget:
    """How much to enable: ``enable_ratio`` p in (0, 1], or ``match_uniform_rank`` r_u >= 1."""

    enable_ratio: float | None = None
    match_uniform_rank: int | None = None

    def __post_init__(self) -> None:
        if self.match_uniform_rank is not None:
            if int(self.match_uniform_rank) != self.match_uniform_rank or self.match_uniform_rank < 1:
                raise ValueError(f"match_uniform_rank must be an integer >= 1, got {self.match_uniform_rank}")
        elif self.enable_ratio is None:
            raise ValueError("a budget needs enable_ratio or match_uniform_rank")
        elif not 0.0 < float(self.enable_ratio) <= 1.0:
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
    n_lora = sum(1 for g in groups.values() if g == LORA)
    n_shortcut = sum(1 for g in groups.values() if g == SHORTCUT)
    total_cost = sum(costs.values())
    max_params = None
    if budget.match_uniform_rank is not None:
        lora_cost = sum(c for n, c in costs.items() if groups[n] == LORA)
        if lora_cost == 0:
            raise ValueError("match-uniform budgets need LoRA targets in the search space")
        max_params = lora_cost * budget.match_uniform_rank // rank
        ratio = min(1.0, max_params / total_cost)
    else:
        ratio = float(budget.enable_ratio)
    allocation = Allocation(ratio, int(math.floor(ratio * n_lora + 1e-9)), _round_half_up(ratio * n_shortcut), max_params)
    cheapest = min(costs.values()) if costs else 0
    if allocation.total_on == 0 or (max_params is not None and max_params < cheapest):
        what = (f"uniform rank {budget.match_uniform_rank}" if budget.match_uniform_rank is not None
                else f"enable ratio {ratio:g}")
        raise ValueError(f"the budget enables nothing: {what} at rank {rank} over {n_lora} LoRA + "
                         f"{n_shortcut} shortcut candidates")
    return allocation


@dataclass(frozen=True)
class BudgetPlan:
    """What a configuration trains, computed from the model's shapes alone."""

    n_candidates: int
    n_lora: int
    n_shortcut: int
    n_enabled: int
    trainable_params: int  # adapter parameters of the enabled modules (head excluded)
    head_params: int
    per_module_params: dict[str, int]
    uniform_equivalent: str  # e.g. "uniform LoRA q,v at rank 8 (73,728)"
    uniform_rank: float  # the uniform LoRA rank on the targets with the same parameter count


def plan_budget(model: str, lora_targets: list[str] | tuple[str, ...], shortcuts: bool, rank: int,
                enable_ratio: float | None = None, match_uniform_rank: int | None = None,
                mode: str = "dynamic", num_labels: int = 2) -> BudgetPlan:
    """Exact trainable parameters of a configuration, from the model's config only (no weights).

    In ``lora`` / ``adalora`` mode every candidate is on. In the search modes the count is the
    budget's; with equal module costs (true for every query/value/shortcut candidate) it is exact,
    otherwise it is the count of the cheapest modules that fit.
    """
    from .adapters import head_parameter_count
    from .architectures import attach
    from .config import HeteroLoraConfig
    from .models import meta_classifier

    config = HeteroLoraConfig(rank=int(rank), lora_targets=tuple(lora_targets), shortcuts=bool(shortcuts))
    meta = meta_classifier(model, num_labels=num_labels)
    adapters = attach(meta, config)
    costs, groups = adapters.costs(), adapters.groups()
    n_lora = sum(1 for g in groups.values() if g == LORA)
    n_shortcut = len(groups) - n_lora
    if mode in ("lora", "adalora"):
        chosen = list(costs)
    else:
        allocation = resolve(Budget(enable_ratio, match_uniform_rank), costs, groups, int(rank))
        chosen = _cheapest_fitting(costs, groups, allocation)
    trainable = sum(costs[n] for n in chosen)
    lora_unit = sum(c for n, c in costs.items() if groups[n] == LORA) / int(rank)  # params per unit rank
    uniform_rank = trainable / lora_unit if lora_unit else float("nan")
    targets = ",".join(config.lora_targets)
    if lora_unit and abs(uniform_rank - round(uniform_rank)) < 1e-9:
        equivalent = f"uniform LoRA {targets} at rank {round(uniform_rank)} ({int(round(uniform_rank) * lora_unit):,})"
    elif lora_unit:
        equivalent = f"uniform LoRA {targets} at rank {uniform_rank:.2f} (no integer rank matches exactly)"
    else:
        equivalent = "no LoRA targets to compare with"
    return BudgetPlan(len(costs), n_lora, n_shortcut, len(chosen), trainable, head_parameter_count(meta),
                      costs, equivalent, uniform_rank)


def _cheapest_fitting(costs: Mapping[str, int], groups: Mapping[str, str], allocation: Allocation) -> list[str]:
    """The modules a budget enables when every score is equal, cheapest first (for planning)."""
    from .search import select

    return select({n: -float(c) for n, c in costs.items()}, groups, allocation, ranking="separated",
                  score_norm="raw", costs=costs, seed=0)
