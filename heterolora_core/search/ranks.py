"""Rank allocation: a rank per candidate under an exact parameter budget (torch-free).

Every candidate i of rank r_i trains r_i · c_i parameters, c_i = d_in + d_out. A budget P (the
count of a uniform LoRA configuration) is spent on the candidates' ranks, 0 ≤ r_min ≤ r_i ≤ r_max
(0 = off), with Σ r_i c_i ≤ P, as close to P as the costs allow.

:func:`water_fill` is the zero-cost allocator: a rank-r update of candidate i can capture at most
``Σ_{j≤r} σ_ij²`` of its gradient's energy (σ_ij: the singular values of G_i = ∇ΔW L, Eckart–Young),
so one more rank is worth σ_{i,r+1}² for c_i parameters. Ranks go, one at a time, to the candidate
with the largest ``σ²_{i,r_i+1} / c_i``; since the σ_ij decrease, this greedy order is optimal for
the captured energy among allocations that cost no more (for equal costs exactly). The spectra of
the two groups (LoRA, shortcut) are put on one scale first, as the on/off search's per-group
normalisation does: each spectrum is divided by its group's mean total energy.

:func:`proportional` is the simpler rule: ranks proportional to a score, rounded to the budget.
:func:`shuffled` is the control: the same ranks dealt to other candidates at random (within
candidates of equal cost, so the budget stays exact); :func:`shuffled_across_layers` keeps each
module kind's ranks and shuffles only their layers; :func:`inverted` gives the most rank to the
lowest scores (:func:`deal` picks one by :class:`~heterolora_core.vocab.RankDeal`).
"""
from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping, Sequence

from heterolora_core.vocab import Group, ModuleName, RankDeal, module_sort_key


def normalized_spectra(spectra: Mapping[str, Sequence[float]], groups: Mapping[str, str]) -> dict[str, list[float]]:
    """Squared singular values, each divided by the mean total energy Σσ² of the candidate's group."""
    energy = {n: [float(s) ** 2 for s in spectrum] for n, spectrum in spectra.items()}
    out = {}
    for group in Group:
        members = [n for n in energy if groups[n] == group]
        mean = sum(sum(energy[n]) for n in members) / len(members) if members else 0.0
        for n in members:
            out[n] = [e / mean for e in energy[n]] if mean > 0 else list(energy[n])
    return out


def water_fill(spectra: Mapping[str, Sequence[float]], costs: Mapping[str, int], groups: Mapping[str, str],
               budget: int, r_max: int, r_min: int = 0) -> dict[str, int]:
    """Ranks maximising the captured (group-normalised) gradient energy under ``budget``.

    ``spectra[n]``: candidate n's singular values, largest first (missing ones count as 0);
    ``costs[n]``: parameters per unit of rank (d_in + d_out). Every candidate first gets ``r_min``;
    ValueError when that alone exceeds the budget. Ties go to the candidate listed first.
    """
    names = list(spectra)
    ranks = {n: r_min for n in names}
    spent = sum(r_min * costs[n] for n in names)
    if spent > budget:
        raise ValueError(f"rank-min {r_min} on every candidate costs {spent:,}, over the budget of {budget:,}")
    energy = normalized_spectra(spectra, groups)

    def gain(n: str) -> float:
        r = ranks[n]
        return (energy[n][r] if r < len(energy[n]) else 0.0) / costs[n]

    heap = [(-gain(n), i, n) for i, n in enumerate(names) if ranks[n] < r_max]
    heapq.heapify(heap)
    while heap:
        _, i, n = heapq.heappop(heap)
        if spent + costs[n] > budget:
            continue  # this one no longer fits; a cheaper candidate still may
        ranks[n] += 1
        spent += costs[n]
        if ranks[n] < r_max:
            heapq.heappush(heap, (-gain(n), i, n))
    return _fill_exactly(ranks, energy, costs, budget, r_max, r_min)


def _fill_exactly(ranks: dict[str, int], energy: Mapping[str, Sequence[float]], costs: Mapping[str, int],
                  budget: int, r_max: int, r_min: int) -> dict[str, int]:
    """Spend what the greedy pass left over when mixed costs allow it: trade one rank of some
    candidate for m ranks of candidates of another cost with m·c = leftover + c_removed, choosing
    the trade that loses the least energy (e.g. one FFN rank, 1920, for three attention ranks, 3 ×
    768, to use a leftover of 384). Ranks are unchanged when no trade spends the budget exactly."""
    leftover = budget - spent(ranks, costs)
    if leftover <= 0:
        return ranks
    at = lambda n, r: energy[n][r] if r < len(energy[n]) else 0.0  # noqa: E731  (gain of rank r + 1)
    best: tuple[float, dict[str, int]] | None = None
    for removed in [n for n in ranks if ranks[n] > r_min]:
        for cost in sorted(set(costs.values())):
            needed, rest = divmod(leftover + costs[removed], cost)
            if rest or needed == 0:
                continue
            trial = dict(ranks)
            trial[removed] -= 1
            change = -at(removed, trial[removed])
            for _ in range(needed):
                options = [n for n in trial if costs[n] == cost and trial[n] < r_max and n != removed]
                if not options:
                    break
                pick = max(options, key=lambda n: at(n, trial[n]))
                change += at(pick, trial[pick])
                trial[pick] += 1
            else:
                if best is None or change > best[0]:
                    best = (change, trial)
    return best[1] if best is not None else ranks


