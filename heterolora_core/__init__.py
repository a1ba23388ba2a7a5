"""HeteroLoRA Studio engine: where LoRA's trainable parameters should go in a Transformer.

Public API (imported lazily so that light modules such as ``heterolora_core.runs`` load
without torch)::

    from heterolora_core import HeteroLoraConfig, attach
    adapters = attach(model, HeteroLoraConfig(rank=8, lora_targets=("q", "v"), shortcuts=True))
    adapters.names(); adapters.set_enabled(names); adapters.enabled(); adapters.num_trainable()
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "HeteroLoraConfig": "config",
    "LORA_TARGETS": "config",
    "SHORTCUT_KINDS": "config",
    "attach": "architectures",
    "UnsupportedModelError": "architectures",
    "SUPPORTED_FAMILIES": "architectures",
    "AdapterSet": "adapters",
    "AdapterModule": "adapters",
    "Budget": "budget",
    "plan_budget": "budget",
    "select": "search",
    "Reallocator": "search",
    "compute_scores": "proxies",
    "PROXIES": "proxies",
    "RunConfig": "runs",
    "RunRecord": "runs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
