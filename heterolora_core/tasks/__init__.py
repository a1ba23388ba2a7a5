"""Tasks: one home for what a run learns and how it is scored.

A task gives a run its data, how an example becomes model input (tokenised rows and their
collator), what model it trains (a classifier with a head, or a causal LM with its own
next-token loss), and its metrics with their direction (:func:`heterolora_core.vocab.higher_is_better`).
The trainer, the planner and inference ask the task (:func:`heterolora_core.tasks.registry.task_for`)
instead of branching on its kind.

    task id                      --objective   what it is                                    model
    cola sst2 mrpc stsb qqp      classify      GLUE classification / regression              head
      mnli qnli rte wnli
    custom (--train-file ...)    classify      own classification files (text, label)        head
    cola sst2 mrpc qqp mnli      lm            GLUE as instructions: a chat prompt stating   causal LM
      qnli rte wnli                            the task, the label as a word, the GLUE
                                               metric from the label words' likelihoods
    sft (--train-file T.jsonl    lm            instruction fine-tuning: prompt/completion   causal LM
      --dev-file D.jsonl)                      or messages rows, loss on completion tokens

Refused pairs (one line, before anything is loaded): ``sft`` under ``classify`` (instruction data
has no class labels); ``stsb`` under ``lm`` (a similarity score in [0, 5] is regression, and the
label-word scoring of ``lm`` only ranks words: STS-B trains with ``--objective classify``'s
regression head); ``custom`` under ``lm`` (own classification files have no instruction wording:
write them as SFT rows).

This module is light (standard library and the task vocabulary only).
"""
from __future__ import annotations

from heterolora_core.training.data import CUSTOM_TASK, TASKS
from heterolora_core.vocab import Objective, choose

SFT_TASK = "sft"
#: GLUE tasks that can be posed as instructions (every classification task; STS-B is regression).
LM_GLUE_TASKS = tuple(t for t, spec in TASKS.items() if not spec.is_regression)


def check_objective(task: str, objective: str) -> Objective:
    """The objective of ``task``, or ValueError with one line for a pair that cannot train."""
    chosen = choose(Objective, objective, "objective")
    if task == SFT_TASK and chosen is Objective.CLASSIFY:
        raise ValueError("task sft is instruction data (prompt/completion or messages rows) for a causal LM; "
                         "add --objective lm")
    if chosen is Objective.LM and task == CUSTOM_TASK:
        raise ValueError("--objective lm takes GLUE tasks or --task sft; own classification files train with "
                         "--objective classify (or write them as SFT rows)")
    if chosen is Objective.LM and task in TASKS and task not in LM_GLUE_TASKS:
        raise ValueError(f"task {task} is regression: --objective lm scores label words and does not support it; "
                         f"use --objective classify")
    return chosen
