"""Zero-cost proxies: a saliency score per candidate module (method doc, section 4).

Everything gradient-based is computed from one statistic per candidate,

    G = ∇_{ΔW} L = Σ_n δ_n x_nᵀ            (d_out, d_in)

the gradient of the loss with respect to the module's implied full update ΔW = s·B A, where x_n
is the module's input and δ_n the gradient at the point its output is added, summed over the
tokens of a batch. The factor gradients follow from it: ∇B L = s·G Aᵀ and ∇A L = s·Bᵀ G.

Why G. At initialisation B = 0, so ∇A L = 0, the authors' grad_norm reduces to ‖∇B L‖, and their
snip and synflow are exactly zero for every module (selection would be random). G is non-zero at
initialisation and independent of the rank and of the random A. What this module does:

* ``grad_norm``  = ‖Σ_b G_b‖_F                    (rank-free; = ‖∇W0 L‖_F for a LoRA module)
* ``fisher``     = Σ_b ‖G_b‖²_F                   (empirical Fisher trace of the implied update)
* ``snip``       = Σ|A ⊙ ∇A L| + Σ|B ⊙ ∇B L| with the factor gradients computed from G; while B is
  still exactly zero, a fixed seeded probe B̃ ~ U(-1/√r, 1/√r) stands in for it (the score is then
  the connection sensitivity the factors would have; its scale is the same for every module)
* ``synflow``    = the same factor formula on |A|, |B̃| with G from one pass of the network with
  every weight replaced by its absolute value and an all-ones input embedding (signs restored)
* ``alpha_test`` = the smallest α in {0, 0.1, …, 1} scaling the module's output that keeps the loss
  within ``tol`` (relative) of the unscaled model, by bisection on a few batches. A LoRA module
  scales the whole projection output, an identity shortcut its whole output (the residual itself);
  a zero-base cross-layer shortcut has only its delta, so while B = 0 the probe B̃ is used
* ``constant``   = 1.0 for every module (the random control: ties are broken at random)

G is also what makes scoring cheap: x and δ of every candidate exist in every ordinary training
step, so the gradient-based proxies accumulate G from the training batches themselves (the
default, see :class:`~heterolora_core.search.reallocator.Reallocator`) instead of extra
forward/backward passes. The authors' extra
scoring batches are one option away (``proxy_batches``).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from heterolora_core.adapters.modules import AdapterModule, AdapterSet, probe_generator
from heterolora_core.search.statistics import (DEFAULT_SKETCH_RANK, ScoringStatistics,
                                               make_statistics)
from heterolora_core.vocab import GRADIENT_PROXIES, Proxy, Scoring, choose

Batch = Mapping[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's own loss (batches carry ``labels``)."""
    return model(**batch).loss


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def ensure_probes(adapters: AdapterSet, seed: int) -> None:
    """Give every module a fixed probe B̃ ~ U(-1/√r, 1/√r), seeded by (seed, name)."""
    for module in adapters.modules_in_order():
        if module.probe_B is None:
            bound = 1.0 / math.sqrt(module.rank)
            gen = probe_generator(seed, module.name)
            module.probe_B = torch.empty(module.d_out, module.rank).uniform_(-bound, bound, generator=gen)


def collect_gradients(model: nn.Module, adapters: AdapterSet, batches: Iterable[Batch],
                      loss_fn: LossFn = default_loss, progress: Callable[[Iterable], Iterable] | None = None,
                      statistics: ScoringStatistics | None = None) -> ScoringStatistics:
    """Accumulate the scoring statistics (default: the sketch) over extra forward/backward passes
    on ``batches``, with every candidate on.

    Uses ``torch.autograd.grad`` rather than ``backward``, so no parameter's ``.grad`` is touched:
    the scoring passes leave the optimizer's view of the model exactly as it was.
    """
    collector = statistics if statistics is not None else make_statistics()
    params = [p for p in model.parameters() if p.requires_grad]
    batches = progress(batches) if progress else batches
    with adapters.all_enabled(), adapters.collecting(collector):
        for batch in batches:
            loss = loss_fn(model, batch)
            # Differentiating w.r.t. the parameters drives backward through the whole network;
            # the tensor hooks on each candidate's output see δ on the way.
            torch.autograd.grad(loss, params, allow_unused=True)
    return collector


def factor_saliency(module: AdapterModule, statistics: ScoringStatistics) -> float:
    """Σ|A ⊙ ∇A| + Σ|B ⊙ ∇B| with ∇B = s·G Aᵀ, ∇A = s·Bᵀ G (B: the module's B, or its probe;
    |A|, |B| when the statistics were gathered for synflow)."""
    P, Q = statistics.factor_products(module)
    A = module.lora_A.detach().float().to(P.device)
    B = module.effective_B().detach().float().to(P.device)
    if statistics.absolute:
        A, B = A.abs(), B.abs()
    s = module.scaling
    return float((A * (s * Q)).abs().sum() + (B * (s * P)).abs().sum())


def scores_from_gradients(proxy: str, adapters: AdapterSet, statistics: ScoringStatistics,
                          seed: int = 0) -> dict[str, float]:
    """grad_norm / snip / fisher from accumulated statistics. A module that saw no gradient
    (e.g. outside the graph) scores 0."""
    if proxy not in GRADIENT_PROXIES:
        raise ValueError(f"{proxy!r} is not computed from accumulated gradients")
    if proxy == Proxy.SNIP:
        ensure_probes(adapters, seed)
    scores = {}
    for module in adapters.modules_in_order():
        if module.name not in statistics:
            scores[module.name] = 0.0
        elif proxy == Proxy.GRAD_NORM:
            scores[module.name] = statistics.grad_norm(module.name)
        elif proxy == Proxy.FISHER:
            scores[module.name] = statistics.fisher(module.name)
        else:
            scores[module.name] = factor_saliency(module, statistics)
    return scores


