"""Scoring a causal LM on instruction examples: completion loss, perplexity, choice accuracy.

Evaluation rows: every candidate answer of every dev example is one row (the answer itself, or each
of the example's choices / label words), in order; :class:`EvalRows` remembers which example,
candidate and dev split each row is. The Trainer runs the model over them and
:func:`row_log_likelihoods` reduces each row's logits, as soon as they are computed, to two numbers
(so a B × T × V tensor is never kept):

    ll_i = Σ_t log p(y_t | y_<t)   over the row's target tokens t (labels ≠ -100, shifted by one)
    n_i  = the number of those tokens

From these, per dev split (keys prefixed with the split when there are several)::

    completion_loss = -Σ ll / Σ n    over the true answers' rows (nats per completion token)
    perplexity      = exp(completion_loss)                              lower is better, both
    choice_accuracy = share of examples with choices whose argmax_j ll_j is the true answer
    predictions     = argmax_j ll_j per example (GLUE as instructions: the label id)

Ties go to the first candidate. The Trainer's own ``eval_loss`` is the model's loss averaged over
every evaluation row, the wrong candidates' rows included; ``completion_loss`` is the one to read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from heterolora_core.tasks.instructions import IGNORE_INDEX, InstructionExample, encode

COMPLETION_LOSS = "completion_loss"
PERPLEXITY = "perplexity"
CHOICE_ACCURACY = "choice_accuracy"


def row_log_likelihoods(logits, labels):
    """(B, T, V) logits and (B, T) labels -> (B, 2) float tensor of (ll_i, n_i) (module docstring)."""
    import torch

    if isinstance(logits, tuple):
        logits = logits[0]
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_ll = (picked - torch.logsumexp(logits, dim=-1)) * mask
    return torch.stack([token_ll.sum(dim=1), mask.sum(dim=1).to(token_ll.dtype)], dim=1)


@dataclass
class EvalRows:
    """Dev examples expanded into one row per candidate answer, and who each row is."""

    rows: list[dict[str, list[int]]] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    example: list[int] = field(default_factory=list)  # index within its split
    candidate: list[int] = field(default_factory=list)
    is_answer: list[bool] = field(default_factory=list)
    has_choices: dict[tuple[str, int], bool] = field(default_factory=dict)
    answers: dict[tuple[str, int], int] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)

    def add(self, split: str, examples: Sequence[InstructionExample], tokenizer, max_length: int,
            cut_prompt: bool = False) -> None:
        self.splits.append(split)
        for i, example in enumerate(examples):
            self.has_choices[(split, i)] = example.choices is not None
            self.answers[(split, i)] = example.answer
            for j, text in enumerate(example.candidates()):
                self.rows.append(encode(example.with_answer(text), tokenizer, max_length, cut_prompt))
                self.split.append(split)
                self.example.append(i)
                self.candidate.append(j)
                self.is_answer.append(j == example.answer)


def lm_metrics(scores: np.ndarray, rows: EvalRows,
               glue_metric: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None) -> dict[str, float]:
    """The metrics of the module docstring from ``scores`` (N × 2: ll, n per row of ``rows``);
    ``glue_metric(predictions, references)`` adds the GLUE task's own metrics."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(rows.rows), 2):
        raise ValueError(f"expected {len(rows.rows)} scored rows, got shape {scores.shape}")
    out: dict[str, float] = {}
    for split in rows.splits:
        prefix = f"{split}_" if len(rows.splits) > 1 else ""
        for key, value in _split_metrics(scores, rows, split, glue_metric).items():
            out[prefix + key] = value
    return out


def _split_metrics(scores, rows: EvalRows, split: str, glue_metric) -> dict[str, float]:
    ll_sum = n_sum = 0.0
    best: dict[int, tuple[float, int]] = {}
    for r, (s, i, j, true) in enumerate(zip(rows.split, rows.example, rows.candidate, rows.is_answer)):
        if s != split:
            continue
        ll, n = scores[r]
        if true:
            ll_sum, n_sum = ll_sum + ll, n_sum + n
        if i not in best or ll > best[i][0]:
            best[i] = (ll, j)
    loss = -ll_sum / n_sum if n_sum else float("nan")
    out = {COMPLETION_LOSS: float(loss), PERPLEXITY: float(math.exp(min(loss, 700.0)))}
    chosen = [i for i in sorted(best) if rows.has_choices[(split, i)]]
    if chosen:
        correct = sum(best[i][1] == rows.answers[(split, i)] for i in chosen)
        out[CHOICE_ACCURACY] = correct / len(chosen)
    if glue_metric is not None:
        predictions = np.array([best[i][1] for i in sorted(best)])
        references = np.array([rows.answers[(split, i)] for i in sorted(best)])
        out.update(glue_metric(predictions, references))
    return out
