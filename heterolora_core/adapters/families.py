"""Where the candidates go in each supported model family, and ``attach``.

Hooks on the stock ``transformers`` modules (no copied modeling code). Notation per layer l:
h_l is the layer input, u_l the FFN input (the residual stream at the FFN). The shortcut terms of
the method doc go into the model's existing residual sums:

Post-norm (BERT, RoBERTa, OPT with ``do_layer_norm_before=False``): inside the sums that the
existing LayerNorms normalise::

    u_l   = LN1(h_l + Attn(h_l) + Δres_attn(h_l) + Δcross_ffn(u_{l-1}))
    out_l = LN2(u_l + FFN(u_l)   + Δres_ffn(u_l)  + Δcross_attn(h_l))

BERT/RoBERTa pass the residual into ``*SelfOutput`` / ``*Output`` as ``input_tensor``, so a
pre-hook adds the terms there. OPT adds inline, so pre-hooks on its two LayerNorms add them to
the norms' inputs, after OPT's residual dropout (so the dropout never touches a shortcut).

Pre-norm (OPT with ``do_layer_norm_before=True``, Llama, Qwen2, Mistral): on the residual stream::

    u_l   = h_l + Δres_attn(h_l) + Δcross_ffn(u_{l-1}) + Attn(Norm1(h_l))
    out_l = u_l + FFN(Norm2(u_l)) + Δres_ffn(u_l) + Δcross_attn(h_l)

The first line is done by handing the layer h_l + terms (which becomes its ``residual``) while a
pre-hook on Norm1 hands the norm the original h_l; the second adds the terms to the layer output.

With every B at zero, or every candidate disabled, each sum is unchanged, so the adapted model
computes exactly what the pretrained model computes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from heterolora_core.adapters.config import HeteroLoraConfig
from heterolora_core.adapters.modules import AdapterModule, AdapterSet, Base, freeze
from heterolora_core.vocab import ModuleName

SUPPORTED_FAMILIES = ("bert", "roberta", "opt", "llama", "qwen2", "mistral")


class UnsupportedModelError(ValueError):
    """The model's architecture is not one HeteroLoRA can attach to."""


@dataclass(frozen=True)
class Family:
    """How to find the layers and projections of one model family."""

    name: str
    layers: Callable[[nn.Module], nn.ModuleList]
    linear_paths: dict[str, str]
    install_shortcuts: Callable[[AdapterSet, list[nn.Module], "Family", Any], None]  # (.., model config)
    norms: tuple[str, str] = ("", "")  # attribute names of the attention-side and FFN-side norms
    pre_norm: Callable[[Any], bool] = field(default=lambda config: False)


def _get_arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _set_arg(args: tuple, kwargs: dict, index: int, name: str, value: Any) -> tuple[tuple, dict]:
    if name in kwargs:
        kwargs = dict(kwargs)
        kwargs[name] = value
        return args, kwargs
    return args[:index] + (value,) + args[index + 1:], kwargs


def _shortcuts_of(adapters: AdapterSet, layer: int) -> dict[str, AdapterModule]:
    out = {}
    for kind in adapters.config.shortcut_kinds:
        name = str(ModuleName.shortcut(layer, kind))
        if name in adapters.names():
            out[kind] = adapters.module(name)
    return out


def _pairs(shortcuts: dict[str, AdapterModule], *items: tuple[str, torch.Tensor | None]):
    return [(shortcuts[kind], x) for kind, x in items if kind in shortcuts]


def _prev_u(adapters: AdapterSet, layer: int) -> torch.Tensor | None:
    return adapters.context(layer - 1).u if layer > 0 else None


# ----------------------------------------------------------------------------------------------
# BERT / RoBERTa: the residual arrives as ``input_tensor`` of SelfOutput and Output
# ----------------------------------------------------------------------------------------------
def _install_bert(adapters: AdapterSet, layers: list[nn.Module], family: Family, model_config: Any) -> None:
    for l, layer in enumerate(layers):
        sc = _shortcuts_of(adapters, l)
        if not sc:
            continue

        def attn_sum(mod, args, kwargs, l=l, sc=sc):
            h = _get_arg(args, kwargs, 1, "input_tensor")
            adapters.context(l).h = h
            new = adapters.site_output(h, _pairs(sc, ("res_attn", h), ("cross_ffn", _prev_u(adapters, l))))
            return None if new is h else _set_arg(args, kwargs, 1, "input_tensor", new)

        def ffn_sum(mod, args, kwargs, l=l, sc=sc):
            u = _get_arg(args, kwargs, 1, "input_tensor")
            ctx = adapters.context(l)
            ctx.u = u
            new = adapters.site_output(u, _pairs(sc, ("res_ffn", u), ("cross_attn", ctx.h)))
            return None if new is u else _set_arg(args, kwargs, 1, "input_tensor", new)

        adapters.track(layer.attention.output.register_forward_pre_hook(attn_sum, with_kwargs=True))
        adapters.track(layer.output.register_forward_pre_hook(ffn_sum, with_kwargs=True))