@contextmanager
def _absolute_weights(model: nn.Module) -> Iterator[None]:
    signs = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            signs[name] = torch.sign(p)
            p.abs_()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.mul_(signs[name])  # |p|·sign(p) == p exactly, zeros included


def synflow_scores(model: nn.Module, adapters: AdapterSet, example: Batch, seed: int = 0,
                   scoring: str = Scoring.AUTO, sketch_rank: int = DEFAULT_SKETCH_RANK) -> dict[str, float]:
    """SynFlow: one pass with |θ| everywhere and an all-ones input embedding of the example's
    shape; R = Σ logits; score = Σ|θ ⊙ ∇θ R| over the module's factors (B̃ while B = 0). Costs
    one extra forward and backward pass of its own (its input is not a training batch)."""
    ensure_probes(adapters, seed)
    input_ids = example["input_ids"]
    embed_dim = model.get_input_embeddings().embedding_dim
    param = next(model.parameters())
    ones = torch.ones(*input_ids.shape, embed_dim, device=param.device, dtype=param.dtype, requires_grad=True)
    mask = example.get("attention_mask")
    collector = make_statistics(scoring, sketch_rank, seed, factors=True, absolute=True)
    with torch.enable_grad(), _eval_mode(model), _absolute_weights(model), adapters.all_enabled(), \
            adapters.collecting(collector):
        kwargs = {"inputs_embeds": ones}
        if mask is not None:
            kwargs["attention_mask"] = torch.ones_like(mask)
        out = model(**kwargs)
        torch.autograd.grad(out.logits.float().sum(), [ones])
    return {m.name: factor_saliency(m, collector) if m.name in collector else 0.0 for m in adapters.modules_in_order()}


def alpha_test_scores(model: nn.Module, adapters: AdapterSet, batches: list[Batch], tol: float = 0.01,
                      steps: int = 10, loss_fn: LossFn = default_loss, seed: int = 0,
                      progress: Callable[[Iterable], Iterable] | None = None) -> dict[str, float]:
    """Smallest α ∈ {0, 1/steps, …, 1} with L(α) ≤ (1 + tol)·L(1), found by bisection (assumes
    the loss grows as α shrinks); ~log2(steps + 1) forward passes over ``batches`` per module, of
    its own (it needs no gradient statistics)."""
    ensure_probes(adapters, seed)
    batches = list(batches)

    def loss_at(module: AdapterModule, alpha: float) -> float:
        module.alpha_scale = alpha
        try:
            return float(sum(float(loss_fn(model, b)) for b in batches) / len(batches))
        finally:
            module.alpha_scale = None

    scores = {}
    modules = adapters.modules_in_order()
    with torch.no_grad(), _eval_mode(model), adapters.all_enabled():
        for module in (progress(modules) if progress else modules):
            reference = loss_at(module, 1.0)
            limit = reference + tol * abs(reference)
            lo, hi = 0, steps  # α = hi/steps always passes
            while lo < hi:
                mid = (lo + hi) // 2
                if loss_at(module, mid / steps) <= limit:
                    hi = mid
                else:
                    lo = mid + 1
            scores[module.name] = hi / steps
    return scores


def compute_scores(proxy: str, model: nn.Module, adapters: AdapterSet, batches: list[Batch] | None = None,
                   collector: ScoringStatistics | None = None, loss_fn: LossFn = default_loss, seed: int = 0,
                   progress: Callable[[Iterable], Iterable] | None = None, scoring: str = Scoring.AUTO,
                   sketch_rank: int = DEFAULT_SKETCH_RANK) -> dict[str, float]:
    """Score every candidate with ``proxy``.

    Gradient proxies use ``collector`` when given (statistics accumulated from training steps),
    else extra passes over ``batches`` gathered as ``scoring`` says (``sketch``: the default,
    see :mod:`heterolora_core.search.statistics`; ``exact``: the full G); synflow needs one batch
    for its shape; alpha_test needs ``batches``; constant needs nothing.
    """
    proxy = choose(Proxy, proxy, "proxy")
    if proxy is Proxy.CONSTANT:
        return {name: 1.0 for name in adapters.names()}
    if proxy in GRADIENT_PROXIES:
        if collector is None:
            if not batches:
                raise ValueError(f"{proxy} needs scoring batches or accumulated gradients")
            if proxy == Proxy.SNIP:
                ensure_probes(adapters, seed)
            statistics = make_statistics(scoring, sketch_rank, seed, factors=proxy == Proxy.SNIP)
            collector = collect_gradients(model, adapters, batches, loss_fn, progress, statistics)
        return scores_from_gradients(proxy, adapters, collector, seed)
    if not batches:
        raise ValueError(f"{proxy} needs at least one scoring batch")
    if proxy is Proxy.SYNFLOW:
        return synflow_scores(model, adapters, batches[0], seed, scoring, sketch_rank)
    return alpha_test_scores(model, adapters, batches, loss_fn=loss_fn, seed=seed, progress=progress)
