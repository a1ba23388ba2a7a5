"""The method interface: what the trainer, inference and the planner ask of a method.

A :class:`Method` (one per ``mode``, registered in :mod:`heterolora_core.methods`) turns a loaded
Hugging Face classifier and a :class:`~heterolora_core.training.run_config.RunConfig` into a
:class:`MethodRun`: the model to train, the Trainer callbacks that drive the method, and what the
run record reports (trainable parameters, reallocations, search time, the saved tensors). It also
validates its own settings, plans its budget from the model's shapes alone (on the meta device),
and restores a finished run's tensors for inference.

:class:`AdapterMethod` is the common base of the methods built on our own adapters
(:func:`heterolora_core.adapters.families.attach`): uniform LoRA and HeteroLoRA.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from heterolora_core.adapters.checkpoint import Checkpoint, adapter_tensors, load_adapter_tensors
from heterolora_core.adapters.config import HeteroLoraConfig
from heterolora_core.adapters.families import attach, target_paths
from heterolora_core.adapters.modules import AdapterSet
from heterolora_core.methods.registry import MethodInfo
from heterolora_core.records.record import RunRecord
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import Group

Batch = Mapping[str, torch.Tensor]


@dataclass
class MethodContext:
    """What a method gets from the trainer when a run starts.

    Attributes:
        steps_per_epoch, total_steps: the run's length in optimizer steps.
        record: the run record (None on the non-main ranks of a distributed run).
        scoring_batches: ``(step, n)`` -> n shuffled training batches on the model's device,
            seeded by (seed, step): for proxies that need passes of their own.
        reduce_scores: maps this process's scores to the scores every rank agrees on.
        progress: wraps an iterable in a progress bar (None: no bar).
    """

    steps_per_epoch: int
    total_steps: int
    record: RunRecord | None = None
    scoring_batches: Callable[[int, int], list[Batch]] | None = None
    reduce_scores: Callable[[dict[str, float]], dict[str, float]] | None = None
    progress: Callable[[Iterable], Iterable] | None = None


@dataclass(frozen=True)
class PlannedBudget:
    """A method's allocation before training, from the model's shapes.

    ``costs`` and ``groups`` cover every candidate; ``enabled`` is what the budget enables when
    every score is equal (cheapest first), so ``trainable_params`` is exact when the candidates
    cost the same; ``notes`` carries method-specific lines for the Launch page.
    """

    costs: dict[str, int]
    groups: dict[str, Group]
    enabled: list[str]
    trainable_params: int
    lora_unit: float  # parameters of the LoRA targets per unit of uniform rank
    notes: tuple[str, ...] = ()


def projection_plan(model: nn.Module, lora_targets, rank: int, extra_per_rank: int = 0,
                    notes: tuple[str, ...] = ()) -> PlannedBudget:
    """Every target projection on at ``rank`` (the PEFT methods): each costs
    ``rank · (d_in + d_out + extra_per_rank)`` (AdaLoRA's singular values: ``extra_per_rank = 1``);
    the uniform-rank unit is Σ (d_in + d_out)."""
    paths = target_paths(model, list(lora_targets))
    modules = {name: model.get_submodule(path) for name, path in paths.items()}
    costs = {n: int(rank) * (m.in_features + m.out_features + extra_per_rank) for n, m in modules.items()}
    unit = float(sum(m.in_features + m.out_features for m in modules.values()))
    return PlannedBudget(costs, {n: Group.LORA for n in costs}, list(costs), sum(costs.values()), unit, notes)


class MethodRun(ABC):
    """One run's method state, from ``prepare`` to the end of training."""

    #: The model the Trainer trains (a method may wrap the Hugging Face model, as PEFT does).
    model: nn.Module
    num_reallocations: int = 0
    search_seconds: float = 0.0
    #: how many selections the run will record, when the method knows in advance
    planned_reallocations: int | None = None

    def callbacks(self) -> list:
        """``TrainerCallback`` objects that drive the method during training."""
        return []

    @abstractmethod
    def trainable_params(self) -> int | None:
        """Adapter parameters trained now (task head excluded); None while a search has not
        selected yet."""

    def summary_fields(self) -> dict[str, Any]:
        """Extra fields of the run's summary (method-specific counts)."""
        return {}

    @abstractmethod
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a finished run saves (keys carry the method's prefix)."""

    def enabled(self) -> list[str] | None:
        """The enabled set to save beside the tensors (None: the method has none)."""
        return None

    def ranks(self) -> dict[str, int] | None:
        """Each candidate's rank to save beside the tensors (None: every candidate at its full rank)."""
        return None


class Method(ABC):
    """One way of allocating a run's budget; see the module docstring."""

    def __init__(self, info: MethodInfo):
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    def validate(self, config: RunConfig) -> None:
        """The method's own checks of ``config`` (ValueError with one line); no heavy work."""
        if config.shortcuts and not self.info.shortcuts:
            raise ValueError(f"{self.name} mode adapts LoRA targets only: add --no-shortcuts")

    @abstractmethod
    def plan(self, config: RunConfig, model: nn.Module) -> PlannedBudget:
        """The budget of ``config`` on ``model`` (a meta-device model: shapes only)."""

    @abstractmethod
    def prepare(self, model: nn.Module, config: RunConfig, context: MethodContext) -> MethodRun:
        """Attach the method to a freshly loaded ``model`` (its head is trained by the caller)."""

    @abstractmethod
    def restore(self, model: nn.Module, config: RunConfig, checkpoint: Checkpoint) -> nn.Module:
        """``model`` with a finished run's tensors loaded, ready for inference."""


# ----------------------------------------------------------------------------------------------
# Methods on our own adapters
# ----------------------------------------------------------------------------------------------

def search_space(config: RunConfig, init_seed: int | None = None) -> HeteroLoraConfig:
    """The :class:`HeteroLoraConfig` a run attaches (rank, alpha, targets, shortcuts)."""
    return HeteroLoraConfig(rank=int(config.rank), alpha=config.alpha, lora_targets=tuple(config.lora_targets),
                            shortcuts=bool(config.shortcuts), init_seed=init_seed)


def lora_unit(adapters: AdapterSet) -> float:
    """Parameters of the LoRA candidates per unit of rank: Σ_LoRA (d_in + d_out)."""
    return float(sum(m.d_in + m.d_out for m in adapters.modules_in_order() if m.group == Group.LORA))


@dataclass
class AdapterRun(MethodRun):
    """A run on our adapters: every candidate's factors are saved, with the enabled set."""

    model: nn.Module
    adapters: AdapterSet
    selected: bool = True  # False until a search has made its first selection
    _callbacks: list = field(default_factory=list)

    def callbacks(self) -> list:
        return list(self._callbacks)

    def trainable_params(self) -> int | None:
        return int(self.adapters.num_trainable()) if self.selected else None

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return adapter_tensors(self.adapters)

    def enabled(self) -> list[str] | None:
        return self.adapters.enabled()

    def ranks(self) -> dict[str, int] | None:
        return None if self.adapters.all_at_full_rank() else self.adapters.ranks()


class AdapterMethod(Method):
    """Common base of uniform LoRA and HeteroLoRA: attach the search space, restore by name."""

    def restore(self, model: nn.Module, config: RunConfig, checkpoint: Checkpoint) -> nn.Module:
        adapters = attach(model, search_space(config))
        load_adapter_tensors(adapters, checkpoint.tensors)
        adapters.set_enabled(checkpoint.enabled if checkpoint.enabled is not None else adapters.names())
        if checkpoint.ranks is not None:
            adapters.set_ranks(checkpoint.ranks)
        return model
