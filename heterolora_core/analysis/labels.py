"""How runs and configurations are named wherever several are shown together.

Two names for each: a *full* one that spells out every field defining it (hover text, CSV,
pickers: :func:`describe_config`), and a *short* one made of only the fields that differ among the
runs or configurations on screen (:func:`short_labels`): a sweep over rank and method reads
``rank_static · r32`` / ``lora · r2``, not two 150-character lines that share 140 characters.
Every page, legend, heatmap title and matrix calls :func:`short_labels` on what it shows.

Tokens are written as people write them (``lr 5e-4``, ``r32``, ``25%``, ``73.7k params``,
``q,v + shortcuts``). The search space always says whether shortcuts are in it, so uniform LoRA over
all 35 modules (``q,v + shortcuts``) never reads like uniform LoRA over q and v alone.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from heterolora_core.methods import registry
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import LORA_TARGETS, Ranking

#: A short label is cut to this many characters (the full one is on hover).
MAX_LABEL = 60

#: Readable names of RunConfig fields (table columns, tokens without a format of their own).
FIELD_LABELS = {
    "mode": "method", "enable_ratio": "enable ratio", "match_uniform_rank": "budget: match uniform rank",
    "budget_params": "budget (parameters)", "score_norm": "score normalisation", "lora_targets": "LoRA targets",
    "lr": "learning rate", "max_steps": "max steps", "train_limit": "training examples", "dev_limit": "dev examples",
    "heldout_rows": "held-out training rows",
    "realloc_every": "reallocate every (epochs)", "proxy_batches": "extra scoring batches",
    "score_window": "score window (steps)", "sketch_rank": "sketch rank", "batch_size": "batch size",
    "max_length": "max length", "eval_every": "evaluate every (steps)", "logging_steps": "log every (steps)",
    "train_file": "training file", "dev_file": "dev file", "adalora_init_r": "AdaLoRA initial rank",
    "adalora_target_r": "AdaLoRA target rank",
}

#: Config fields that only a searching method reads (``–`` / no token for the others).
SEARCH_FIELDS = ("proxy", "ranking", "score_norm", "enable_ratio", "match_uniform_rank", "proxy_batches",
                 "score_window", "scoring", "sketch_rank", "realloc_every")
#: Fields only some methods read: the registry's method options (the budget aside: ``budget`` below).
OPTION_FIELDS = tuple(dict.fromkeys(name for m in map(registry.info, registry.names()) for name in m.options
                                    if name != "budget_params"))
#: Fields that never tell two results apart (bookkeeping) and are never in a label.
_NOT_LABELLED = ("device", "logging_steps")  # as compare.NOT_IN_CONFIG_KEY: they never split a configuration


def field_label(name: str) -> str:
    """``"max_steps"`` -> ``"max steps"`` (:data:`FIELD_LABELS`, else the name with spaces)."""
    return FIELD_LABELS.get(name, name.replace("_", " "))


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``plural(1, "run")`` -> ``"1 run"``, ``plural(11, "run")`` -> ``"11 runs"`` (``nouns`` for an
    irregular plural)."""
    return f"{n:,} {noun if n == 1 else (nouns or noun + 's')}"


def format_lr(lr: object) -> str:
    """A learning rate as people write it: ``0.0005`` -> ``"5e-4"``, ``0.00125`` -> ``"1.25e-3"``."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
        return str(lr)
    if lr == 0 or abs(lr) >= 0.01:
        return f"{lr:g}"
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def format_count(n: int) -> str:
    """``73728`` -> ``"73.7k"``, ``1500000`` -> ``"1.5M"``, ``950`` -> ``"950"``."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}".rstrip("0").rstrip(".") + suffix
    return str(n)


