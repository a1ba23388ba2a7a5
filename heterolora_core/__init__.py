"""HeteroLoRA Studio engine: where LoRA's trainable parameters should go in a Transformer.

The layout, one home per concept::

    vocab.py      the names of the search space and its settings (groups, kinds, proxies, ...)
    adapters/     the search space: config, modules, where they attach per model family, checkpoints
    search/       budgets, selection, zero-cost proxies, the reallocator
    methods/      uniform LoRA, static / dynamic HeteroLoRA, AdaLoRA: one file each, a registry
    tasks/        what a run learns: GLUE / own classification files, instruction data (SFT), GLUE as
                  instructions; data, collator, model, metrics and their direction
    training/     RunConfig and its validation, data, models (the embedded smollm2 decoder), metrics, the Trainer loop
    records/      run folders, the run store and queue, the worker
    analysis/     pure pandas functions over records: allocation, comparison, statistics
    planning.py   the one check before a launch, the exact budget, scores without training
    recommend.py  the zero-cost allocation as a peft.LoraConfig / axolotl snippet (``recommend``)
    exporting.py  a finished run's allocation for other tools (``export``)
    cli.py        ``python -m heterolora_core``
    inference.py  a finished run's model, and predictions

Into the user's own training: ``HeteroLoraCallback`` (training/hf_callback.py) runs the search in a
``transformers.Trainer`` or TRL ``SFTTrainer``; ``adapters/portable.py`` turns an allocation into
checked ``peft.LoraConfig`` keywords.

Public API (imported lazily, so that light modules such as ``heterolora_core.records`` load
without torch)::

    from heterolora_core import HeteroLoraConfig, attach
    adapters = attach(model, HeteroLoraConfig(rank=8, lora_targets=("q", "v"), shortcuts=True))
    adapters.names(); adapters.set_enabled(names); adapters.enabled(); adapters.num_trainable()
"""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "HeteroLoraConfig": "adapters.config",
    "attach": "adapters.families",
    "UnsupportedModelError": "adapters.families",
    "SUPPORTED_FAMILIES": "adapters.families",
    "AdapterSet": "adapters.modules",
    "AdapterModule": "adapters.modules",
    "export_peft": "adapters.checkpoint",
    "Budget": "search.budget",
    "resolve": "search.budget",
    "select": "search.selection",
    "Reallocator": "search.reallocator",
    "compute_scores": "search.proxies",
    "plan_budget": "planning",
    "check_run": "planning",
    "RunConfig": "training.run_config",
    "run_training": "training.trainer",
    "HeteroLoraCallback": "training.hf_callback",
    "RunRecord": "records.record",
    "RunSummary": "records.record",
    "RunStore": "records.store",
    "Proxy": "vocab",
    "Ranking": "vocab",
    "LORA_TARGETS": "vocab",
    "SHORTCUT_KINDS": "vocab",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