# ----------------------------------------------------------------------------------------------
# OPT (post-norm when do_layer_norm_before is False) and the pre-norm families
# ----------------------------------------------------------------------------------------------
def _record_layer_input(adapters: AdapterSet, l: int, mod, args, kwargs):
    adapters.context(l).h = _get_arg(args, kwargs, 0, "hidden_states")


def _layers_with_shortcuts(adapters: AdapterSet, layers: list[nn.Module], family: Family):
    """(l, layer, its shortcuts by kind, Norm1, Norm2) for every layer that has shortcut candidates."""
    norm1_name, norm2_name = family.norms
    for l, layer in enumerate(layers):
        sc = _shortcuts_of(adapters, l)
        if sc:
            yield l, layer, sc, getattr(layer, norm1_name), getattr(layer, norm2_name)


def _install_post_norm_inline(adapters: AdapterSet, layers: list[nn.Module], family: Family, model_config: Any) -> None:
    """OPT-350M style: LN1(h + dropout(attn)), LN2(u + dropout(ffn)); terms join the norms' inputs."""
    for l, layer, sc, norm1, norm2 in _layers_with_shortcuts(adapters, layers, family):

        def norm1_input(mod, args, l=l, sc=sc):
            x = args[0]
            new = adapters.site_output(x, _pairs(sc, ("res_attn", adapters.context(l).h), ("cross_ffn", _prev_u(adapters, l))))
            return None if new is x else (new,) + args[1:]

        def norm1_output(mod, args, output, l=l):
            adapters.context(l).u = output

        def norm2_input(mod, args, l=l, sc=sc):
            x, ctx = args[0], adapters.context(l)
            new = adapters.site_output(x, _pairs(sc, ("res_ffn", ctx.u), ("cross_attn", ctx.h)))
            return None if new is x else (new,) + args[1:]

        adapters.track(layer.register_forward_pre_hook(partial(_record_layer_input, adapters, l), with_kwargs=True))
        adapters.track(norm1.register_forward_pre_hook(norm1_input))
        adapters.track(norm1.register_forward_hook(norm1_output))
        adapters.track(norm2.register_forward_pre_hook(norm2_input))


def _install_pre_norm(adapters: AdapterSet, layers: list[nn.Module], family: Family, model_config: Any) -> None:
    """Pre-norm: residual = h + terms while Norm1 still sees h; FFN-side terms join the output."""
    for l, layer, sc, norm1, norm2 in _layers_with_shortcuts(adapters, layers, family):

        def layer_input(mod, args, kwargs, l=l, sc=sc):
            h = _get_arg(args, kwargs, 0, "hidden_states")
            ctx = adapters.context(l)
            ctx.h, ctx.original_input = h, None
            new = adapters.site_output(h, _pairs(sc, ("res_attn", h), ("cross_ffn", _prev_u(adapters, l))))
            if new is h:
                return None
            ctx.original_input = h
            return _set_arg(args, kwargs, 0, "hidden_states", new)

        def norm1_input(mod, args, l=l):
            ctx = adapters.context(l)
            if ctx.original_input is None:
                return None
            original, ctx.original_input = ctx.original_input, None
            return (original,) + args[1:]

        def norm2_input(mod, args, l=l):
            adapters.context(l).u = args[0]

        def layer_output(mod, args, kwargs, output, l=l, sc=sc):
            out = output[0] if isinstance(output, tuple) else output
            ctx = adapters.context(l)
            new = adapters.site_output(out, _pairs(sc, ("res_ffn", ctx.u), ("cross_attn", ctx.h)))
            if new is out:
                return None
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        adapters.track(layer.register_forward_pre_hook(layer_input, with_kwargs=True))
        adapters.track(norm1.register_forward_pre_hook(norm1_input))
        adapters.track(norm2.register_forward_pre_hook(norm2_input))
        adapters.track(layer.register_forward_hook(layer_output, with_kwargs=True))


def _install_opt(adapters: AdapterSet, layers: list[nn.Module], family: Family, model_config: Any) -> None:
    install = _install_pre_norm if family.pre_norm(model_config) else _install_post_norm_inline
    install(adapters, layers, family, model_config)


_BERT_PATHS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "o": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
_LLAMA_PATHS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                "o": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_in": "mlp.up_proj",
                "ffn_out": "mlp.down_proj"}
_OPT_PATHS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.out_proj", "ffn_in": "fc1", "ffn_out": "fc2"}

_bert = Family("bert", lambda base: base.encoder.layer, _BERT_PATHS, _install_bert)
_llama_like = dict(layers=lambda base: base.layers, linear_paths=_LLAMA_PATHS, install_shortcuts=_install_pre_norm,
                   norms=("input_layernorm", "post_attention_layernorm"), pre_norm=lambda config: True)
