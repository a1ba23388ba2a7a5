"""An allocation as configuration for other people's training: ``peft.LoraConfig`` keyword
arguments and an axolotl YAML snippet, checked against the model before they are written.

An allocation is a rank r_i (and a LoRA alpha α_i) per adapted projection, named by the
projection's full path in the model (``bert.encoder.layer.0.attention.self.query``). As PEFT
keywords:

    target_modules   the full paths of the modules with r_i > 0 (PEFT: a module is adapted when
                     its name equals an entry or ends with ``"." + entry``)
    rank_pattern     {key_i: r_i},  alpha_pattern {key_i: α_i}, with key_i = ``^`` + the escaped
                     path + ``$``: PEFT matches a pattern key as ``(.*\\.)?(key)$`` against a module's
                     name, so an anchored key can only ever match the one module it names
    r, lora_alpha    the first module's (PEFT's defaults for anything a pattern does not cover)
    task_type        SEQ_CLS for a sequence classifier (the head goes in ``modules_to_save``),
                     CAUSAL_LM for a language model

``get_peft_model(model, LoraConfig(**kwargs))`` then trains Σ_i r_i · (d_in,i + d_out,i) adapter
parameters, exactly. PEFT ignores a pattern key that matches no module without a word (PEFT
issue #3582), so :func:`check_lora_config` resolves every key with PEFT's own matching functions
on the model and refuses, before anything is written, a key that matches nothing or more than one
module, and a target set that differs from the allocation's.

Shortcut candidates have no PEFT counterpart: an allocation that enables one cannot be expressed
here (:func:`peft_allocation` says so).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from heterolora_core.adapters.modules import AdapterSet, head_module
from heterolora_core.vocab import CONFIG_FORMATS, Group



@dataclass(frozen=True)
class PeftAllocation:
    """What PEFT needs of an allocation: per adapted module path its rank and alpha (r_i > 0 only),
    the unit cost d_in + d_out of each, and the names of our candidates behind the paths."""

    ranks: dict[str, int]
    alphas: dict[str, float]
    unit_costs: dict[str, int]
    candidates: dict[str, str]  # path -> candidate name (layer.0.lora.q)
    dropout: float = 0.0

    @property
    def trainable_params(self) -> int:
        """Σ r_i · (d_in + d_out): the adapter parameters PEFT will train (head excluded)."""
        return sum(r * self.unit_costs[p] for p, r in self.ranks.items())


def peft_allocation(adapters: AdapterSet, ranks: Mapping[str, int] | None = None) -> PeftAllocation:
    """The allocation of ``adapters`` (each enabled candidate at its active rank, or the ranks of
    ``ranks`` by candidate name) as module paths. α_i = scaling · r_i keeps our α/r for every
    module. ValueError naming the enabled shortcuts (PEFT cannot carry them) or when nothing is on."""
    chosen = ranks if ranks is not None else adapters.ranks()
    on = {n: int(r) for n, r in chosen.items() if int(r) > 0}
    shortcuts = [n for n in on if adapters.module(n).group != Group.LORA]
    if shortcuts:
        raise ValueError(f"PEFT has no shortcut modules: the enabled shortcut(s) {', '.join(shortcuts)} "
                         f"would be lost; disable them (or search with --no-shortcuts) to export")
    if not on:
        raise ValueError("no LoRA module is enabled: nothing to export")
    modules = {n: adapters.module(n) for n in on}
    return PeftAllocation(
        ranks={m.target_path: on[n] for n, m in modules.items()},
        alphas={m.target_path: m.scaling * on[n] for n, m in modules.items()},
        unit_costs={m.target_path: m.d_in + m.d_out for m in modules.values()},
        candidates={m.target_path: n for n, m in modules.items()}, dropout=adapters.config.dropout)


def pattern_key(path: str) -> str:
    """The anchored PEFT pattern key of one module path."""
    return "^" + re.escape(path) + "$"


def task_type_of(model: nn.Module) -> str | None:
    """PEFT's task type of a Hugging Face model, from its class name (None: a bare backbone)."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    return None


def head_name(model: nn.Module) -> str | None:
    """The module path of a classifier's head (``classifier``, ``score``), None without one."""
    head = head_module(model)
    return next((name for name, mod in model.named_modules() if mod is head), None) if head is not None else None


