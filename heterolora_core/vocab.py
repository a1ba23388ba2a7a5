"""The project's vocabulary: one home for the names of the search space and of its settings.

Terms used everywhere (``docs/heterolora-method.md`` sections 2 and 6):

- a *candidate* (or *module*) is one switchable low-rank adapter, named ``layer.{i}.{group}.{kind}``
  (:class:`ModuleName`);
- its *group* is ``lora`` or ``shortcut`` (:class:`Group`): the two halves of the search space, which
  the combined ranking puts on one scale (``score_norm``);
- its *kind* is what it adapts: a LoRA target (:data:`LORA_TARGETS`) or a shortcut kind
  (:data:`SHORTCUT_KINDS`);
- a model *family* is an architecture the engine attaches to (bert, roberta, opt, llama, qwen2,
  mistral; see :mod:`heterolora_core.adapters.families`);
- a *method* (``mode`` in a run's config) is how a run allocates its budget (uniform LoRA, static or
  dynamic HeteroLoRA, AdaLoRA, ...); the methods are registered in :mod:`heterolora_core.methods`.

This module imports nothing but the standard library.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TypeVar


class Group(StrEnum):
    """The two halves of the search space."""

    LORA = "lora"
    SHORTCUT = "shortcut"


#: Projections a LoRA module can adapt, in the order module names are listed within a layer.
#: ``ffn_gate`` exists only in gated MLPs (Llama family), where ``ffn_in`` is the up projection.
LORA_TARGETS = ("q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out")
#: LoRA-adapted shortcut connections (method doc, section 2.2); ``cross_ffn`` is absent in layer 0.
SHORTCUT_KINDS = ("res_attn", "res_ffn", "cross_attn", "cross_ffn")
KINDS: dict[Group, tuple[str, ...]] = {Group.LORA: LORA_TARGETS, Group.SHORTCUT: SHORTCUT_KINDS}
#: The paper's default LoRA targets: query and value.
DEFAULT_TARGETS = ("q", "v")


class Proxy(StrEnum):
    """Zero-cost proxies: a saliency score per candidate (method doc, section 4)."""

    CONSTANT = "constant"
    GRAD_NORM = "grad_norm"
    SNIP = "snip"
    SYNFLOW = "synflow"
    FISHER = "fisher"
    ALPHA_TEST = "alpha_test"


#: Proxies whose statistic accumulates from ordinary training steps (no extra passes).
GRADIENT_PROXIES = (Proxy.GRAD_NORM, Proxy.SNIP, Proxy.FISHER)


class Scoring(StrEnum):
    """How a window's gradient statistics are held (:mod:`heterolora_core.search.statistics`):
    ``auto`` (the default: a sketch of O((d_in + d_out)·k) per candidate where the candidate is large
    enough for it to pay, the full gradient where it is small), ``sketch`` (every candidate) or
    ``exact`` (the full d_out × d_in gradient of every candidate, for checking)."""

    AUTO = "auto"
    SKETCH = "sketch"
    EXACT = "exact"


#: k, the default (largest) width of the scoring sketch.
DEFAULT_SKETCH_RANK = 32

#: The file formats of an allocation for other tools (``recommend --format``, ``export --format``):
#: ``peft.LoraConfig`` keywords as JSON, an axolotl YAML snippet; and the file name of each in a record.
CONFIG_FORMATS = ("json", "axolotl")
CONFIG_FILES = {"json": "lora_config.json", "axolotl": "axolotl_lora.yaml"}

#: Experiment trackers ``train --report-to`` passes to the Trainer, and the package each needs.
REPORT_TARGETS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


class RankRule(StrEnum):
    """How the rank allocator turns gradient statistics into ranks (:mod:`heterolora_core.search.ranks`):
    ``spectrum`` water-fills the singular-value spectra of the gradients; ``proportional`` makes
    ranks proportional to the proxy score."""

    SPECTRUM = "spectrum"
    PROPORTIONAL = "proportional"


class RankInit(StrEnum):
    """How a rank allocation initialises A: ``kaiming`` (uniform, as every LoRA); ``gradient``:
    the top right singular vectors of each candidate's gradient G (B stays zero)."""

    KAIMING = "kaiming"
    GRADIENT = "gradient"