FAMILIES: dict[str, Family] = {
    "bert": _bert,
    "roberta": Family("roberta", _bert.layers, _BERT_PATHS, _install_bert),
    "opt": Family("opt", lambda base: base.decoder.layers, _OPT_PATHS, _install_opt,
                  norms=("self_attn_layer_norm", "final_layer_norm"),
                  pre_norm=lambda config: bool(getattr(config, "do_layer_norm_before", True))),
    "llama": Family("llama", **_llama_like),
    "qwen2": Family("qwen2", **_llama_like),
    "mistral": Family("mistral", **_llama_like),
}


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a Hugging Face model, or UnsupportedModelError naming the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type or type(model).__name__!r}; "
            f"supported: {', '.join(SUPPORTED_FAMILIES)}")
    return FAMILIES[model_type]


def resolve_path(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _lora_hook(adapters: AdapterSet, module: AdapterModule, linear: nn.Module, args, output):
    return adapters.lora_output(module, args[0], output)


def attach(model: nn.Module, config: HeteroLoraConfig) -> AdapterSet:
    """Freeze ``model`` and attach every candidate of ``config``'s search space to it.

    The candidates start enabled, with B = 0 (the model's function is unchanged). The returned
    :class:`AdapterSet` is registered on the model as ``model.heterolora``, so ``model.parameters()``,
    ``state_dict()``, ``.to()``, optimizers and DDP all see the adapters. The task head (``classifier``
    or ``score``) is frozen too: training code unfreezes it.
    """
    family = family_of(model)
    if isinstance(getattr(model, "heterolora", None), AdapterSet):
        raise ValueError("this model already has HeteroLoRA adapters attached")
    layers = model_layers(model, family)
    check_targets(family, config.lora_targets)
    freeze(model)
    adapters = AdapterSet(config, family.name, len(layers))
    generator = torch.Generator().manual_seed(config.init_seed) if config.init_seed is not None else None
    _add_candidates(adapters, model, layers, family, generator)
    family.install_shortcuts(adapters, layers, family, model.config)
    adapters.track(model.register_forward_hook(lambda *_: adapters.clear_contexts()))
    adapters.to(next(model.parameters()).device)
    model.add_module("heterolora", adapters)
    return adapters


def _add_candidates(adapters: AdapterSet, model: nn.Module, layers: list[nn.Module], family: Family,
                    generator: torch.Generator | None) -> None:
    """One AdapterModule per LoRA target and shortcut kind of every layer, in layer order; a
    forward hook on each adapted projection."""
    config = adapters.config
    hidden = int(model.config.hidden_size)
    module_paths = {id(m): name for name, m in model.named_modules()}
    for l, layer in enumerate(layers):
        for target in config.lora_targets:
            linear = resolve_path(layer, family.linear_paths[target])
            module = adapters.add(AdapterModule(
                ModuleName.lora(l, target), Base.LINEAR, linear.in_features, linear.out_features, config.rank,
                config.lora_scaling, dropout=config.dropout, target_path=module_paths[id(linear)], generator=generator))
            adapters.track(linear.register_forward_hook(partial(_lora_hook, adapters, module)))
        for kind in config.shortcut_kinds:
            if kind == "cross_ffn" and l == 0:
                continue  # u_{-1} does not exist
            base = Base.IDENTITY if kind.startswith("res_") else Base.ZERO
            adapters.add(AdapterModule(ModuleName.shortcut(l, kind), base, hidden, hidden, config.rank,
                                       config.shortcut_scaling, generator=generator))


def model_layers(model: nn.Module, family: Family | None = None) -> list[nn.Module]:
    """The Transformer layers of a (not PEFT-wrapped) Hugging Face model, in order."""
    family = family or family_of(model)
    return list(family.layers(getattr(model, "base_model", model)))


def check_targets(family: Family, targets) -> None:
    """ValueError naming the family's projections when a LoRA target does not exist in it."""
    missing = [t for t in targets if t not in family.linear_paths]
    if missing:
        raise ValueError(f"LoRA target(s) {', '.join(missing)} do not exist in {family.name} models "
                         f"(they have {', '.join(family.linear_paths)})")


def target_paths(model: nn.Module, lora_targets) -> dict[str, str]:
    """Our module name (``layer.{i}.lora.{t}``) -> the projection's path in ``model`` (a plain
    Hugging Face model, before PEFT wraps it), in layer order."""
    family = family_of(model)
    check_targets(family, lora_targets)
    paths = {id(m): name for name, m in model.named_modules()}
    return {str(ModuleName.lora(l, target)): paths[id(resolve_path(layer, family.linear_paths[target]))]
            for l, layer in enumerate(model_layers(model, family)) for target in lora_targets}
