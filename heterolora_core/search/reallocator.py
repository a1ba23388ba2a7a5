"""The reallocation schedule, the reallocator (on/off) and the rank allocator.

Static HeteroLoRA calls :meth:`Reallocator.reallocate` once before training; dynamic HeteroLoRA
calls it at the steps of a :class:`ReallocationSchedule` (every fraction f of an epoch). Each call
scores every candidate, selects, switches, and records ``step``, ``scores`` and ``enabled``.
:class:`RankAllocator` does the same with a rank per candidate (``ranks``).
"""
from __future__ import annotations

import bisect
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from heterolora_core.adapters.modules import AdapterSet
from heterolora_core.search.budget import Budget, budget_params, resolve
from heterolora_core.search.proxies import (Batch, LossFn, collect_gradients, compute_scores, default_loss,
                                            ensure_probes, scores_from_gradients)
from heterolora_core.search.ranks import deal, normalized_spectra, proportional, water_fill
from heterolora_core.search.selection import select
from heterolora_core.search.statistics import ScoringStatistics, make_statistics
from heterolora_core.vocab import (DEFAULT_SKETCH_RANK, GRADIENT_PROXIES, Proxy, RankDeal, RankInit, Ranking, RankRule,
                                   Scoring, ScoreNorm, choose)


@dataclass(frozen=True)
class ReallocationSchedule:
    """Global steps (after that many optimizer steps) at which dynamic search reallocates:
    e·S + round(j·f·S) for every epoch e and j = 0 … ceil(1/f) - 1 (halves round up), excluding 0
    (done before training) and the final step. E.g. S = 100, f = 0.2: 20, 40, …, 100, 120, …

    Never materialised in full: membership and counts are arithmetic on the within-epoch offsets
    (at most S of them), so a run of any length costs O(S) memory.
    """

    steps_per_epoch: int
    total_steps: int
    fraction: float

    @property
    def offsets(self) -> tuple[int, ...]:
        """The distinct within-epoch offsets round(j·f·S) mod S, sorted."""
        S, f = self.steps_per_epoch, self.fraction
        if f * S <= 1.0:  # consecutive j differ by under one step: every offset is hit
            return tuple(range(S))
        per_epoch = math.ceil(1.0 / f - 1e-9)
        return tuple(sorted({int(math.floor(j * f * S + 0.5)) % S for j in range(per_epoch)}))

    def __contains__(self, step: object) -> bool:
        if not isinstance(step, int) or not 0 < step < self.total_steps:
            return False
        offsets = self.offsets
        i = bisect.bisect_left(offsets, step % self.steps_per_epoch)
        return i < len(offsets) and offsets[i] == step % self.steps_per_epoch

    def any_between(self, low: int, high: int) -> bool:
        """True when a reallocation step s satisfies low < s <= high."""
        return any(s in self for s in range(max(low + 1, 1), min(high, self.total_steps - 1) + 1))

    def __len__(self) -> int:
        S, offsets = self.steps_per_epoch, self.offsets
        full, rest = divmod(self.total_steps, S)
        # every offset of each full epoch, the offsets below the remainder, minus step 0 itself
        return max(0, full * len(offsets) + bisect.bisect_left(offsets, rest) - 1)

    def steps(self) -> list[int]:
        """Every reallocation step, in order (materialises the schedule: for tests and short runs)."""
        S, offsets = self.steps_per_epoch, self.offsets
        out = []
        for epoch_start in range(0, self.total_steps, S):
            out += [epoch_start + o for o in offsets if 0 < epoch_start + o < self.total_steps]
        return out


@dataclass
class Reallocation:
    """One reallocation: the step it happened after, every score, the enabled set (and, for rank
    allocations, every candidate's rank)."""

    step: int
    scores: dict[str, float]
    enabled: list[str]
    seconds: float = 0.0
    ranks: dict[str, int] | None = None


