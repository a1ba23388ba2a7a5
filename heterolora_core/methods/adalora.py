"""AdaLoRA (``--mode adalora``): PEFT's AdaLoRA beside HeteroLoRA, "what users pick instead".

AdaLoRA (Zhang et al., ICLR 2023) parameterises each adapted projection as an SVD-like triplet
``ΔW = B diag(E) A`` (A: r x d_in, E: r singular values, B: d_out x r) and prunes triplets during
training by a smoothed sensitivity score, from ``init_r`` per module down to an average of
``target_r`` per module. This module runs PEFT's own implementation (``peft.AdaLoraConfig`` /
``AdaLoraModel``) inside the engine's Trainer and writes the same run record as the other modes.

How it is wired:

* :meth:`AdaLora.prepare` wraps the model in :class:`AdaLoraForClassification`: a ``PeftModel`` whose
  forward goes through ``AdaLoraModel.forward``, which adds AdaLoRA's orthogonal regulariser
  ``orth_reg_weight · mean ‖PᵀP - I‖_F`` to ``outputs.loss`` whenever labels are given (PEFT 0.21;
  the generic ``PeftModel.forward`` would skip it, and ``PeftModelForSequenceClassification`` would
  wrap the head in a ``ModulesToSaveWrapper``, which doubles its parameter count). The task head
  stays a plain module; training unfreezes it, and it is counted separately (``head_params``), as
  in every other mode.
* Targets: the run's ``lora_targets`` (q, v, ...) mapped to the family's exact module paths
  (:func:`heterolora_core.adapters.families.target_paths`, e.g. ``bert.encoder.layer.0.attention.self.query``).
* ``alpha``: AdaLoRA scales the delta by ``lora_alpha / init_r`` (its ``ranknum`` stays at
  ``init_r`` while triplets are pruned). ``alpha = None`` gives ``2 · init_r``, i.e. scaling 2 as
  the engine's LoRA default (alpha = 2r).
* :class:`AdaLoraCallback` calls ``update_and_allocate(step)`` after every optimizer step and before
  the gradients are zeroed (``on_optimizer_step``), as PEFT requires; ``step`` is the 0-based index
  of the step just taken.

Schedule (:func:`adalora_schedule`), for a run of T optimizer steps. The AdaLoRA paper's GLUE
settings for the small tasks (DeBERTaV3-base; MRPC: T ≈ 3450, t_init 600, t_final 1800, ΔT 1;
RTE: T ≈ 3900, 600, 1800, 1) put about 15% of the steps in the warm-up and about half in the
final fixed-rank phase; the same fractions are used here so a 3-epoch run keeps their shape:

    t_init = round(0.15 T)   warm-up at init_r, no pruning
    t_final = max(1, round(0.5 T))   last steps at the final ranks (>= 1, so the final mask is forced)
    ΔT = 1                   re-mask after every step of the pruning phase (cheap: 12 modules)
    orth_reg_weight = 0.1    the paper's MRPC value (PEFT's default is 0.5)

Parameter counting. PEFT never shrinks the tensors: a pruned triplet is masked (its E entry is
held at zero), so ``p.numel()`` overstates what AdaLoRA trains. The count reported here is what
survives: for every adapted projection, kept rank r_i x (d_in + d_out + 1), the +1 being the
singular value E. ``trainable_params`` is that count after the final allocation (before it, the
count at ``init_r``); ``adalora_initial_params`` (all modules at ``init_r``) and
``adalora_target_params`` (``target_r`` per module on average) go beside it in the summary. For
the embedded MiniLM with q,v (12 modules of 384 -> 384): initial 32 x 12 x 769 = 295,296,
target 24 x 12 x 769 = 221,472.

Allocation records. Besides the summary, the run's ``reallocations.jsonl`` gets one line per
change of the kept ranks, checked at the dynamic search's cadence (every ``realloc_every`` of an
epoch) once pruning has started, and always one line at the end (``"final": true``). Each line
has the usual ``scores`` (kept rank / init_r, in [0, 1]) and ``enabled`` (kept rank > 0) under the
engine's module names (``layer.{i}.lora.{q,v,...}``), plus ``ranks`` (name -> kept rank) and
``budget`` (total kept rank), so the dashboard shows AdaLoRA's allocation next to HeteroLoRA's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from peft import AdaLoraConfig, PeftModel
from peft.tuners.adalora import AdaLoraLayer
from torch import nn
from transformers import TrainerCallback

from heterolora_core.adapters.checkpoint import Checkpoint
from heterolora_core.adapters.families import target_paths
from heterolora_core.adapters.modules import head_module
from heterolora_core.methods.base import Method, MethodContext, MethodRun, PlannedBudget, projection_plan
from heterolora_core.records.record import RunRecord
from heterolora_core.search.reallocator import ReallocationSchedule
from heterolora_core.training.run_config import RunConfig

ADAPTER_NAME = "default"  # PEFT's adapter name
TINIT_FRACTION = 0.15
TFINAL_FRACTION = 0.5
DELTA_T = 1
ORTH_REG_WEIGHT = 0.1


PEFT_PREFIX = "peft."  # checkpoint keys: peft.<parameter name>


@dataclass(frozen=True)
class AdaLoraSchedule:
    """AdaLoRA's three phases over ``total_step`` optimizer steps (see the module docstring)."""

    total_step: int
    tinit: int
    tfinal: int
    deltaT: int = DELTA_T
    orth_reg_weight: float = ORTH_REG_WEIGHT

    def to_dict(self) -> dict[str, Any]:
        return {"total_step": self.total_step, "tinit": self.tinit, "tfinal": self.tfinal, "deltaT": self.deltaT,
                "orth_reg_weight": self.orth_reg_weight}


