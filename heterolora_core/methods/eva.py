"""EVA (``--mode eva``): PEFT's explained-variance adaptation, a data-driven rank redistribution.

EVA (Paischer et al., 2024) runs the model on a few training batches, takes an incremental SVD of
every adapted projection's *inputs*, initialises each LoRA A with the top right singular vectors,
and redistributes the ranks across projections by explained variance: the total rank stays
``rank × n_modules`` (the same budget as uniform LoRA at ``--rank``; exact when the projections
cost the same), one projection gets at most ``rho × rank`` (rho = 2, PEFT's default). This runs
PEFT's own implementation (``LoraConfig(init_lora_weights="eva")``, ``initialize_lora_eva_weights``)
inside the engine's Trainer and writes the same run record as every mode: one allocation line
with the ranks EVA chose, the parameters Σ r_i (d_in + d_out).

The SVD runs over ``--score-window`` × 4 training batches (EVA cycles them until its components
converge). Labels are class ids here, not token labels, so EVA's label mask is off.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from peft import EvaConfig, LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.eva import initialize_lora_eva_weights
from torch import nn

from heterolora_core.adapters.checkpoint import Checkpoint
from heterolora_core.adapters.families import target_paths
from heterolora_core.adapters.modules import head_module
from heterolora_core.methods.base import Method, MethodContext, MethodRun, PlannedBudget, projection_plan
from heterolora_core.training.run_config import RunConfig

ADAPTER_NAME = "default"
PEFT_PREFIX = "peft."
EVA_RHO = 2.0
EVA_BATCHES_PER_WINDOW = 4


def lora_config(config: RunConfig, paths: list[str], rank_pattern: dict[str, int] | None = None,
                eva: bool = True) -> LoraConfig:
    """PEFT's config of the run: rank ``--rank``, alpha 2r (scaling 2, as the engine's LoRA)."""
    rank = int(config.rank)
    alpha = config.alpha if config.alpha is not None else 2 * rank
    kwargs: dict[str, Any] = dict(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(paths))
    if eva:
        kwargs.update(init_lora_weights="eva", eva_config=EvaConfig(rho=EVA_RHO, use_label_mask=False))
    if rank_pattern:
        kwargs.update(rank_pattern=dict(rank_pattern), alpha_pattern={p: 2 * r for p, r in rank_pattern.items()})
    return LoraConfig(**kwargs)


def lora_layers(model: PeftModel):
    inner = model.base_model.model
    for path, module in inner.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
            yield path, module


@dataclass
class EvaRun(MethodRun):
    model: Any
    names: dict[str, str]  # our name -> path

    def ranks(self) -> dict[str, int]:
        by_path = {path: int(layer.r[ADAPTER_NAME]) for path, layer in lora_layers(self.model)}
        return {name: by_path.get(path, 0) for name, path in self.names.items()}

    def trainable_params(self) -> int:
        return sum(int(layer.r[ADAPTER_NAME]) * (layer.in_features + layer.out_features)
                   for _, layer in lora_layers(self.model))

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {PEFT_PREFIX + name: p for name, p in self.model.named_parameters()
                if f".lora_A.{ADAPTER_NAME}" in name or f".lora_B.{ADAPTER_NAME}" in name}


class Eva(Method):
    """PEFT's EVA on the run's LoRA targets, at the budget of uniform LoRA at ``--rank``."""

    def validate(self, config: RunConfig) -> None:
        super().validate(config)
        if not config.lora_targets:
            raise ValueError("eva mode needs LoRA targets (--lora-targets)")

    def plan(self, config: RunConfig, model: nn.Module) -> PlannedBudget:
        n_targets = len(target_paths(model, list(config.lora_targets)))
        return projection_plan(model, config.lora_targets, int(config.rank), notes=(
            f"EVA redistributes the total rank {config.rank} x {n_targets} by explained variance "
            f"(at most {EVA_RHO:g} x {config.rank} per projection)",))

    def prepare(self, model: nn.Module, config: RunConfig, context: MethodContext) -> EvaRun:
        names = target_paths(model, list(config.lora_targets))
        head = head_module(model)
        peft_model = PeftModel(model, lora_config(config, list(names.values())))
        batches = context.scoring_batches(0, EVA_BATCHES_PER_WINDOW * int(config.score_window))
        started = time.perf_counter()
        initialize_lora_eva_weights(peft_model, dataloader=batches, show_progress_bar=False)  # EVA cycles them itself
        seconds = time.perf_counter() - started
        if head is not None:
            for p in head.parameters():
                p.requires_grad_(False)
        run = EvaRun(peft_model, names)
        run.num_reallocations = run.planned_reallocations = 1
        run.search_seconds = seconds  # EVA's SVD passes are its search
        if context.record is not None:
            ranks = run.ranks()
            context.record.append_reallocation(0, {n: round(r / int(config.rank), 6) for n, r in ranks.items()},
                                               [n for n, r in ranks.items() if r > 0], ranks=ranks,
                                               budget=sum(ranks.values()), source="eva", seconds=round(seconds, 4))
        return run

    def restore(self, model: nn.Module, config: RunConfig, checkpoint: Checkpoint) -> nn.Module:
        """Rebuild the adapters with the ranks the saved factors have, and load them."""
        names = target_paths(model, list(config.lora_targets))
        saved = {k[len(PEFT_PREFIX):]: v for k, v in checkpoint.tensors.items() if k.startswith(PEFT_PREFIX)}
        pattern = {}
        for path in names.values():
            key = next((k for k in saved if k.endswith(f"{path}.lora_A.{ADAPTER_NAME}.weight")), None)
            if key is None:
                raise ValueError(f"the run's saved adapters lack the EVA factors of {path}")
            pattern[path] = int(saved[key].shape[0])
        peft_model = PeftModel(model, lora_config(config, list(names.values()), pattern, eva=False))
        params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                if name not in params or tuple(params[name].shape) != tuple(value.shape):
                    raise ValueError(f"EVA factor {name} does not fit the rebuilt model")
                params[name].copy_(value)
        return peft_model