class Reallocator:
    """Scores, selects, switches and records; a training loop calls it every fraction f of an epoch.

    Scoring sources, in order of preference:
    - ``proxy_batches is None`` and a gradient proxy (grad_norm, snip, fisher): the statistics that
      :meth:`training_window` accumulated from ordinary training steps since the last call (no
      extra passes). When none were accumulated (step 0), extra passes over ``batches``.
    - otherwise, extra passes over ``batches`` with every module on (the authors' way).

    Args:
        scoring, sketch_rank: how the window's statistics are held (``auto``, ``sketch`` with k =
            ``sketch_rank``, or ``exact``; :mod:`heterolora_core.search.statistics`).
        reduce_scores: maps this process's scores to the scores every process agrees on (e.g. an
            all-reduce mean under DDP), applied before selection.
        on_record: called with each :class:`Reallocation` (run records, logging).
    """

    def __init__(self, model: nn.Module, adapters: AdapterSet, proxy: str, budget: Budget,
                 ranking: str = "combined", score_norm: str = "kind", seed: int = 0,
                 proxy_batches: int | None = None, loss_fn: LossFn = default_loss,
                 reduce_scores: Callable[[dict[str, float]], dict[str, float]] | None = None,
                 on_record: Callable[[Reallocation], None] | None = None,
                 progress: Callable[[Iterable], Iterable] | None = None, scoring: str = Scoring.AUTO,
                 sketch_rank: int = DEFAULT_SKETCH_RANK):
        self.model = model
        self.adapters = adapters
        self.proxy = choose(Proxy, proxy, "proxy")
        self.ranking = choose(Ranking, ranking, "ranking")
        self.score_norm = choose(ScoreNorm, score_norm, "score normalisation")
        self.seed = int(seed)
        self.proxy_batches = proxy_batches
        self.loss_fn = loss_fn
        self.reduce_scores = reduce_scores
        self.on_record = on_record
        self.progress = progress
        self.scoring = choose(Scoring, scoring, "scoring")
        self.sketch_rank = int(sketch_rank)
        self.budget = budget
        self.costs, self.groups = adapters.costs(), adapters.groups()
        self.allocation = resolve(budget, self.costs, self.groups, adapters.config.rank)
        if self.proxy is Proxy.SNIP:
            ensure_probes(adapters, self.seed)  # the factor statistics read B's probe as they accumulate
        self.collector = self.new_statistics()
        self.history: list[Reallocation] = []
        self.search_seconds = 0.0

    def new_statistics(self) -> ScoringStatistics:
        return make_statistics(self.scoring, self.sketch_rank, self.seed, factors=self.proxy is Proxy.SNIP)

    @property
    def scores_from_training(self) -> bool:
        """True when reallocations after step 0 need no extra passes."""
        return self.proxy in GRADIENT_PROXIES and self.proxy_batches is None

    def needs_batches(self, step: int) -> bool:
        if self.proxy is Proxy.CONSTANT:
            return False
        return not (self.scores_from_training and len(self.collector) > 0)

    @contextmanager
    def training_window(self) -> Iterator[None]:
        """Wrap training steps whose gradients should feed the next reallocation's scores."""
        if not self.scores_from_training:
            yield
            return
        with self.adapters.collecting(self.collector):
            yield

    def _synchronize(self) -> None:
        """On a GPU, wait for queued kernels, so ``search_seconds`` times the search alone (not the
        training step still running when the search first reads a score)."""
        param = next(self.model.parameters(), None)
        if param is not None and param.is_cuda:
            torch.cuda.synchronize(param.device)

    def reallocate(self, step: int, batches: list[Batch] | None = None) -> Reallocation:
        """Decide from the window's statistics (or extra passes over ``batches``), switch, record."""
        self._synchronize()
        start = time.perf_counter()
        window = self.collector if self.scores_from_training and len(self.collector) > 0 else None
        record = self.decide(int(step), window, batches)
        self.collector.reset()
        self._synchronize()
        record.seconds = time.perf_counter() - start
        self.search_seconds += record.seconds
        self.history.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return record

    def decide(self, step: int, window: ScoringStatistics | None, batches: list[Batch] | None) -> Reallocation:
        """The on/off selection: the proxy's scores, then the top candidates under the budget."""
        if window is not None:
            scores = scores_from_gradients(self.proxy, self.adapters, window, self.seed)
        else:
            scores = compute_scores(self.proxy, self.model, self.adapters, batches=batches,
                                    loss_fn=self.loss_fn, seed=self.seed, progress=self.progress,
                                    scoring=self.scoring, sketch_rank=self.sketch_rank)
        if self.reduce_scores is not None:
            scores = self.reduce_scores(scores)
        # a different tie-break order at every step (the constant proxy draws a new random set)
        enabled = select(scores, self.groups, self.allocation, self.ranking, self.score_norm, self.costs,
                         seed=self.seed * 1_000_003 + step)
        self.adapters.set_enabled(enabled)
        return Reallocation(step, {n: float(s) for n, s in scores.items()}, enabled)


