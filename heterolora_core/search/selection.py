"""Selection: a pure function from per-module scores to the enabled set (torch-free).

combined ranking: the top ``allocation.total_on`` of one joint ranking, after the two groups'
scores are put on one scale (``score_norm``); separated ranking: the top ``lora_on`` LoRA and,
independently, the top ``shortcut_on`` shortcut candidates (method doc, section 6). Ties are broken
by a random order drawn from a seed, so the ``constant`` proxy selects at random.
"""
from __future__ import annotations

import math
import random
from typing import Mapping

from heterolora_core.search.budget import Allocation
from heterolora_core.vocab import Group, Ranking, ScoreNorm, choose


def normalize_scores(scores: Mapping[str, float], groups: Mapping[str, str],
                     score_norm: str = ScoreNorm.PER_GROUP) -> dict[str, float]:
    """``raw``: unchanged (the authors compare LoRA and shortcut scores raw). ``kind`` (per group):
    each score divided by the mean |score| of its group, so both groups are on one scale.
    Non-finite scores become -inf (never preferred)."""
    score_norm = choose(ScoreNorm, score_norm, "score normalisation")
    clean = {n: (float(s) if math.isfinite(float(s)) else -math.inf) for n, s in scores.items()}
    if score_norm is ScoreNorm.RAW:
        return clean
    out = dict(clean)
    for group in Group:
        members = [n for n in clean if groups[n] == group and math.isfinite(clean[n])]
        mean = sum(abs(clean[n]) for n in members) / len(members) if members else 0.0
        if mean > 0:
            for n in members:
                out[n] = clean[n] / mean
    return out


def select(scores: Mapping[str, float], groups: Mapping[str, str], allocation: Allocation,
           ranking: str = Ranking.COMBINED, score_norm: str = ScoreNorm.PER_GROUP,
           costs: Mapping[str, int] | None = None, seed: int = 0) -> list[str]:
    """The enabled set for ``scores``, in the order of ``scores``' keys.

    With ``allocation.max_params`` and ``costs``, a module whose cost no longer fits is skipped.
    """
    ranking = choose(Ranking, ranking, "ranking")
    names = list(scores)
    normed = normalize_scores(scores, groups, score_norm)
    rng = random.Random(seed)
    tiebreak = {n: rng.random() for n in names}
    order = sorted(names, key=lambda n: (-normed[n], tiebreak[n]))
    quota = {Group.LORA: allocation.lora_on, Group.SHORTCUT: allocation.shortcut_on}
    taken = {Group.LORA: 0, Group.SHORTCUT: 0}
    chosen: set[str] = set()
    spent = 0
    for name in order:
        group = Group(groups[name])
        if ranking is Ranking.COMBINED and len(chosen) >= allocation.total_on:
            break
        if ranking is Ranking.SEPARATED and taken[group] >= quota[group]:
            continue
        cost = costs[name] if costs is not None else 0
        if allocation.max_params is not None and costs is not None and spent + cost > allocation.max_params:
            continue
        chosen.add(name)
        taken[group] += 1
        spent += cost
    return [n for n in names if n in chosen]