def adalora_schedule(total_steps: int) -> AdaLoraSchedule:
    """The schedule for a run of ``total_steps`` optimizer steps; ValueError below 2 steps (AdaLoRA
    needs at least one step of pruning before the final phase)."""
    total = int(total_steps)
    if total < 2:
        raise ValueError(f"adalora mode needs at least 2 training steps, got {total}")
    tfinal = max(1, int(round(TFINAL_FRACTION * total)))
    tinit = min(int(round(TINIT_FRACTION * total)), total - tfinal - 1)
    return AdaLoraSchedule(total, tinit, tfinal)


def peft_config(config: RunConfig, paths: list[str], total_steps: int, inference_mode: bool = False):
    """The ``peft.AdaLoraConfig`` of a run (exact module paths as targets)."""
    schedule = adalora_schedule(total_steps)
    alpha = config.alpha if config.alpha is not None else 2 * int(config.adalora_init_r)
    return AdaLoraConfig(
        init_r=int(config.adalora_init_r), target_r=int(config.adalora_target_r), lora_alpha=alpha,
        lora_dropout=0.0, target_modules=list(paths), total_step=schedule.total_step, tinit=schedule.tinit,
        tfinal=schedule.tfinal, deltaT=schedule.deltaT, orth_reg_weight=schedule.orth_reg_weight,
        inference_mode=inference_mode)


