"""Low-rank adapter modules and the set of candidates attached to a model.

Every candidate of the search space, LoRA module or LoRA-adapted shortcut, is one
:class:`AdapterModule`: a low-rank delta

    Δ(x) = s · B (A x),   A: (r, d_in) Kaiming-uniform,  B: (d_out, r) zeros,  s = alpha / r

plus what it is added to (its :class:`Base`): a frozen linear map (LoRA: y = W0 x + b + Δ(x)), the
identity (residual shortcuts: x + Δ(x)) or nothing (cross-layer shortcuts: Δ(x)). Where the
deltas are added is the business of :mod:`heterolora_core.adapters.families`, which installs
forward hooks on the stock Hugging Face modules.

A candidate is switched with ``enabled``. A disabled candidate skips its low-rank compute, so its
parameters receive no gradient (``.grad`` stays ``None``: AdamW neither updates nor decays them
and keeps their state) and resume from where they were when re-enabled. All adapter parameters
keep ``requires_grad=True`` and stay registered with any optimizer built from the model.
"""
from __future__ import annotations

import math
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Iterable, Iterator, Protocol, runtime_checkable

import torch
from torch import nn

from heterolora_core.adapters.config import HeteroLoraConfig
from heterolora_core.vocab import Group, ModuleName


class Base(StrEnum):
    """What a candidate's delta is added to."""

    LINEAR = "linear"  # a frozen projection W0 x + b (LoRA)
    IDENTITY = "identity"  # the residual itself (res_attn, res_ffn)
    ZERO = "zero"  # nothing: only the delta exists (cross_attn, cross_ffn)


@runtime_checkable
class GradientSink(Protocol):
    """Receives, in every backward pass while collection is on, each candidate's output gradients
    δ (N, d_out) and inputs x (N, d_in) (see :mod:`heterolora_core.search.proxies`)."""

    def add(self, module: "AdapterModule", grad: torch.Tensor, x: torch.Tensor) -> None: ...


