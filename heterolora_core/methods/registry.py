"""The method registry: every way a run can allocate its budget, by ``mode`` name (torch-free).

A method is one class implementing :class:`heterolora_core.methods.base.Method` in its own file,
plus one :func:`register` line in :mod:`heterolora_core.methods` naming that class. The registry
holds a :class:`MethodInfo` per method: what readers that must stay light (the run store, the
``runs`` listing, the dashboard's labels and forms) need to know, without importing torch; the
implementation is imported on first :func:`load`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from heterolora_core.methods.base import Method


@dataclass(frozen=True)
class MethodInfo:
    """What a method is, as the forms, labels and listings need it.

    Attributes:
        name: the ``mode`` of a run config and of ``--mode``.
        label: a human name (``dynamic HeteroLoRA``).
        implementation: ``module:Class`` of the :class:`Method` implementation.
        searches: the method scores candidates with a proxy under a budget, so ``proxy``,
            ``ranking``, ``score_norm`` and the budget (``enable_ratio`` / ``match_uniform_rank``)
            apply to it.
        reallocates: the selection changes during training (``realloc_every`` applies).
        shortcuts: the method can use the shortcut candidates.
        options: RunConfig fields only this method reads (the Launch page shows them).
        description: one line for ``--help`` and the Launch page.
        baseline: plain LoRA, what every allocation must beat (the Results page opens against it).
        control: a random stand-in for an allocation (pages open on a real allocation before it).
    """

    name: str
    label: str
    implementation: str
    searches: bool = False
    reallocates: bool = False
    shortcuts: bool = True
    options: tuple[str, ...] = ()
    description: str = ""
    baseline: bool = False
    control: bool = False


_REGISTRY: dict[str, MethodInfo] = {}
_LOADED: dict[str, "Method"] = {}


def register(info: MethodInfo) -> MethodInfo:
    """Add a method; a second registration of the same name is an error."""
    if info.name in _REGISTRY:
        raise ValueError(f"method {info.name!r} is registered twice")
    _REGISTRY[info.name] = info
    return info


def names() -> tuple[str, ...]:
    """Every registered mode name, in registration order."""
    return tuple(_REGISTRY)


def info(name: object) -> MethodInfo:
    """The :class:`MethodInfo` of ``name``, or ValueError naming the registered methods."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown mode {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def find(name: object) -> MethodInfo | None:
    """Like :func:`info`, None for an unknown name (old or hand-written records)."""
    return _REGISTRY.get(name) if isinstance(name, str) else None


def load(name: object) -> "Method":
    """The method implementation of ``name`` (imported once, then cached)."""
    meta = info(name)
    if meta.name not in _LOADED:
        module_name, class_name = meta.implementation.split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        _LOADED[meta.name] = cls(meta)
    return _LOADED[meta.name]
