"""Selection (a pure function from scores to the enabled set) and the reallocator.

Static HeteroLoRA calls :meth:`Reallocator.reallocate` once before training; dynamic HeteroLoRA
calls it every fraction f of an epoch. Each call scores every candidate, selects, switches, and
records ``step``, ``scores`` and ``enabled``.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from .adapters import LORA, SHORTCUT, AdapterSet
from .budget import Allocation, Budget, resolve
from .proxies import (GRADIENT_PROXIES, Batch, GradientCollector, LossFn, check_proxy, compute_scores,
                      default_loss, scores_from_gradients)

RANKINGS = ("combined", "separated")
SCORE_NORMS = ("kind", "raw")


def normalize_scores(scores: Mapping[str, float], groups: Mapping[str, str], score_norm: str = "kind") -> dict[str, float]:
    """``raw``: unchanged (the authors compare LoRA and shortcut scores raw). ``kind``: each score
    divided by the mean score of its group (LoRA or shortcut), so both groups are on one scale.
    Non-finite scores become -inf (never preferred)."""
    if score_norm not in SCORE_NORMS:
        raise ValueError(f"unknown score normalisation {score_norm!r}; choose from {', '.join(SCORE_NORMS)}")
    clean = {n: (float(s) if math.isfinite(float(s)) else -math.inf) for n, s in scores.items()}
    if score_norm == "raw":
        return clean
    out = dict(clean)
    for group in (LORA, SHORTCUT):
        members = [n for n in clean if groups[n] == group and math.isfinite(clean[n])]
        mean = sum(abs(clean[n]) for n in members) / len(members) if members else 0.0
        if mean > 0:
            for n in members:
                out[n] = clean[n] / mean
    return out


def select(scores: Mapping[str, float], groups: Mapping[str, str], allocation: Allocation,
           ranking: str = "combined", score_norm: str = "kind", costs: Mapping[str, int] | None = None,
           seed: int = 0) -> list[str]:
    """The enabled set for ``scores``, in the order of ``scores``' keys.

    combined: the top ``allocation.total_on`` of one joint ranking (after ``score_norm``);
    separated: the top ``lora_on`` LoRA and, independently, the top ``shortcut_on`` shortcuts.
    Ties are broken by a random order drawn from ``seed``. With ``allocation.max_params`` and
    ``costs``, a module whose cost no longer fits is skipped.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}; choose from {', '.join(RANKINGS)}")
    names = list(scores)
    normed = normalize_scores(scores, groups, score_norm)
    rng = random.Random(seed)
    tiebreak = {n: rng.random() for n in names}
    order = sorted(names, key=lambda n: (-normed[n], tiebreak[n]))
    quota = {LORA: allocation.lora_on, SHORTCUT: allocation.shortcut_on}
    taken = {LORA: 0, SHORTCUT: 0}
    chosen: set[str] = set()
    spent = 0
    for name in order:
        group = groups[name]
        if ranking == "combined" and len(chosen) >= allocation.total_on:
            break
        if ranking == "separated" and taken[group] >= quota[group]:
            continue
        cost = costs[name] if costs is not None else 0
        if allocation.max_params is not None and costs is not None and spent + cost > allocation.max_params:
            continue
        chosen.add(name)
        taken[group] += 1
        spent += cost
    return [n for n in names if n in chosen]


@dataclass
class Reallocation:
    """One reallocation: the step it happened after, every score, the enabled set."""

    step: int
    scores: dict[str, float]
    enabled: list[str]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class Reallocator:
    """Scores, selects, switches and records; a training loop calls it every fraction f of an epoch.

    Scoring sources, in order of preference:
    - ``proxy_batches is None`` and a gradient proxy (grad_norm, snip, fisher): the statistics that
      :meth:`training_window` accumulated from ordinary training steps since the last call (no
      extra passes). When none were accumulated (step 0), extra passes over ``batches``.
    - otherwise, extra passes over ``batches`` with every module on (the authors' way).

    Args:
        reduce_scores: maps this process's scores to the scores every process agrees on (e.g. an
            all-reduce mean under DDP), applied before selection.
        on_record: called with each :class:`Reallocation` (run records, logging).
    """

    def __init__(self, model: nn.Module, adapters: AdapterSet, proxy: str, budget: Budget,
                 ranking: str = "combined", score_norm: str = "kind", seed: int = 0,
                 proxy_batches: int | None = None, loss_fn: LossFn = default_loss,
                 reduce_scores: Callable[[dict[str, float]], dict[str, float]] | None = None,
                 on_record: Callable[[Reallocation], None] | None = None,
                 progress: Callable[[Iterable], Iterable] | None = None):
        self.model, self.adapters = model, adapters
        self.proxy = check_proxy(proxy)
        if ranking not in RANKINGS:
            raise ValueError(f"unknown ranking {ranking!r}; choose from {', '.join(RANKINGS)}")
        normalize_scores({}, {}, score_norm)  # validates the name
        self.ranking, self.score_norm, self.seed = ranking, score_norm, int(seed)
        self.proxy_batches = proxy_batches
        self.loss_fn, self.reduce_scores, self.on_record, self.progress = loss_fn, reduce_scores, on_record, progress
        self.costs, self.groups = adapters.costs(), adapters.groups()
        self.allocation = resolve(budget, self.costs, self.groups, adapters.config.rank)
        self.collector = GradientCollector()
        self.history: list[Reallocation] = []
        self.search_seconds = 0.0

    @property
    def scores_from_training(self) -> bool:
        """True when reallocations after step 0 need no extra passes."""
        return self.proxy in GRADIENT_PROXIES and self.proxy_batches is None

    def needs_batches(self, step: int) -> bool:
        if self.proxy == "constant":
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
        self._synchronize()
        start = time.perf_counter()
        if self.scores_from_training and len(self.collector) > 0:
            scores = scores_from_gradients(self.proxy, self.adapters, self.collector, self.seed)
        else:
            scores = compute_scores(self.proxy, self.model, self.adapters, batches=batches,
                                    loss_fn=self.loss_fn, seed=self.seed, progress=self.progress)
        self.collector.reset()
        if self.reduce_scores is not None:
            scores = self.reduce_scores(scores)
        # a different tie-break order at every step (the constant proxy draws a new random set)
        enabled = select(scores, self.groups, self.allocation, self.ranking, self.score_norm, self.costs,
                         seed=self.seed * 1_000_003 + int(step))
        self.adapters.set_enabled(enabled)
        self._synchronize()
        seconds = time.perf_counter() - start
        self.search_seconds += seconds
        record = Reallocation(int(step), {n: float(s) for n, s in scores.items()}, enabled, seconds)
        self.history.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return record