class AdapterModule(nn.Module):
    """One candidate: a low-rank delta with a name, a base and an on/off switch.

    Args:
        name: ``layer.{i}.lora.{target}`` or ``layer.{i}.shortcut.{kind}``.
        base: what the delta is added to (:class:`Base`).
        d_in, d_out: the delta's input and output widths.
        rank: r.
        scaling: s = alpha / r.
        dropout: dropout on the input of the delta (paper: 0).
        target_path: LoRA only: the adapted projection's path in the model
            (``bert.encoder.layer.0.attention.self.query``), for PEFT export.
        generator: the random generator of A's initialisation (a seed fixes it exactly).

    Attributes beyond the arguments: ``lora_A`` (r, d_in), ``lora_B`` (d_out, r), ``enabled``;
    ``active_rank`` (heterogeneous ranks: only the first ``active_rank`` components of A and B take
    part, the others are masked and keep their values; see :meth:`set_rank`); ``alpha_scale``
    (alpha-test proxy only: when set, the module's whole output, base and delta, is multiplied by
    it) and ``probe_B`` (proxies only: a fixed non-zero stand-in for an all-zero B).
    """

    def __init__(self, name: ModuleName, base: Base, d_in: int, d_out: int, rank: int, scaling: float,
                 *, dropout: float = 0.0, target_path: str | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.name = str(name)
        self.layer = name.layer
        self.group = name.group
        self.kind = name.kind
        self.base = base
        self.d_in = int(d_in)
        self.d_out = int(d_out)
        self.rank = int(rank)
        self.scaling = float(scaling)
        self.target_path = target_path
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.d_in))
        self.lora_B = nn.Parameter(torch.zeros(self.d_out, self.rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        self.active_rank = self.rank
        self.alpha_scale: float | None = None
        self.probe_B: torch.Tensor | None = None
        self.initialize_parameters(generator)

    def initialize_parameters(self, generator: torch.Generator | None = None) -> None:
        """A ~ Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(d_in), 1/sqrt(d_in)) as torch's
        ``nn.Linear`` and PEFT initialise it; B = 0, so a fresh module adds exactly nothing."""
        bound = 1.0 / math.sqrt(self.d_in)
        with torch.no_grad():
            self.lora_A.uniform_(-bound, bound, generator=generator)
            self.lora_B.zero_()

    @property
    def num_params(self) -> int:
        """Trainable parameters: r · (d_in + d_out), r the active rank (masked components excluded)."""
        return self.active_rank * (self.d_in + self.d_out)

    def set_rank(self, rank: int) -> None:
        """Use the first ``rank`` components (0 <= rank <= r): 0 switches the module off. The other
        components are masked: they get no gradient and keep their values (and, through
        :class:`~heterolora_core.methods.callbacks.MaskedRankGuard`, their optimizer state)."""
        if not 0 <= int(rank) <= self.rank:
            raise ValueError(f"{self.name}: rank {rank} outside 0..{self.rank}")
        self.active_rank = int(rank) if rank else self.rank
        self.enabled = bool(rank)

    def delta(self, x: torch.Tensor, B: torch.Tensor | None = None) -> torch.Tensor:
        """s · B (A x) for x of shape (..., d_in) -> (..., d_out), over the active components."""
        A = self.lora_A
        B = self.lora_B if B is None else B
        if self.active_rank < self.rank:
            A, B = A[: self.active_rank], B[:, : self.active_rank]
        x = self.dropout(x).to(A.dtype)
        return nn.functional.linear(nn.functional.linear(x, A), B) * self.scaling

    def effective_B(self) -> torch.Tensor:
        """B, or the probe standing in for it when B is still exactly zero and a probe is set."""
        if self.probe_B is not None and not bool(self.lora_B.detach().any()):
            return self.probe_B.to(self.lora_B.device, self.lora_B.dtype)
        return self.lora_B

    def extra_repr(self) -> str:
        return (f"{self.name}: base={self.base.value}, d_in={self.d_in}, d_out={self.d_out}, r={self.rank}, "
                f"scaling={self.scaling:g}, enabled={self.enabled}")


@dataclass
class LayerContext:
    """Activations of one layer in the current forward pass, read by later hooks."""

    h: torch.Tensor | None = None  # layer input h_l
    u: torch.Tensor | None = None  # FFN input u_l (residual stream at the FFN)
    original_input: torch.Tensor | None = None  # pre-norm models: h_l before shortcut terms

    def clear(self) -> None:
        self.h = self.u = self.original_input = None


class AdapterSet(nn.Module):
    """All candidates attached to one model; registered on it as the submodule ``heterolora``.

    The protocol: :meth:`names`, :meth:`set_enabled`, :meth:`enabled`, :meth:`num_trainable`,
    :meth:`module`, :meth:`costs`, :meth:`groups`, :meth:`adapter_parameters`, :meth:`detach`.
    """

    def __init__(self, config: HeteroLoraConfig, family: str, num_layers: int):
        super().__init__()
        self.config = config
        self.family = family
        self.num_layers = num_layers
        self.candidates = nn.ModuleDict()  # keys are names with '.' replaced by '__'
        self.collector: GradientSink | None = None
        self._order: list[str] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._contexts = [LayerContext() for _ in range(num_layers)]

    # -- construction (used by families.attach) -----------------------------------------------
    def add(self, module: AdapterModule) -> AdapterModule:
        self.candidates[module.name.replace(".", "__")] = module
        self._order.append(module.name)
        return module

    def track(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        self._handles.append(handle)

    # -- the public protocol --------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every candidate name, in layer order (LoRA targets, then shortcut kinds, per layer)."""
        return list(self._order)

    def module(self, name: str) -> AdapterModule:
        try:
            return self.candidates[name.replace(".", "__")]
        except KeyError:
            raise ValueError(f"unknown adapter module {name!r}") from None

    def modules_in_order(self) -> list[AdapterModule]:
        return [self.module(n) for n in self._order]

    def names_in_group(self, group: Group) -> list[str]:
        return [n for n in self._order if self.module(n).group == group]

    def set_enabled(self, names: Iterable[str]) -> None:
        """Switch exactly ``names`` on and every other candidate off. Unknown name: ValueError."""
        wanted = set(names)
        unknown = wanted.difference(self._order)
        if unknown:
            raise ValueError(f"unknown adapter module(s): {', '.join(sorted(unknown))}")
        for name in self._order:
            self.module(name).enabled = name in wanted

    def enable_all(self) -> None:
        self.set_enabled(self._order)

    def set_ranks(self, ranks: dict[str, int]) -> None:
        """Give every candidate its rank (0: off); candidates not named are switched off. Unknown
        name: ValueError."""
        unknown = set(ranks).difference(self._order)
        if unknown:
            raise ValueError(f"unknown adapter module(s): {', '.join(sorted(unknown))}")
        for name in self._order:
            self.module(name).set_rank(int(ranks.get(name, 0)))

    def ranks(self) -> dict[str, int]:
        """Every candidate's rank now (0 when off), in layer order."""
        return {n: (self.module(n).active_rank if self.module(n).enabled else 0) for n in self._order}

    def enabled(self) -> list[str]:
        """Names of the candidates now on, in layer order."""
        return [n for n in self._order if self.module(n).enabled]

    def all_at_full_rank(self) -> bool:
        return all(self.module(n).active_rank == self.module(n).rank for n in self._order)

    def num_trainable(self, names: Iterable[str] | None = None) -> int:
        """Trainable parameters of the enabled candidates (or of ``names``); task head excluded."""
        chosen = self.enabled() if names is None else list(names)
        return sum(self.module(n).num_params for n in chosen)

    def costs(self) -> dict[str, int]:
        return {n: self.module(n).num_params for n in self._order}

    def groups(self) -> dict[str, Group]:
        return {n: self.module(n).group for n in self._order}

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        return self.candidates.parameters()

    def detach(self) -> None:
        """Remove every hook: the model computes exactly what it did before ``attach``."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- gradient collection for the proxies -----------------------------------------------------
    @contextmanager
    def collecting(self, sink: GradientSink) -> Iterator[GradientSink]:
        """While active, every backward pass hands each candidate's δ (the gradient where its
        output is added) and x (its input) to ``sink``."""
        previous, self.collector = self.collector, sink
        try:
            yield sink
        finally:
            self.collector = previous

    @contextmanager
    def all_enabled(self) -> Iterator[None]:
        """Every candidate on for the duration (the authors score with everything on)."""
        previous = self.enabled()
        self.enable_all()
        try:
            yield
        finally:
            self.set_enabled(previous)

    # -- hook helpers (used by families) ----------------------------------------------------------
    def context(self, layer: int) -> LayerContext:
        return self._contexts[layer]

    def clear_contexts(self) -> None:
        for ctx in self._contexts:
            ctx.clear()

    def _watch(self, site: torch.Tensor, sources: list[tuple[AdapterModule, torch.Tensor]]) -> torch.Tensor:
        """Send δ = ∂L/∂site, paired with each candidate's source activation, to the collector;
        returns the tensor the forward pass goes on with (``site``, or its stand-in below)."""
        collector = self.collector
        if collector is None or not sources or not torch.is_grad_enabled():
            return site
        if not site.requires_grad:
            # Nothing below this site needs a gradient (the frozen model under the lowest enabled
            # candidate): a leaf stand-in brings δ here without backpropagating any further down,
            # where making the embeddings require grad would pay for the input gradients of the
            # whole first layer. Its accumulated .grad is dropped at once.
            site = site.detach().requires_grad_(True)
            site.register_post_accumulate_grad_hook(_drop_grad)
        d_out = site.shape[-1]

        def on_grad(grad: torch.Tensor) -> None:
            g = grad.reshape(-1, d_out)
            for module, x in sources:
                collector.add(module, g, x.reshape(-1, module.d_in))

        site.register_hook(on_grad)
        return site

    def lora_output(self, module: AdapterModule, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Output of a LoRA-adapted projection: y = W0 x + b (+ Δ(x) when enabled)."""
        if module.alpha_scale is not None:
            y = (y + module.delta(x).to(y.dtype)) * module.alpha_scale
        elif module.enabled:
            y = y + module.delta(x).to(y.dtype)
        if self.collector is not None:
            y = self._watch(y, [(module, x)])
        return y

    def site_output(self, site: torch.Tensor, sources: list[tuple[AdapterModule, torch.Tensor | None]]) -> torch.Tensor:
        """A residual sum with shortcut terms added: site + Σ_enabled Δ_c(x_c).

        ``sources`` pairs each shortcut that adds into this sum with its source activation
        (None where it does not exist, e.g. ``cross_ffn`` of layer 0). With nothing enabled and
        no collection going on, ``site`` itself is returned, so the model is untouched.
        """
        present = [(m, x) for m, x in sources if x is not None]
        out = site
        for module, x in present:
            if module.alpha_scale is not None:
                out = out + _alpha_scaled_term(module, x).reshape(site.shape).to(site.dtype)
            elif module.enabled:
                out = out + module.delta(x).reshape(site.shape).to(site.dtype)
        if self.collector is not None and present:
            if out is site and site.requires_grad:
                out = site.view_as(site)  # a node of its own, so its gradient is this sum's alone
            out = self._watch(out, present)
        return out


def _drop_grad(leaf: torch.Tensor) -> None:
    leaf.grad = None


def _alpha_scaled_term(module: AdapterModule, x: torch.Tensor) -> torch.Tensor:
    """The change of a residual sum when a shortcut's output is scaled by α (alpha-test proxy):
    identity base: α(x + Δ) − x; zero base: α Δ, with a probe standing in for B = 0."""
    a = module.alpha_scale
    if module.base is Base.IDENTITY:
        return module.delta(x) * a + x * (a - 1.0)
    return module.delta(x, module.effective_B()) * a


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def head_module(model: nn.Module) -> nn.Module | None:
    """The task head of a sequence-classification model (``classifier`` or ``score``)."""
    for attr in ("classifier", "score"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            return head
    return None


def head_parameter_count(model: nn.Module) -> int:
    head = head_module(model)
    return 0 if head is None else sum(p.numel() for p in head.parameters())


def probe_generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded by (seed, name): the same module gets the same probe in every process."""
    gen = torch.Generator()
    gen.manual_seed((zlib.crc32(name.encode()) ^ (seed * 2654435761)) & 0x7FFFFFFF)
    return gen