def format_field(name: str, value: object) -> str:
    """A config value as a table cell: lists joined, booleans on/off, rates and ratios readable,
    None (or a table's NaN) as ``–``, whole numbers without a decimal point."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if name == "lr":
        return format_lr(value)
    if name == "enable_ratio" and isinstance(value, (int, float)):
        return f"{float(value):.0%}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def applies(config: RunConfig, name: str) -> bool:
    """Whether ``config``'s method reads field ``name`` (uniform LoRA has no proxy; only the rank
    modes have a rank rule)."""
    method = registry.find(config.mode)
    if name in SEARCH_FIELDS:
        return method is None or method.searches
    if name in OPTION_FIELDS:
        return method is not None and name in method.options
    if name == "shortcuts":
        return method is None or method.shortcuts
    return True


def space_token(config: RunConfig) -> str:
    """The search space: ``q,v + shortcuts``, ``q,v``; every LoRA target of the vocabulary but the
    gate reads ``all targets``."""
    targets = list(config.lora_targets)
    named = "all targets" if set(targets) >= set(LORA_TARGETS) - {"ffn_gate"} else ",".join(targets)
    return f"{named} + shortcuts" if config.shortcuts and applies(config, "shortcuts") else named


def compact_space(token: str) -> str:
    """A search-space token for a label that is too long: ``q,v + shortcuts`` -> ``q,v+sc``."""
    return token.replace(" + shortcuts", "+sc")


def budget_token(config: RunConfig) -> str | None:
    """A searching method's budget as stated: ``25%`` of the candidates, ``≈r24`` (match uniform
    rank 24) or ``73.7k params``; None for methods without one."""
    method = registry.find(config.mode)
    if method is None or not method.searches:
        return None
    if getattr(config, "budget_params", None):
        return f"{format_count(int(config.budget_params))} params"
    if config.match_uniform_rank:
        return f"≈r{config.match_uniform_rank}"
    return f"{float(config.enable_ratio):.0%}"


def field_token(config: RunConfig, name: str) -> str | None:
    """Field ``name`` of ``config`` as a label token, or None where the method does not read it.

    ``space`` stands for the search space (targets and shortcuts) and ``budget`` for the budget's
    three ways of being stated; the other names are RunConfig fields.
    """
    if name == "space":
        return space_token(config)
    if name == "budget":
        return budget_token(config)
    if not applies(config, name):
        return None
    value = getattr(config, name)
    tokens = {
        "task": lambda v: str(v),
        "model": lambda v: PurePath(str(v)).name or str(v),
        "mode": lambda v: str(v),
        "proxy": lambda v: str(v),
        "ranking": lambda v: str(v),
        "rank": lambda v: f"r{v}",
        "lr": lambda v: f"lr {format_lr(v)}",
        "seed": lambda v: f"seed {v}",
        "epochs": lambda v: f"{v:g} epochs" if isinstance(v, (int, float)) else f"epochs {v}",
        "max_steps": lambda v: "by epochs" if v is None else f"{v} steps",
        "train_limit": lambda v: "all training rows" if v is None else f"{v} training rows",
        "dev_limit": lambda v: "whole dev split" if v is None else f"{v} dev rows",
        "heldout_rows": lambda v: "scored on dev" if v is None else f"scored on {v} held-out training rows",
    }
    if name in tokens:
        return tokens[name](value)
    if name.startswith(f"{config.mode}_"):  # a method's own option: adalora_init_r 32 -> init_r 32
        return f"{name.removeprefix(config.mode + '_')} {format_field(name, value)}"
    return f"{field_label(name)} {format_field(name, value)}"


#: Label fields in the order tokens appear: what the run is, then how long it ran, then the seed.
LABEL_FIELDS: tuple[str, ...] = (
    "task", "model", "mode", "space", "proxy", "ranking", "score_norm", "rank", *OPTION_FIELDS, "budget", "lr",
    "epochs", "max_steps", "train_limit", "dev_limit", "heldout_rows", "batch_size", "max_length", "realloc_every",
    "proxy_batches", "score_window", "scoring", "sketch_rank", "train_file", "dev_file", "seed",
)
#: Fields whose token is shown wherever they differ; any other field only where it is not the
#: default (no token means the default: ``separated`` beside nothing, not beside ``combined``).
CORE_FIELDS = ("task", "model", "mode", "space", "proxy", "rank", "budget", "lr", "seed")
_COVERED = {"lora_targets", "shortcuts", "enable_ratio", "match_uniform_rank", "budget_params", *LABEL_FIELDS,
            *_NOT_LABELLED}


def _label_fields() -> tuple[str, ...]:
    """:data:`LABEL_FIELDS` and, before the seed, any RunConfig field it does not name (a field
    added later still tells configurations apart)."""
    extra = tuple(f for f in RunConfig.field_names() if f not in _COVERED)
    return LABEL_FIELDS[:-1] + extra + LABEL_FIELDS[-1:]


def describe_config(config: RunConfig | None, include_seed: bool = True) -> str:
    """The full name of a run: ``mrpc · dynamic · q,v + shortcuts · grad_norm · r32 · 25% · lr 5e-4 ·
    seed 0`` (task · [model when not the embedded one] · method · search space · proxy · [ranking
    when separated] · rank · [the method's own options] · budget · learning rate · [run length
    when it is not 3 whole epochs] · seed); ``unreadable record`` without a config."""
    if config is None:
        return "unreadable record"
    default = RunConfig()
    parts = [field_token(config, "task")]
    if config.model != default.model:
        parts.append(field_token(config, "model"))
    parts += [config.mode, space_token(config)]
    method = registry.find(config.mode)
    if method is not None and method.searches:
        parts.append(str(config.proxy))
        if config.ranking != Ranking.COMBINED.value:
            parts.append(str(config.ranking))
    parts.append(f"r{config.rank}")
    if method is not None:
        parts += [field_token(config, name) for name in method.options if name != "budget_params"]
    parts += [budget_token(config), field_token(config, "lr")]
    parts += [field_token(config, name) for name in ("epochs", "max_steps", "train_limit", "dev_limit", "heldout_rows")
              if getattr(config, name) != getattr(default, name)]
    if include_seed:
        parts.append(field_token(config, "seed"))
    return " · ".join(p for p in parts if p)


@dataclass(frozen=True)
class Label:
    """A run's or configuration's name on screen: ``short`` (at most :data:`MAX_LABEL`
    characters: the fields that differ among those shown) and ``full`` (every defining field)."""

    short: str
    full: str


def distinguishing_fields(configs: Sequence[RunConfig], include_seed: bool = True) -> list[str]:
    """The label fields (:data:`LABEL_FIELDS`, ``space`` and ``budget`` included) whose token
    differs among ``configs``; a field only some of the methods read counts when it differs among
    those that read it (a rank rule shared by every rank run, beside uniform LoRA, tells nothing
    the method does not)."""
    out = []
    for name in _label_fields():
        if name == "seed" and not include_seed:
            continue
        tokens = {field_token(c, name) for c in configs}
        tokens.discard(None)
        if len(tokens) > 1:
            out.append(name)
    return out


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip(" ·") + "…"


def short_labels(configs: Mapping[str, RunConfig | None], extras: Mapping[str, Sequence[str]] | None = None,
                 include_seed: bool = True, tiebreak: Mapping[str, str] | None = None,
                 max_length: int = MAX_LABEL, marks: Mapping[str, Sequence[str]] | None = None) -> dict[str, Label]:
    """Key -> :class:`Label` for runs or configurations shown together.

    ``configs``: key -> config (None: an unreadable record). ``extras``: key -> further tokens that
    may tell them apart (the device a result was measured on: :mod:`~.evidence`), shown where they
    differ. The short label is the tokens of :func:`distinguishing_fields` (with the seed unless
    ``include_seed`` is False; a field outside :data:`CORE_FIELDS` only where it is not the
    default); with nothing differing, ``task · method · space · rank``. Labels
    that still collide get ``tiebreak[key]`` (a run id's tail), else ``#1``, ``#2``. ``marks``:
    key -> tokens every label of that key ends with, differing or not (``short run``). A short
    label over ``max_length`` characters is cut with ``…``; the full one never is.
    """
    readable = {k: c for k, c in configs.items() if c is not None}
    fields = distinguishing_fields(list(readable.values()), include_seed)
    extra_tokens = {k: tuple(v) for k, v in (extras or {}).items()}
    extra_positions = [i for i in range(max((len(v) for v in extra_tokens.values()), default=0))
                       if len({v[i] if i < len(v) else None for v in extra_tokens.values()}) > 1]
    shorts, fulls = {}, {}
    default = RunConfig()
    for key, config in configs.items():
        extra = extra_tokens.get(key, ())
        if config is None:
            shorts[key] = fulls[key] = "unreadable record"
            continue
        tokens = [t for f in fields if (t := field_token(config, f))
                  and (f in CORE_FIELDS or t != field_token(default, f))]
        if len(" · ".join(tokens + list(extra))) > max_length and "space" in fields:  # shorter before cut
            tokens = [compact_space(t) if t == space_token(config) else t for t in tokens]
        if not tokens:
            tokens = [field_token(config, "task"), config.mode, space_token(config), f"r{config.rank}"]
        tokens += [extra[i] for i in extra_positions if i < len(extra)]
        mark = list((marks or {}).get(key, ()))
        shorts[key] = " · ".join(tokens + mark)
        fulls[key] = " · ".join([describe_config(config, include_seed), *extra, *mark])
    counts: dict[str, int] = {}
    for text in shorts.values():
        counts[text] = counts.get(text, 0) + 1
    seen: dict[str, int] = {}
    out = {}
    for key, text in shorts.items():
        if counts[text] > 1:
            seen[text] = seen.get(text, 0) + 1
            suffix = (tiebreak or {}).get(key) or f"#{seen[text]}"
            text = f"{_cut(text, max_length - len(suffix) - 3)} · {suffix}"
        out[key] = Label(_cut(text, max_length), fulls[key])
    return out


#: What a comparison is about, by the first label field that tells its configurations apart.
_SUBJECTS = (("proxy", "proxies"), ("mode", "methods"), ("space", "search spaces"), ("budget", "budgets"),
             ("rank", "ranks"), ("lr", "learning rates"), ("task", "tasks"), ("model", "models"))


def comparison_subject(configs: Sequence[RunConfig]) -> str:
    """What differs among ``configs``, in words for a heading: ``proxies``, ``methods``, ``ranks``,
    ... (the first of :data:`_SUBJECTS` that differs); ``configurations`` otherwise."""
    ordered = distinguishing_fields(list(configs), include_seed=False)
    fields = set(ordered)
    named = next((words for name, words in _SUBJECTS if name in fields), None)
    if named is not None:
        return named
    return ", ".join(field_label(f) for f in ordered[:3]) if ordered else "configurations"