def proportional(scores: Mapping[str, float], costs: Mapping[str, int], budget: int, r_max: int,
                 r_min: int = 0) -> dict[str, int]:
    """Ranks proportional to ``scores`` (non-negative): r_i ≈ t · s_i with t chosen so that the
    budget is spent, capped to [r_min, r_max], then topped up by largest remainder."""
    names = list(scores)
    weights = {n: max(0.0, float(scores[n])) if math.isfinite(float(scores[n])) else 0.0 for n in names}
    spend = lambda t: sum(min(r_max, max(r_min, int(t * weights[n]))) * costs[n] for n in names)  # noqa: E731
    low, high = 0.0, 1.0
    while spend(high) < budget and high < 1e18:
        high *= 2
    for _ in range(100):  # bisection on the scale t
        mid = (low + high) / 2
        low, high = (mid, high) if spend(mid) <= budget else (low, mid)
    ranks = {n: min(r_max, max(r_min, int(low * weights[n]))) for n in names}
    spent = sum(ranks[n] * costs[n] for n in names)
    for n in sorted(names, key=lambda n: -(low * weights[n] - int(low * weights[n]))):
        if ranks[n] < r_max and spent + costs[n] <= budget:
            ranks[n] += 1
            spent += costs[n]
    if spent > budget:
        raise ValueError(f"rank-min {r_min} on every candidate costs {spent:,}, over the budget of {budget:,}")
    return ranks


def shuffled(ranks: Mapping[str, int], costs: Mapping[str, int], seed: int) -> dict[str, int]:
    """The same ranks dealt at random among candidates of equal cost (the rank histogram and the
    parameter count are kept exactly)."""
    rng = random.Random(seed)
    out = dict(ranks)
    for cost in sorted(set(costs.values())):
        members = [n for n in ranks if costs[n] == cost]
        values = [ranks[n] for n in members]
        rng.shuffle(values)
        out.update(zip(members, values))
    return out


def shuffled_across_layers(ranks: Mapping[str, int], costs: Mapping[str, int], seed: int) -> dict[str, int]:
    """The same ranks shuffled across layers within each module kind (and cost): every kind keeps
    its multiset of ranks, so the mix of kinds and the parameter count are exact; which layer gets
    which rank is random. Tells "which kinds" from "which layers"."""
    rng = random.Random(seed)
    out = dict(ranks)
    classes: dict[tuple, list[str]] = {}
    for name in ranks:
        parsed = ModuleName.parse(name)
        classes.setdefault((parsed.group.value, parsed.kind, costs[name]), []).append(name)
    for key in sorted(classes):
        members = sorted(classes[key], key=module_sort_key)
        values = [ranks[n] for n in members]
        rng.shuffle(values)
        out.update(zip(members, values))
    return out


def inverted(ranks: Mapping[str, int], scores: Mapping[str, float], costs: Mapping[str, int]) -> dict[str, int]:
    """The same ranks, the most to the lowest scores: within each class of equal cost the ranks,
    largest first, go to the candidates in ascending order of score (ties by name), so the rank
    histogram and the parameter count are exact and the order is reversed. Does the score carry
    signal at all?"""
    out = dict(ranks)
    for cost in sorted(set(costs[n] for n in ranks)):
        members = sorted((n for n in ranks if costs[n] == cost), key=lambda n: (float(scores.get(n, 0.0)), n))
        out.update(zip(members, sorted((ranks[n] for n in members), reverse=True)))
    return out


def deal(how: RankDeal, ranks: Mapping[str, int], scores: Mapping[str, float], costs: Mapping[str, int],
         seed: int) -> dict[str, int]:
    """``ranks`` dealt as :class:`~heterolora_core.vocab.RankDeal` says (``allocated``: unchanged)."""
    if how is RankDeal.RANDOM:
        return shuffled(ranks, costs, seed)
    if how is RankDeal.LAYERS:
        return shuffled_across_layers(ranks, costs, seed)
    if how is RankDeal.INVERTED:
        return inverted(ranks, scores, costs)
    return dict(ranks)


def spent(ranks: Mapping[str, int], costs: Mapping[str, int]) -> int:
    """Σ r_i · c_i."""
    return sum(int(r) * costs[n] for n, r in ranks.items())
