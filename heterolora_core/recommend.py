"""``python -m heterolora_core recommend``: the zero-cost allocation, without training, as
configuration for the user's own training (``peft.LoraConfig`` keywords, an axolotl snippet).

The allocation is exactly what a run of the same settings would select at step 0: the run's
method (``rank_static``: a rank per target from the spectra of the gradients G = ∇ΔW L, water-filled
under the budget; ``static``: the proxy's top targets at ``--rank``) is prepared on the model
(:meth:`heterolora_core.methods.base.Method.prepare`) and its search callback makes its first
selection on ``batches`` calibration batches, with the engine's allocator
(:mod:`heterolora_core.search.reallocator`). The recommendation is kept as a run record in the
data home (``config.json`` with ``source: recommend``, ``summary.json`` status done, one line of
``reallocations.jsonl`` with the ranks, the configuration files), so the store lists it and the
dashboard's Allocation page draws it.

The search space holds LoRA targets only: PEFT has no shortcut modules.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from heterolora_core.adapters.modules import AdapterSet, head_parameter_count
from heterolora_core.adapters.portable import (PeftAllocation, check_lora_config, lora_config_kwargs,
                                               peft_allocation, write_lora_config)
from heterolora_core.methods import registry
from heterolora_core.methods.base import MethodContext
from heterolora_core.methods.callbacks import SearchCallback, write_reallocation
from heterolora_core.planning import calibration_batches, check_run
from heterolora_core.records.home import runs_dir
from heterolora_core.records.record import RunRecord, Status, new_run_id
from heterolora_core.search.reallocator import Reallocation
from heterolora_core.training.environment import environment_info
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import CONFIG_FILES, ModuleName

#: The methods whose first selection is a recommendation (one selection before training).
RECOMMEND_MODES = ("rank_static", "static")
#: ``config.json`` key marking a record as a recommendation (a RunConfig reader ignores it).
SOURCE_KEY = "source"
RECOMMEND_SOURCE = "recommend"


@dataclass
class Recommendation:
    """A recommendation: every candidate's rank (0: off) and score, the PEFT allocation and its
    ``LoraConfig`` keywords, and the record that keeps it."""

    config: RunConfig
    ranks: dict[str, int]
    scores: dict[str, float]
    allocation: PeftAllocation
    kwargs: dict[str, Any]
    record: RunRecord
    seconds: float

    @property
    def trainable_params(self) -> int:
        return self.allocation.trainable_params


def recommend_config(config: RunConfig, batches: int) -> RunConfig:
    """The run config of a recommendation: LoRA targets only, ``batches`` calibration batches
    (``proxy_batches``); ValueError for a mode that is not a one-shot allocation."""
    if config.mode not in RECOMMEND_MODES:
        raise ValueError(f"recommend makes one allocation before training: mode must be one of "
                         f"{', '.join(RECOMMEND_MODES)}, got {config.mode!r}")
    if isinstance(batches, bool) or not isinstance(batches, int) or not 1 <= batches <= 1024:
        raise ValueError(f"--batches must be a whole number in [1, 1024], got {batches!r}")
    return replace(config.normalised(), shortcuts=False, proxy_batches=batches)


def recommend(config: RunConfig, batches: int = 8, out_dir: str | Path | None = None,
              progress=None) -> Recommendation:
    """Allocate ``config``'s budget on ``batches`` calibration batches and keep it as a record in
    ``out_dir`` (default ``$HETEROLORA_HOME/runs/<id>``). Every check (the config, the task, the
    model, the budget, the PEFT keys on the model) runs before the record is written."""
    started = time.time()
    config = recommend_config(config, batches)
    plan = check_run(config)
    if plan.trainable_params == 0:  # refused before the weights load
        what = f"{config.budget_params:,} parameters" if config.budget_params else "the budget"
        raise ValueError(f"the budget enables nothing: {what} cannot pay for rank 1 of any target")
    path = Path(out_dir) if out_dir is not None else runs_dir() / new_run_id(config.to_dict())
    if RunRecord(path).exists():
        raise ValueError(f"{path} already holds a run; choose another --record")
    task, prepared, chosen = calibration_batches(config, batches)
    torch.manual_seed(config.seed)  # the head's initialisation, as a training run draws it
    model = task.load_model(config, prepared)
    adapters, reallocation = first_selection(model, config, chosen, progress)
    allocation = peft_allocation(adapters)
    reference = task.meta_model(config)  # the architecture without our adapters
    kwargs = lora_config_kwargs(allocation, reference)
    check_lora_config(kwargs, reference, allocation)
    record = _write_record(path, config, adapters, reallocation, head_parameter_count(model), prepared.summary,
                           time.time() - started)
    for fmt, name in CONFIG_FILES.items():
        write_lora_config(kwargs, reference, record.path / name, fmt, allocation)
    return Recommendation(config, adapters.ranks(), reallocation.scores, allocation, kwargs, record,
                          time.time() - started)


def first_selection(model, config: RunConfig, batches: list, progress=None) -> tuple[AdapterSet, Reallocation]:
    """The method's own first selection on ``batches``: ``prepare`` attaches the candidates, the
    search callback's start of training scores and allocates (as at step 0 of a run)."""
    context = MethodContext(steps_per_epoch=1, total_steps=1, scoring_batches=lambda step, n: batches[:n],
                            progress=progress)
    run = registry.load(config.mode).prepare(model, config, context)
    search = next(cb for cb in run.callbacks() if isinstance(cb, SearchCallback))
    search.on_train_begin(None, None, None)
    return run.adapters, search.reallocator.history[-1]


def _write_record(path: Path, config: RunConfig, adapters: AdapterSet, reallocation: Reallocation,
                  head_params: int, task_summary: dict, seconds: float) -> RunRecord:
    summary = {k: v for k, v in task_summary.items() if k in ("num_labels", "label_names", "is_regression")}
    record = RunRecord.create(
        path, {**config.to_dict(), **environment_info(), SOURCE_KEY: RECOMMEND_SOURCE}, status=Status.DONE,
        finished_at=time.time(), progress=1.0, step=0, max_steps=0, num_reallocations=1, planned_reallocations=1,
        head_params=head_params, **summary, n_layers=adapters.num_layers, wall_seconds=round(seconds, 2),
        search_seconds=round(reallocation.seconds, 3))
    write_reallocation(record, reallocation, adapters.num_trainable())
    return record


def is_recommendation(record: RunRecord) -> bool:
    """True for a record that ``recommend`` wrote (an allocation, no trained weights)."""
    return record.config().get(SOURCE_KEY) == RECOMMEND_SOURCE


def per_layer_ranks(ranks: dict[str, int]) -> tuple[list[str], list[tuple[int, dict[str, int]]]]:
    """(the LoRA kinds in order, [(layer, {kind: rank})] by layer) of candidate ranks."""
    kinds: list[str] = []
    layers: dict[int, dict[str, int]] = {}
    for name, rank in ranks.items():
        parsed = ModuleName.parse(name)
        if parsed is None:
            continue
        if parsed.kind not in kinds:
            kinds.append(parsed.kind)
        layers.setdefault(parsed.layer, {})[parsed.kind] = int(rank)
    return kinds, sorted(layers.items())
