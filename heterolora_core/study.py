""""Does allocation pay here?": the allocation study as a sweep, for the user's model, task and targets.

One call (:func:`study_spec`; ``python -m heterolora_core study``; the Launch page's preset) turns a
model, a task, the targets and a uniform rank r into a sweep of these arms over N seeds, every arm at
the same learning rate and run length:

=====  ==================================================================================================
``U``  uniform LoRA at rank r on the targets: the reference; its parameter count P is the budget
``A``  the zero-cost rank allocation (``rank_static``) at exactly P parameters, ranks up to ``max_rank``
``R``  A's ranks dealt at random among candidates of equal cost (``rank_random``): is the allocation better than luck?
``T``  A's ranks shuffled across layers within each kind (``rank_layers``): which kinds, or which layers?
``I``  A's ranks inverted, the most to the lowest scores (``rank_inverted``): does the score carry signal?
``H``  A at half the budget, P // 2 parameters (``rank_static``)
``UH`` uniform LoRA at rank r / 2: uniform at half the budget (r must be even)
=====  ==================================================================================================

The budget is exact: P is what :func:`~heterolora_core.planning.check_run` counts for ``U``, and every
allocation arm is checked to plan exactly P (or P // 2). :mod:`heterolora_core.analysis.study` reads
the finished runs back into the verdict.

The learning rate is the same for every arm unless the study is asked to choose it per arm
(:func:`tuning_spec`, ``study --choose-lr``): then every arm first trains at each candidate rate on
the study's first seed, without the training split's last ``heldout_rows`` rows and scored on
them (never on the dev split), and each arm's runs use the rate that scored best there
(:func:`~heterolora_core.analysis.study.choose_learning_rates`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heterolora_core.methods import registry
from heterolora_core.sweeps import SweepSpec, new_sweep_id, parse_sweep
from heterolora_core.training.run_config import RunConfig

#: The arms, in the order a study's runs are queued (U and A first: the headline pair completes first).
ARMS = ("U", "A", "R", "T", "I", "H", "UH")
ARM_MODES = {"U": "lora", "A": "rank_static", "R": "rank_random", "T": "rank_layers", "I": "rank_inverted",
             "H": "rank_static", "UH": "lora"}
ARM_LABELS = {"U": "uniform LoRA (reference)", "A": "zero-cost rank allocation", "R": "random ranks (control)",
              "T": "ranks shuffled across layers (control)", "I": "inverted ranks (control)",
              "H": "allocation at half the budget", "UH": "uniform LoRA at half the budget"}
#: Seeds of a study unless asked otherwise, and the most it takes (7 arms each: 700 runs).
DEFAULT_SEEDS = 5
MAX_SEEDS = 100
#: The sweep-id prefix that marks a study (the Results page and ``study --report`` find it by this).
STUDY_PREFIX = "study-"
#: The prefix of a study's learning-rate runs (``tune-<study id>``: not a study of its own).
TUNE_PREFIX = "tune-"
#: Training rows a study holds out to choose each arm's learning rate, unless asked otherwise.
DEFAULT_HELDOUT_ROWS = 400


@dataclass(frozen=True)
class StudyPlan:
    """A study ready to queue: the sweep, the uniform rank and budget it is built around."""

    spec: SweepSpec
    rank: int
    max_rank: int
    budget: int  # P: U's adapter parameters
    half_budget: int  # P // 2


def study_spec(base: dict[str, Any] | RunConfig, rank: int, seeds: int | Sequence[int] = DEFAULT_SEEDS,
               max_rank: int | None = None, study_id: str | None = None, folder: str | None = None,
               budget_of=None, arm_lrs: Mapping[str, float] | None = None) -> StudyPlan:
    """The study's sweep for the settings in ``base`` (model, task, targets, learning rate, run
    length, ...): :data:`ARMS` over ``seeds`` (a count or the seeds themselves).

    ``rank`` is U's uniform rank; the allocation arms give each candidate a rank up to ``max_rank``
    (default 8 · rank). ``arm_lrs`` gives arms their own learning rates (the others keep ``base``'s).
    ``budget_of(config)`` returns a config's exact adapter parameters (default:
    :func:`~heterolora_core.planning.check_run`, which also checks every arm as a launch). ValueError
    (one line) for an odd ``rank`` (no uniform LoRA has half its budget), a ``max_rank`` below ``rank``,
    or an arm that cannot plan its budget exactly.
    """
    if budget_of is None:
        from heterolora_core.planning import check_run

        def budget_of(config: RunConfig) -> int:
            return check_run(config).trainable_params
    rank = int(rank)
    if rank < 2 or rank % 2:
        raise ValueError(f"a study needs an even uniform rank ≥ 2 (uniform LoRA at half the budget is rank r/2); got {rank}")
    max_rank = int(max_rank or 8 * rank)
    if max_rank < rank:
        raise ValueError(f"max-rank {max_rank} is below the uniform rank {rank}")
    count = int(seeds) if isinstance(seeds, int) else len(seeds)
    if not 1 <= count <= MAX_SEEDS:  # counted before any list is built: --seeds 10**12 allocates nothing
        raise ValueError(f"a study needs 1 to {MAX_SEEDS} seeds; got {count}")
    seed_list = list(range(count)) if isinstance(seeds, int) else [int(s) for s in seeds]
    settings = base.to_dict() if isinstance(base, RunConfig) else dict(base)
    settings = {k: v for k, v in settings.items() if k not in ("mode", "rank", "seed", "budget_params", "enable_ratio",
                                                                "match_uniform_rank", "shortcuts")}
    settings["shortcuts"] = False  # PEFT-expressible, and what uniform LoRA over the targets means
    uniform = RunConfig.from_dict({**settings, "mode": "lora", "rank": rank})
    budget = budget_of(uniform)
    rows = []
    for arm in ARMS:
        overrides: dict[str, Any] = {"mode": ARM_MODES[arm]}
        if arm in ("U", "UH"):
            overrides["rank"] = rank if arm == "U" else rank // 2
        else:
            overrides.update(rank=max_rank, budget_params=budget if arm != "H" else budget // 2)
        want = budget if arm not in ("H", "UH") else budget // 2
        got = budget_of(RunConfig.from_dict({**settings, **overrides}))
        if got != want:
            raise ValueError(f"arm {arm} ({ARM_LABELS[arm]}) plans {got:,} adapter parameters, not {want:,}; "
                             "choose another rank or max-rank")
        if arm_lrs and arm in arm_lrs:
            overrides["lr"] = float(arm_lrs[arm])
        rows.append({"row": arm, "label": ARM_LABELS[arm], **overrides, "report": {"arm": arm}})
    sweep_id = study_id or new_sweep_id(f"{STUDY_PREFIX}{uniform.task}")
    data = {"sweep": sweep_id, "description": f"Does allocation pay here? {len(seed_list)} seeds, uniform rank {rank}, "
                                               f"budget {budget:,}",
            "base": settings, "axes": {"seed": seed_list}, "order": ["seed", "row"], "rows": rows}
    if folder:
        data["folder"] = folder
    return StudyPlan(parse_sweep(data, source="study"), rank, max_rank, budget, budget // 2)


def tuning_spec(plan: StudyPlan, lrs: Sequence[float], heldout_rows: int = DEFAULT_HELDOUT_ROWS) -> SweepSpec:
    """The runs that choose each arm's learning rate for the study ``plan``: every arm at every rate
    in ``lrs`` on the study's first seed, trained without the training split's last
    ``heldout_rows`` rows and scored on them (``RunConfig.heldout_rows``: the dev split is never
    read). Sweep id ``tune-<study id>``; records beside the study's, ``-lr<rate>`` added to its
    folder template. ValueError (one line) for fewer than two distinct positive rates."""
    rates = sorted({float(lr) for lr in lrs})
    if len(rates) < 2 or rates[0] <= 0 or rates[-1] >= 1:
        raise ValueError(f"choosing a learning rate needs at least two distinct rates in (0, 1); got {list(lrs)}")
    data = plan.spec.to_dict()
    data.update(sweep=f"{TUNE_PREFIX}{plan.spec.sweep}",
                description=f"learning rates for study {plan.spec.sweep}: scored on the training split's last "
                            f"{heldout_rows:,} rows",
                base={**data["base"], "heldout_rows": int(heldout_rows)},
                axes={"seed": data["axes"]["seed"][:1], "lr": rates}, order=["seed", "lr", "row"])
    for row in data["rows"]:
        row.pop("lr", None)
    if plan.spec.folder:
        data["folder"] = f"{plan.spec.folder}-lr{{lr}}"
    return parse_sweep(data, source="study")


def arm_of(config: RunConfig, rank: int, budget: int) -> str | None:
    """Which arm of a study of uniform rank ``rank`` and budget ``budget`` a run is (None: none)."""
    method = registry.find(config.mode)
    if method is not None and method.baseline:
        return {rank: "U", rank // 2: "UH"}.get(int(config.rank))
    for arm, mode in ARM_MODES.items():
        if mode == config.mode and arm not in ("U", "UH") \
                and config.budget_params == (budget // 2 if arm == "H" else budget):
            return arm
    return None
