"""The task interface: what the trainer, the planner and inference ask of a task.

A :class:`Task` checks a run's data before anything heavy is loaded (:meth:`Task.check`), loads and
tokenises it (:meth:`Task.prepare`, giving a :class:`PreparedTask`), loads the model it trains
(:meth:`Task.load_model`: a classifier with a fresh head, or a causal LM) and gives the model's
structure on the meta device for budgets (:meth:`Task.meta_model`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import Objective, higher_is_better

#: The evaluation split of a run with ``heldout_rows``: the training split's last rows.
HELDOUT_SPLIT = "heldout"

Row = TypeVar("Row")


def hold_out(train: Sequence[Row], dev: dict[str, Sequence[Row]], rows: int | None
             ) -> tuple[Sequence[Row], dict[str, Sequence[Row]]]:
    """A run's training and evaluation examples with ``rows`` held out of the training split.

    ``rows`` None: ``(train, dev)`` unchanged. Otherwise ``(train[:-rows], {"heldout": train[-rows:]})``:
    the run trains on all but the training split's last ``rows`` examples and is scored on those, so a
    choice made by its score (a learning rate, say) never looks at the dev split. ``train_limit`` and
    ``dev_limit`` apply afterwards, to each part. ValueError (one line) when nothing would be left to
    train on.
    """
    if not rows:
        return train, dev
    check_hold_out(len(train), rows)
    return train[:-rows], {HELDOUT_SPLIT: train[-rows:]}


def check_hold_out(train_rows: int, rows: int | None) -> None:
    """ValueError (one line) when holding ``rows`` out of ``train_rows`` leaves nothing to train on."""
    if rows and rows >= train_rows:
        raise ValueError(f"heldout-rows {rows:,} leaves no training rows (the training split has {train_rows:,})")


@dataclass
class PreparedTask:
    """A run's data, tokenised, and how it is scored.

    ``eval_dataset``: one split's rows, or rows by split name (the Trainer evaluates each).
    ``compute_metrics`` / ``preprocess_logits``: the Trainer's hooks (the latter None for a task
    whose logits are small). ``metric_name`` is the headline key of ``compute_metrics``,
    ``metric_key`` the Trainer's evaluation key of it (``eval_`` and, with several dev splits, the
    primary split). ``summary`` holds the task's fields of the run's summary.
    """

    tokenizer: Any
    train_rows: list[dict[str, Any]]
    eval_dataset: Any
    collator: Callable
    metric_name: str
    metric_key: str
    compute_metrics: Callable
    preprocess_logits: Callable | None = None
    eval_batch_size: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    dev_examples: int | None = None  # when evaluation rows are not examples (one row per candidate answer)

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric_name)

    @property
    def dev_rows(self) -> int | None:
        """Dev examples evaluated (the primary split's; None for several splits of rows)."""
        if self.dev_examples is not None:
            return self.dev_examples
        return len(self.eval_dataset) if isinstance(self.eval_dataset, list) else None


class Task(ABC):
    """One task of one objective (see :mod:`heterolora_core.tasks`)."""

    objective: Objective

    @abstractmethod
    def check(self, config: RunConfig) -> None:
        """Every check of the run's data that can be made before the model's weights load
        (DataError / ValueError with one line)."""

    def check_lengths(self, config: RunConfig) -> None:
        """Checks that need the model's tokenizer (after the model itself is checked); none by default."""

    @abstractmethod
    def prepare(self, config: RunConfig) -> PreparedTask:
        """Read, check and tokenise the data."""

    @abstractmethod
    def load_model(self, config: RunConfig, prepared: PreparedTask, torch_dtype=None):
        """The model to train, freshly loaded."""

    @abstractmethod
    def meta_model(self, config: RunConfig):
        """The model's structure on the meta device (shapes only)."""

    @abstractmethod
    def train_count(self, config: RunConfig) -> int:
        """Rows in the run's whole training split (before ``heldout_rows`` and ``train_limit``)."""

    @abstractmethod
    def num_labels(self, config: RunConfig) -> int:
        """Outputs of the task head (0: no head, the LM's own)."""

    @abstractmethod
    def inference_model(self, config: RunConfig, summary):
        """The base model of a finished run (its adapters are restored by the run's method)."""

    @abstractmethod
    def predict(self, loaded, text: str, text_pair: str | None, max_new_tokens: int) -> dict[str, Any]:
        """One prediction with a loaded run (:class:`heterolora_core.inference.LoadedRun`)."""