class RankAllocator(Reallocator):
    """Gives every candidate a rank in [r_min, r_max] under the budget, from the spectra of the
    candidates' gradients (``rule`` spectrum: :func:`~heterolora_core.search.ranks.water_fill`) or
    from the proxy's scores (``rule`` proportional); ``deal`` hands the chosen ranks to other
    candidates for the controls (:class:`~heterolora_core.vocab.RankDeal`: at random among candidates
    of equal cost, across layers within a kind, or inverted); ``init`` gradient starts each candidate's A from the
    top right singular vectors of its gradient at the first allocation (B is still zero there).

    The record's ``scores`` are each candidate's gradient energy Σσ² over its group's mean (the
    spectrum rule) or the proxy's scores; ``ranks`` are the allocation.
    """

    def __init__(self, model: nn.Module, adapters: AdapterSet, proxy: str, budget: Budget,
                 rule: RankRule = RankRule.SPECTRUM, r_min: int = 0, deal: RankDeal = RankDeal.ALLOCATED,
                 init: RankInit = RankInit.KAIMING, **kwargs):
        self.rule = choose(RankRule, rule, "rank rule")
        self.init = choose(RankInit, init, "rank init")
        self.r_min = int(r_min)
        self.deal = choose(RankDeal, deal, "rank deal")
        super().__init__(model, adapters, proxy, budget, **kwargs)
        self.r_max = adapters.config.rank
        self.unit_costs = {m.name: m.d_in + m.d_out for m in adapters.modules_in_order()}
        self.budget_params = budget_params(budget, self.costs, self.groups, self.r_max)

    def new_statistics(self) -> ScoringStatistics:
        snip = self.rule is RankRule.PROPORTIONAL and self.proxy is Proxy.SNIP
        return make_statistics(self.scoring, max(self.sketch_rank, self.adapters.config.rank), self.seed, factors=snip)

    @property
    def scores_from_training(self) -> bool:
        return self.proxy_batches is None and (self.rule is RankRule.SPECTRUM or self.proxy in GRADIENT_PROXIES)

    def needs_batches(self, step: int) -> bool:
        return not (self.scores_from_training and len(self.collector) > 0)

    def decide(self, step: int, window: ScoringStatistics | None, batches: list[Batch] | None) -> Reallocation:
        statistics = window if window is not None else collect_gradients(
            self.model, self.adapters, batches or [], self.loss_fn, self.progress, self.new_statistics())
        names = self.adapters.names()
        spectra = {n: statistics.spectrum(n)[: self.r_max].tolist() if n in statistics else [] for n in names}
        spectra = self._agreed(spectra)
        if self.rule is RankRule.SPECTRUM:
            ranks = water_fill(spectra, self.unit_costs, self.groups, self.budget_params, self.r_max, self.r_min)
            energy = normalized_spectra(spectra, self.groups)
            scores = {n: float(sum(energy[n])) for n in names}
        else:
            scores = scores_from_gradients(self.proxy, self.adapters, statistics, self.seed)
            scores = self.reduce_scores(scores) if self.reduce_scores is not None else scores
            ranks = proportional(scores, self.unit_costs, self.budget_params, self.r_max, self.r_min)
        ranks = deal(self.deal, ranks, scores, self.unit_costs, self.seed * 1_000_003 + step)
        if self.init is RankInit.GRADIENT and not self.history:
            self._start_from_gradients(statistics, ranks)
        self.adapters.set_ranks(ranks)
        return Reallocation(step, scores, [n for n in names if ranks[n] > 0], ranks=dict(ranks))

    def _agreed(self, spectra: dict[str, list[float]]) -> dict[str, list[float]]:
        """Every process's spectra averaged (flattened through ``reduce_scores``)."""
        if self.reduce_scores is None:
            return spectra
        flat = self.reduce_scores({f"{n}#{j}": v for n, values in spectra.items() for j, v in enumerate(values)})
        return {n: [flat[f"{n}#{j}"] for j in range(len(values))] for n, values in spectra.items()}

    def _start_from_gradients(self, statistics: ScoringStatistics, ranks: dict[str, int]) -> None:
        """A's first r_i rows := the top r_i right singular vectors of G, scaled to the row norm of
        the Kaiming-uniform init (1/sqrt(3)); B is zero, so the model's function is unchanged."""
        with torch.no_grad():
            for name, r in ranks.items():
                if r <= 0 or name not in statistics:
                    continue
                module = self.adapters.module(name)
                directions = statistics.directions(name, r).to(module.lora_A.device, module.lora_A.dtype)
                module.lora_A[: directions.shape[0]] = directions / math.sqrt(3.0)
