"""Causal-LM tasks (``--objective lm``): instruction fine-tuning files and GLUE as instructions.

Both train the model's own next-token loss on the answer tokens only (prompt and padding labelled
-100, :mod:`heterolora_core.tasks.instructions`), so the gradients every proxy scores from are the
completion tokens' gradients. Both evaluate every candidate answer's log-likelihood
(:mod:`heterolora_core.tasks.lm_scoring`):

* ``sft``: completion loss per token and perplexity, and choice accuracy where rows have choices;
  the headline metric is ``choice_accuracy`` when every dev row has choices, else ``perplexity``
  (lower is better).
* GLUE as instructions: the label words are the choices; the task's GLUE metric (accuracy, F1,
  Matthews correlation) from the most likely label word is the headline, completion loss and
  perplexity come with it. A GLUE prompt too long for ``max_length`` loses its first tokens
  (the end of the prompt and the answer always fit); an SFT prompt too long is refused.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

from heterolora_core.tasks.base import PreparedTask, Task, hold_out
from heterolora_core.tasks.glue_prompts import GLUE_PROMPTS, glue_instruction
from heterolora_core.tasks.generation import generate
from heterolora_core.tasks.instructions import CausalCollator, InstructionExample, encode, prompt_ids, read_sft_file
from heterolora_core.tasks.lm_scoring import (CHOICE_ACCURACY, PERPLEXITY, EvalRows, lm_metrics,
                                              row_log_likelihoods)
from heterolora_core.training.data import TASKS, DataError, Example, check_task_source, ensure_pad_token, load_task
from heterolora_core.training.metrics import compute_metrics
from heterolora_core.training.models import load_causal_lm, load_tokenizer, meta_causal_lm
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import Objective


class InstructionTask(Task):
    """What the two causal-LM tasks share: the model, the collator, the scoring."""

    objective = Objective.LM
    cut_prompt = False

    def num_labels(self, config: RunConfig) -> int:
        return 0

    def meta_model(self, config: RunConfig):
        return meta_causal_lm(config.model)

    def load_model(self, config: RunConfig, prepared: PreparedTask, torch_dtype=None):
        model = load_causal_lm(config.model, torch_dtype=torch_dtype)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = prepared.tokenizer.pad_token_id
        return model

    def inference_model(self, config: RunConfig, summary):
        return load_causal_lm(config.model)

    @abstractmethod
    def prompt_example(self, text: str, text_pair: str | None, chat: bool) -> InstructionExample:
        """``text`` (and ``text_pair``) as the prompt of an example (its answer a placeholder)."""

    def predict(self, loaded, text: str, text_pair: str | None, max_new_tokens: int) -> dict[str, Any]:
        """``{"completion": text, "new_tokens": n}``: the greedy completion of the prompt, at most
        ``max_new_tokens`` tokens, stopping at EOS (GLUE as instructions adds ``label`` and
        ``label_name``, the label word the model finds most likely)."""
        tokenizer, config = loaded.tokenizer, loaded.config
        chat = getattr(loaded.summary, "chat_prompts", None)
        if chat is None:  # a record without the field: the tokenizer decides, as in training
            chat = bool(getattr(tokenizer, "chat_template", None))
        example = self.prompt_example(text, text_pair, chat)
        ids = prompt_ids(example, tokenizer)
        if len(ids) > config.max_length:
            raise ValueError(f"the prompt is {len(ids)} tokens, longer than the run's max-length {config.max_length}")
        return {**generate(loaded.model, tokenizer, ids, max_new_tokens), **self.choose(loaded, example)}

    def choose(self, loaded, example: InstructionExample) -> dict[str, Any]:
        """Extra fields of a prediction (none by default)."""
        return {}

    @abstractmethod
    def examples(self, config: RunConfig, tokenizer) -> tuple[list[InstructionExample], dict[str, list[InstructionExample]]]:
        """Training examples and dev examples by split (primary first), all of them (``prepare``
        holds rows out and applies the limits)."""

    def glue_task(self) -> str | None:
        return None

    def prepare(self, config: RunConfig) -> PreparedTask:
        tokenizer = load_tokenizer(config.model)
        ensure_pad_token(tokenizer)
        train, dev = hold_out(*self.examples(config, tokenizer), config.heldout_rows)
        train_rows = [encode(e, tokenizer, config.max_length, self.cut_prompt) for e in train[: config.train_limit or None]]
        rows = EvalRows()
        for split, examples in dev.items():
            rows.add(split, examples[: config.dev_limit or None], tokenizer, config.max_length, self.cut_prompt)
        metric = self.headline(dev)
        glue = self.glue_task()
        glue_metric = (lambda p, r: compute_metrics(glue, p, r)) if glue else None

        def compute(eval_pred) -> dict[str, float]:
            return lm_metrics(eval_pred.predictions, rows, glue_metric)

        split = f"{next(iter(dev))}_" if len(dev) > 1 else ""
        chat = all(e.chat for e in train) if train else bool(getattr(tokenizer, "chat_template", None))
        return PreparedTask(tokenizer, train_rows, rows.rows, CausalCollator(tokenizer.pad_token_id), metric,
                            f"eval_{split}{metric}", compute, preprocess_logits=row_log_likelihoods,
                            eval_batch_size=config.batch_size,
                            dev_examples=len(next(iter(dev.values()))[: config.dev_limit or None]),
                            summary={"num_labels": None, "label_names": None, "is_regression": False,
                                     "chat_prompts": chat})

    @abstractmethod
    def headline(self, dev: dict[str, Sequence[InstructionExample]]) -> str:
        """The headline metric key."""


class SftTask(InstructionTask):
    """``--task sft --train-file T.jsonl --dev-file D.jsonl``."""

    def _files(self, config: RunConfig) -> tuple[list[InstructionExample], list[InstructionExample]]:
        if not (config.train_file and config.dev_file):
            raise DataError("task sft needs both --train-file and --dev-file (JSON lines)")
        return read_sft_file(config.train_file), read_sft_file(config.dev_file)

    def check(self, config: RunConfig) -> None:
        self._files(config)

    def train_count(self, config: RunConfig) -> int:
        return len(self._files(config)[0])

    def check_lengths(self, config: RunConfig) -> None:
        train, dev = self._files(config)
        tokenizer = load_tokenizer(config.model)
        for example in (*train, *dev):  # every row: a bad line 900 is reported now, not mid-run
            for text in example.candidates():
                encode(example.with_answer(text), tokenizer, config.max_length)

    def examples(self, config: RunConfig, tokenizer):
        train, dev = self._files(config)
        return train, {"dev": dev}

    def prompt_example(self, text: str, text_pair: str | None, chat: bool) -> InstructionExample:
        if text_pair is not None:
            raise ValueError("an sft run takes one prompt: give --text only")
        return InstructionExample((("user", text), ("assistant", "")), chat)

    def headline(self, dev) -> str:
        every = all(e.choices is not None for examples in dev.values() for e in examples)
        return CHOICE_ACCURACY if every else PERPLEXITY


class GlueInstructionTask(InstructionTask):
    """A GLUE classification task posed as instructions, label words as answers."""

    cut_prompt = True

    def __init__(self, task: str):
        if task not in GLUE_PROMPTS:
            raise DataError(f"unknown task {task!r} for --objective lm; valid ids: sft, {', '.join(GLUE_PROMPTS)}")
        self.task = task

    def check(self, config: RunConfig) -> None:
        check_task_source(self.task)

    def train_count(self, config: RunConfig) -> int:
        return len(load_task(self.task).train)

    def glue_task(self) -> str:
        return self.task

    def examples(self, config: RunConfig, tokenizer):
        data = load_task(self.task)
        chat = bool(getattr(tokenizer, "chat_template", None))
        train = [glue_instruction(self.task, e, chat) for e in data.train]  # 67k SST-2 rows: 0.2 s
        dev = {split: [glue_instruction(self.task, e, chat) for e in rows] for split, rows in data.dev.items()}
        return train, dev

    def headline(self, dev) -> str:
        return TASKS[self.task].metric

    def prompt_example(self, text: str, text_pair: str | None, chat: bool) -> InstructionExample:
        pair_task = GLUE_PROMPTS[self.task].second is not None
        if (text_pair is not None) != pair_task:
            takes = "two texts: --text and --text-pair" if pair_task else "one text: --text only"
            raise ValueError(f"task {self.task} takes {takes}")
        return glue_instruction(self.task, Example(text, text_pair, 0), chat)

    def choose(self, loaded, example: InstructionExample) -> dict[str, Any]:
        """The label whose word is the most likely answer."""
        import torch

        rows = [encode(example.with_answer(word), loaded.tokenizer, loaded.config.max_length, cut_prompt=True)
                for word in example.candidates()]
        batch = CausalCollator(loaded.tokenizer.pad_token_id)(rows)
        with torch.no_grad():
            scores = row_log_likelihoods(loaded.model(**batch).logits, batch["labels"])[:, 0]
        label = int(scores.argmax())
        names = TASKS[self.task].label_names
        return {"label": label, "label_name": names[label] if names else str(label),
                "label_word": example.candidates()[label].strip()}