def lora_config_kwargs(allocation: PeftAllocation, model: nn.Module,
                       base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """``peft.LoraConfig`` keyword arguments of ``allocation`` on ``model`` (a model of the same
    architecture without our adapters: the paths are read from it; a meta-device copy will do)."""
    paths = list(allocation.ranks)
    first = paths[0]
    head = head_name(model)
    kwargs: dict[str, Any] = {
        "r": allocation.ranks[first], "lora_alpha": allocation.alphas[first], "lora_dropout": allocation.dropout,
        "target_modules": paths,
        "rank_pattern": {pattern_key(p): allocation.ranks[p] for p in paths},
        "alpha_pattern": {pattern_key(p): allocation.alphas[p] for p in paths},
        "task_type": task_type_of(model),
    }
    if head is not None:
        kwargs["modules_to_save"] = [head]
    if base_model_name_or_path:
        kwargs["base_model_name_or_path"] = base_model_name_or_path
    return kwargs


def check_lora_config(kwargs: Mapping[str, Any], model: nn.Module, allocation: PeftAllocation | None = None) -> None:
    """Resolve ``kwargs`` on ``model`` with PEFT's own matching and refuse what PEFT would get wrong
    silently: a pattern key that matches no module or several, an adapted module whose pattern key
    is not its own, and (given ``allocation``) a target set or a rank that differs from it.
    ValueError with one line naming the first problem."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils.other import get_pattern_key

    config = LoraConfig(**kwargs)
    names = [n for n, _ in model.named_modules() if n]
    targeted = [n for n in names if check_target_module_exists(config, n)]
    for pattern_name in ("rank_pattern", "alpha_pattern"):
        pattern = dict(getattr(config, pattern_name) or {})
        hits: dict[str, list[str]] = {key: [] for key in pattern}
        for name in names:
            key = get_pattern_key(list(pattern), name)
            if key in hits and key != name:
                hits[key].append(name)
        for key, matched in hits.items():
            if len(matched) != 1:
                what = "no module" if not matched else f"{len(matched)} modules ({', '.join(matched[:3])})"
                raise ValueError(f"{pattern_name} key {key!r} matches {what} of {type(model).__name__}; "
                                 f"PEFT would ignore it silently")
        stray = [n for n in targeted if get_pattern_key(list(pattern), n) not in pattern]
        if stray:
            raise ValueError(f"target module {stray[0]} has no {pattern_name} key of its own")
    if allocation is not None:
        if sorted(targeted) != sorted(allocation.ranks):
            missing = sorted(set(allocation.ranks) - set(targeted)) or sorted(set(targeted) - set(allocation.ranks))
            raise ValueError(f"target_modules select {len(targeted)} modules, the allocation has "
                             f"{len(allocation.ranks)} (first difference: {missing[0]})")
        for path in targeted:
            rank = config.rank_pattern[get_pattern_key(list(config.rank_pattern), path)]
            if rank != allocation.ranks[path]:
                raise ValueError(f"{path} would train at rank {rank}, the allocation says {allocation.ranks[path]}")


def axolotl_snippet(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The LoRA keys of an axolotl config file holding the same allocation."""
    out = {"adapter": "lora", "lora_r": kwargs["r"], "lora_alpha": kwargs["lora_alpha"],
           "lora_dropout": kwargs.get("lora_dropout", 0.0), "lora_target_modules": list(kwargs["target_modules"]),
           "lora_rank_pattern": dict(kwargs["rank_pattern"]), "lora_alpha_pattern": dict(kwargs["alpha_pattern"])}
    if kwargs.get("modules_to_save"):
        out["lora_modules_to_save"] = list(kwargs["modules_to_save"])
    return out


def render(kwargs: Mapping[str, Any], fmt: str) -> str:
    """The text of ``kwargs`` in ``fmt`` (``json``: LoraConfig keywords; ``axolotl``: YAML)."""
    if fmt == "json":
        return json.dumps(dict(kwargs), indent=1) + "\n"
    if fmt == "axolotl":
        import yaml

        header = "# LoRA allocation by HeteroLoRA Studio: merge these keys into your axolotl config\n"
        return header + yaml.safe_dump(axolotl_snippet(kwargs), sort_keys=False, width=200)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(CONFIG_FORMATS)}")


def write_lora_config(kwargs: Mapping[str, Any], model: nn.Module, path: str | Path, fmt: str = "json",
                      allocation: PeftAllocation | None = None) -> Path:
    """Check ``kwargs`` on ``model`` (:func:`check_lora_config`), then write them to a new file
    ``path`` in ``fmt``; nothing is written when a check fails or ``path`` exists."""
    path = Path(path)
    text = render(kwargs, fmt)
    check_lora_config(kwargs, model, allocation)
    if path.exists():
        raise ValueError(f"{path} already exists; choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x") as fh:
        fh.write(text)
    return path