class RankDeal(StrEnum):
    """Who gets the ranks an allocation chose (the controls of :mod:`heterolora_core.search.ranks`):
    ``allocated`` as chosen; ``random`` dealt at random among candidates of equal cost;
    ``layers`` shuffled across layers within each module kind (keeps the mix of kinds, loses the
    layer placement); ``inverted`` the most rank to the lowest scores."""

    ALLOCATED = "allocated"
    RANDOM = "random"
    LAYERS = "layers"
    INVERTED = "inverted"


class Ranking(StrEnum):
    """combined: LoRA and shortcut candidates in one ranking; separated: a quota per group."""

    COMBINED = "combined"
    SEPARATED = "separated"


class ScoreNorm(StrEnum):
    """How scores of the two groups are put on one scale before a combined ranking.

    ``PER_GROUP`` divides each score by its group's mean score; its value ``"kind"`` is the
    historical name of ``--score-norm kind`` and stays for the records and the command line.
    ``RAW`` compares raw scores (the authors' way).
    """

    PER_GROUP = "kind"
    RAW = "raw"


class Objective(StrEnum):
    """What a run trains a model to do: ``classify`` (a classification / regression head on the
    backbone, the paper's setting, also for decoders) or ``lm`` (a causal LM's own next-token loss on
    completion tokens: instruction data, or GLUE as instructions; see :mod:`heterolora_core.tasks`)."""

    CLASSIFY = "classify"
    LM = "lm"


#: Metrics where smaller is better (a loss, a perplexity); every other metric (accuracy, F1,
#: correlations) is higher-is-better. Keys may carry Trainer's prefixes (``eval_``, a dev split):
#: the direction is read off the key's end, see :func:`higher_is_better`.
LOWER_IS_BETTER_METRICS = ("loss", "perplexity")


def higher_is_better(metric: object) -> bool:
    """The direction of a metric key: False for ``loss``, ``completion_loss``, ``perplexity``,
    ``eval_dev_perplexity`` ...; True for every other key (and for a missing one)."""
    return not (isinstance(metric, str) and metric.endswith(LOWER_IS_BETTER_METRICS))


E = TypeVar("E", bound=Enum)


def choose(enum: type[E], value: object, what: str) -> E:
    """``enum(value)``, or ValueError ``unknown <what> 'x'; choose from a, b, c``."""
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(m.value for m in enum)}") from None


_KIND_ORDER = {kind: i for i, kind in enumerate(LORA_TARGETS + SHORTCUT_KINDS)}
_NAME_RE = re.compile(r"^layer\.(\d+)\.(lora|shortcut)\.([A-Za-z0-9_]+)$")


@dataclass(frozen=True)
class ModuleName:
    """``layer.{layer}.{group}.{kind}``: the name of one candidate, everywhere in the project."""

    layer: int
    group: Group
    kind: str

    def __str__(self) -> str:
        return f"layer.{self.layer}.{self.group.value}.{self.kind}"

    @classmethod
    def lora(cls, layer: int, target: str) -> "ModuleName":
        return cls(int(layer), Group.LORA, target)

    @classmethod
    def shortcut(cls, layer: int, kind: str) -> "ModuleName":
        return cls(int(layer), Group.SHORTCUT, kind)

    @classmethod
    def parse(cls, text: object) -> "ModuleName | None":
        """``"layer.3.lora.v"`` -> ``ModuleName(3, Group.LORA, "v")``; None for anything else."""
        match = _NAME_RE.match(text) if isinstance(text, str) else None
        if not match:
            return None
        return cls(int(match.group(1)), Group(match.group(2)), match.group(3))


def module_sort_key(name: str) -> tuple:
    """Modules by layer, then group (LoRA first), then the canonical kind order; unparsable last."""
    parsed = ModuleName.parse(name)
    if parsed is None:
        return (float("inf"), 2, 99, str(name))
    return (parsed.layer, 0 if parsed.group is Group.LORA else 1, _KIND_ORDER.get(parsed.kind, 99), name)


def kind_order(kind: str) -> int:
    """Position of ``kind`` in the canonical order (LoRA targets, then shortcut kinds)."""
    return _KIND_ORDER.get(kind, 99)