class AdaLoraForClassification(PeftModel):
    """A ``PeftModel`` whose forward runs ``AdaLoraModel.forward`` (which adds the orthogonal
    regulariser to the loss when labels are given) and leaves the task head unwrapped."""

    def forward(self, *args: Any, **kwargs: Any):
        with self._enable_peft_forward_hooks(*args, **kwargs):
            kwargs = {k: v for k, v in kwargs.items() if k not in self.special_peft_forward_args}
            return self.base_model(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Ranks and counts (from the model alone)
# ----------------------------------------------------------------------------------------------

def adalora_layers(model) -> Iterator[tuple[str, Any]]:
    """(path in the Hugging Face model, AdaLoRA layer) for every adapted projection of a PEFT model."""
    inner = model.base_model.model  # PeftModel -> AdaLoraModel -> the Hugging Face model
    for path, module in inner.named_modules():
        if isinstance(module, AdaLoraLayer) and ADAPTER_NAME in module.lora_E:
            yield path, module


def kept_ranks(model) -> dict[str, int]:
    """Path -> rank kept by AdaLoRA's latest allocation (``init_r`` everywhere before the first)."""
    pattern = model.peft_config[ADAPTER_NAME].rank_pattern or {}
    out = {}
    for path, layer in adalora_layers(model):
        mask = pattern.get(f"{path}.lora_E.{ADAPTER_NAME}")
        if mask is None:
            mask = pattern.get(f"{path}.lora_E")  # the key form after PEFT's save_pretrained
        out[path] = int(layer.r[ADAPTER_NAME]) if mask is None else int(sum(bool(m) for m in mask))
    return out


def adalora_parameter_counts(model) -> dict[str, int]:
    """``trainable_params``: Σ kept r_i · (d_in + d_out + 1) over the adapted projections;
    ``adalora_initial_params``: the same at ``init_r``; ``adalora_target_params``: at ``target_r``."""
    config = model.peft_config[ADAPTER_NAME]
    ranks = kept_ranks(model)
    final = initial = target = 0
    for path, layer in adalora_layers(model):
        unit = int(layer.in_features) + int(layer.out_features) + 1
        final += ranks[path] * unit
        initial += int(layer.r[ADAPTER_NAME]) * unit
        target += int(config.target_r) * unit
    return {"trainable_params": final, "adalora_initial_params": initial, "adalora_target_params": target}


def adalora_state(model) -> dict[str, Any]:
    """The AdaLoRA factors (A, E, B of every adapted projection) keyed by parameter name; pruned
    triplets are included with their E held at zero, so loading them reproduces the function."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if any(f".{part}.{ADAPTER_NAME}" in name for part in ("lora_A", "lora_B", "lora_E"))}




# ----------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------

@dataclass
class AdaLoraRun(MethodRun):
    """The AdaLoRA side of one run: the PEFT model, our names for its modules and the schedule."""

    model: Any
    names: dict[str, str]  # our name -> path in the Hugging Face model
    schedule: AdaLoraSchedule
    init_r: int
    snapshots: ReallocationSchedule | None = None
    num_reallocations: int = 0
    _last_ranks: dict[str, int] | None = field(default=None, repr=False)
    _record: RunRecord | None = field(default=None, repr=False)

    def ranks(self) -> dict[str, int]:
        """Our module name -> kept rank, in layer order."""
        by_path = kept_ranks(self.model)
        return {name: by_path[path] for name, path in self.names.items()}

    def allocation_started(self) -> bool:
        return bool(self.model.peft_config[ADAPTER_NAME].rank_pattern)

    def update(self, step_index: int) -> None:
        """PEFT's ``update_and_allocate`` for the optimizer step just taken (0-based index)."""
        self.model.base_model.update_and_allocate(step_index)

    def write(self, record: RunRecord, step: int, final: bool = False) -> bool:
        """Append an allocation line when the ranks changed since the last one (or ``final``)."""
        ranks = self.ranks()
        if not final and ranks == self._last_ranks:
            return False
        record.append_reallocation(step, {n: round(r / self.init_r, 6) for n, r in ranks.items()},
                                   [n for n, r in ranks.items() if r > 0], ranks=ranks, budget=sum(ranks.values()),
                                   source="adalora", **({"final": True} if final else {}))
        self._last_ranks = ranks
        self.num_reallocations += 1
        return True

    def callbacks(self) -> list:
        return [AdaLoraCallback(self, self._record)]

    def trainable_params(self) -> int:
        return adalora_parameter_counts(self.model)["trainable_params"]

    def summary_fields(self) -> dict[str, Any]:
        counts = adalora_parameter_counts(self.model)
        return {"adalora_initial_params": counts["adalora_initial_params"],
                "adalora_target_params": counts["adalora_target_params"]}

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {PEFT_PREFIX + name: value for name, value in adalora_state(self.model).items()}


class AdaLoraCallback(TrainerCallback):
    """After every optimizer step (gradients still in place): ``update_and_allocate``; at the
    snapshot steps and at the end: an allocation line in the run record."""

    def __init__(self, run: AdaLoraRun, record: RunRecord | None):
        self.run, self.record = run, record

    def on_train_begin(self, args, state, control, **kwargs):
        if self.record is not None:
            self.record.update_summary(adalora_schedule=self.run.schedule.to_dict(), adalora_init_r=self.run.init_r)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.run.update(state.global_step)  # global_step is incremented after this event
        step = state.global_step + 1
        snapshots = self.run.snapshots
        if self.record is not None and snapshots is not None and step in snapshots and self.run.allocation_started():
            self.run.write(self.record, step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.record is not None:
            self.run.write(self.record, state.global_step, final=True)


class AdaLora(Method):
    """PEFT's AdaLoRA on the run's LoRA targets."""

    def validate(self, config: RunConfig) -> None:
        """init_r >= 1, 1 <= target_r <= init_r, LoRA targets only, at least 2 steps."""
        super().validate(config)
        init_r, target_r = int(config.adalora_init_r), int(config.adalora_target_r)
        if not 1 <= target_r <= init_r:
            raise ValueError(f"adalora-target-r must be in [1, adalora-init-r = {init_r}], got {config.adalora_target_r}")
        if not config.lora_targets:
            raise ValueError("adalora mode needs LoRA targets (--lora-targets)")
        if config.max_steps is not None and int(config.max_steps) < 2:
            raise ValueError(f"adalora mode needs at least 2 training steps, got max-steps {config.max_steps}")

    def plan(self, config: RunConfig, model: nn.Module) -> PlannedBudget:
        """Every target at ``target_r``: the count AdaLoRA ends with on average, r·(d_in + d_out + 1)."""
        plan = projection_plan(model, config.lora_targets, int(config.adalora_target_r), extra_per_rank=1)
        initial = plan.trainable_params // int(config.adalora_target_r) * int(config.adalora_init_r)
        return dataclasses.replace(plan, notes=(f"AdaLoRA starts at rank {config.adalora_init_r} ({initial:,} "
                                                f"parameters) and prunes to an average rank {config.adalora_target_r}",))

    def prepare(self, model: nn.Module, config: RunConfig, context: MethodContext) -> AdaLoraRun:
        names = target_paths(model, list(config.lora_targets))
        head = head_module(model)
        peft_model = AdaLoraForClassification(model, peft_config(config, list(names.values()), context.total_steps))
        if head is not None:
            for p in head.parameters():
                p.requires_grad_(False)
        snapshots = ReallocationSchedule(context.steps_per_epoch, context.total_steps, float(config.realloc_every))
        return AdaLoraRun(peft_model, names, adalora_schedule(context.total_steps), int(config.adalora_init_r),
                          snapshots, _record=context.record)

    def restore(self, model: nn.Module, config: RunConfig, checkpoint: Checkpoint) -> nn.Module:
        """Wrap ``model`` as in training (inference mode) and load the saved factors. ValueError
        when a factor is missing or has the wrong shape."""
        names = target_paths(model, list(config.lora_targets))
        steps = max(2, int(config.max_steps or 2))
        peft_model = AdaLoraForClassification(model, peft_config(config, list(names.values()), steps, inference_mode=True))
        wanted = adalora_state(peft_model)
        saved = {k[len(PEFT_PREFIX):]: v for k, v in checkpoint.tensors.items() if k.startswith(PEFT_PREFIX)}
        missing = sorted(set(wanted) - set(saved))
        if missing:
            raise ValueError(f"the run's saved adapters lack {len(missing)} AdaLoRA factor(s), e.g. {missing[0]}")
        params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for name in wanted:
                if tuple(params[name].shape) != tuple(saved[name].shape):
                    raise ValueError(f"AdaLoRA factor {name} has shape {tuple(saved[name].shape)}, "
                                     f"expected {tuple(params[name].shape)} (adalora-init-r changed?)")
                params[name].copy_(saved[name])
        return peft_model
