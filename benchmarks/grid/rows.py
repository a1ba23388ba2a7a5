"""The quality grid's rows and runs: the sweep file ``benchmarks/grids/quality.yaml`` read as grid
rows (with the report's metadata), the order the grid runs them in, and the plans of the grid, its
learning-rate sweep, the full grid's rate tiers and the memory pair.

Every run is a :class:`Job`: a row, a task, a seed, its :class:`RunConfig` and its record folder
``<results>/<task>/<row slug>/seed<k>``. Settings shared by every row (:class:`Settings`) override
the sweep file's base; a row's own fields override both, so every row trains the same steps.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from heterolora_core.records.home import RESULTS_DIR
from heterolora_core.sweeps import SweepSpec, folder_of, load_sweep
from heterolora_core.training.run_config import RunConfig

GRIDS = Path(__file__).resolve().parents[1] / "grids"
GRID_FILE = GRIDS / "quality.yaml"
LR_SWEEP_FILE = GRIDS / "lr_sweep.yaml"
EMBEDDED = "embedded"
DEFAULT_TASKS = ("mrpc", "rte")
DEFAULT_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class RowSpec:
    """One configuration of the grid: its id (``1`` … ``9``, ``6.snip``), folder slug, budget (A or
    B), label, RunConfig overrides, the parameters it must train on the embedded model, the row it
    is compared with, the tasks it runs on (None: every task) and whether it is a diagnostic."""

    id: str
    slug: str
    budget: str
    label: str
    overrides: dict[str, Any]
    expected_params: int | None = None
    reference: str | None = None
    tasks: tuple[str, ...] | None = None
    diagnostic: bool = False


def load_rows(spec: SweepSpec) -> tuple[RowSpec, ...]:
    """The grid rows of a sweep file (the row id and metadata come from each row's ``report``)."""
    rows = []
    for row in spec.rows:
        meta = row.report
        tasks = tuple(row.only["task"]) if "task" in row.only else None
        rows.append(RowSpec(str(meta.get("id", row.row)), row.row, str(meta.get("budget", "")), row.label,
                            dict(row.overrides), meta.get("expected_params"), meta.get("reference"), tasks,
                            bool(meta.get("diagnostic", False))))
    return tuple(rows)


SPEC = load_sweep(GRID_FILE)
LR_SPEC = load_sweep(LR_SWEEP_FILE)
ROWS: tuple[RowSpec, ...] = load_rows(SPEC)
ROW_BY_ID = {row.id: row for row in ROWS}
LR_ROW_BY_ID = {row.id: row for row in load_rows(LR_SPEC)}
UNIFORM_OF_BUDGET = {"A": "1", "B": "4"}  # plain LoRA at each budget
CONTROL_OF_BUDGET = {"B": "8"}  # the same search with the constant proxy: a random selection
# "rows 4, 6, 8, 9 on MRPC; the same on RTE; rows 1 and 3; the rest" (None: every task), so every
# sitting of a CPU grid ends with comparable rows
RUN_ORDER: tuple[tuple[tuple[str, ...], tuple[str, ...] | None], ...] = (
    (("4", "6", "8", "9"), ("mrpc",)),
    (("4", "6", "8", "9"), ("rte",)),
    (("1", "3"), None),
    (tuple(r.id for r in ROWS), None),
)
LR_SWEEP_ROWS = ("1", "6")
UNIFORM_ROW, HETERO_ROW = LR_SWEEP_ROWS
MEMORY_PAIR = ("4", "6")  # (uniform, dynamic) at the same budget


@dataclass(frozen=True)
class Settings:
    """What every row shares (so every row trains the same steps)."""

    epochs: float = 3.0
    max_steps: int | None = None
    lr: float = 5e-4
    batch_size: int = 16
    max_length: int = 128
    train_limit: int | None = None
    dev_limit: int | None = None
    model: str = EMBEDDED
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SMOKE = dict(train_limit=32, dev_limit=32, max_steps=4, max_length=32)


def run_config(row: RowSpec, task: str, seed: int, settings: Settings, lr: float | None = None,
               spec: SweepSpec = SPEC) -> RunConfig:
    """The RunConfig of one (row, task, seed): the sweep file's base < shared settings < the row."""
    shared = settings.to_dict()
    if lr is not None:
        shared["lr"] = lr
    return RunConfig.from_dict({**spec.base, **shared, "task": task, "seed": seed, **row.overrides}).normalised()


def record_path(results: Path, spec: SweepSpec, row: RowSpec, config: RunConfig) -> Path:
    """Where the sweep file puts a run, under ``results`` instead of the data home's ``results/``."""
    folder = Path(folder_of(spec, row.slug, config))
    parts = folder.parts[1:] if folder.parts and folder.parts[0] == RESULTS_DIR else folder.parts
    return results.joinpath(*parts)


@dataclass
class Job:
    """One run of the grid and where its record lives."""

    row: RowSpec
    task: str
    seed: int
    config: RunConfig
    path: Path
    kind: str = "grid"  # grid | lr-sweep | memory
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.path)


def parse_rows(text: str) -> list[str]:
    """``all`` / ``sweep`` / ``diagnostics`` / a comma list of row ids (``4,6,6.snip``)."""
    out: list[str] = []
    for token in [t.strip() for t in text.split(",") if t.strip()]:
        if token == "all":
            out += [r.id for r in ROWS if not r.diagnostic]
        elif token == "sweep":
            out += [r.id for r in ROWS if r.id.startswith("6.") and not r.diagnostic]
        elif token == "diagnostics":
            out += [r.id for r in ROWS if r.diagnostic]
        elif token in ROW_BY_ID:
            out.append(token)
        else:
            raise SystemExit(f"unknown row {token!r}; rows are {', '.join(ROW_BY_ID)} (or all, sweep, diagnostics)")
    return list(dict.fromkeys(out))


def plan(rows: Iterable[str], tasks: Iterable[str], seeds: Iterable[int], settings: Settings,
         results: Path) -> list[Job]:
    """The grid's runs in ``RUN_ORDER`` (phase by phase; within a phase seed, task, row)."""
    wanted_rows, wanted_tasks, seeds = list(rows), list(tasks), list(seeds)
    jobs: list[Job] = []
    seen: set[tuple[str, str, int]] = set()
    for phase_rows, phase_tasks in RUN_ORDER:
        for seed in seeds:
            for task in wanted_tasks:
                if phase_tasks is not None and task not in phase_tasks:
                    continue
                for row_id in phase_rows:
                    row = ROW_BY_ID[row_id]
                    key = (row_id, task, seed)
                    if row_id not in wanted_rows or key in seen or (row.tasks and task not in row.tasks):
                        continue
                    seen.add(key)
                    config = run_config(row, task, seed, settings)
                    jobs.append(Job(row, task, seed, config, record_path(results, SPEC, row, config)))
    return jobs


def plan_lr_sweep(lrs: list[float], tasks: Iterable[str], settings: Settings, results: Path) -> list[Job]:
    """Rows 1 and 6, seed 0, at each learning rate: ``<results>/lr-sweep/<task>/<slug>/lr<lr>/seed0``."""
    jobs = []
    for task in tasks:
        for lr in lrs:
            for row_id in LR_SWEEP_ROWS:
                row = LR_ROW_BY_ID[row_id]
                config = run_config(row, task, 0, settings, lr=lr, spec=LR_SPEC)
                jobs.append(Job(row, task, 0, config, record_path(results, LR_SPEC, row, config), "lr-sweep", {"lr": lr}))
    return jobs


def plan_memory(task: str, rounds: int, settings: Settings, results: Path, steps: int | None) -> list[Job]:
    """Uniform (row 4) and dynamic (row 6) alternated ABBA, ``rounds`` of each, seed 0."""
    mem_settings = dataclasses.replace(settings, max_steps=steps or settings.max_steps)
    jobs = []
    for r in range(rounds):
        order = MEMORY_PAIR if r % 2 == 0 else MEMORY_PAIR[::-1]
        for row_id in order:
            row = ROW_BY_ID[row_id]
            jobs.append(Job(row, task, 0, run_config(row, task, 0, mem_settings),
                            results / "memory" / task / row.slug / f"round{r}", "memory", {"round": r}))
    return jobs


# ----------------------------------------------------------------------------------------------
# The full grid: learning-rate tiers
# ----------------------------------------------------------------------------------------------

def lr_folder(results: Path, lr: float) -> Path:
    return results / f"lr{lr:g}"


def grid_groups(choice: dict[str, dict[str, float]], rows: list[str],
                diagnostics: bool = True) -> list[tuple[str, float, list[str], int]]:
    """What to run: (task, lr, row ids, tier). Tier 0: every row at ``lr_uniform``; tier 1: where
    ``lr_hetero`` differs, every row at it too; tier 2: the row-6 diagnostics (MRPC) at ``lr_hetero``."""
    groups = [(task, picks["uniform"], rows, 0) for task, picks in choice.items() if "uniform" in picks]
    groups += [(task, picks["hetero"], rows, 1) for task, picks in choice.items()
               if "hetero" in picks and picks["hetero"] != picks.get("uniform")]
    if diagnostics:
        names = parse_rows("diagnostics")
        for task, picks in choice.items():
            lr = picks.get("hetero", picks.get("uniform"))
            if lr is not None and any(task in (ROW_BY_ID[r].tasks or (task,)) for r in names):
                groups.append((task, lr, names, 2))
    return groups


def _phase(job: Job) -> int:
    """The index of the first ``RUN_ORDER`` phase that holds the job's row and task."""
    for i, (rows, tasks) in enumerate(RUN_ORDER):
        if job.row.id in rows and (tasks is None or job.task in tasks):
            return i
    return len(RUN_ORDER)


def plan_grid(groups: list[tuple[str, float, list[str], int]], seeds: list[int], settings: Settings,
              results: Path) -> list[Job]:
    """Every group's jobs, by tier, then in the grid's run order (phase, then seed)."""
    keyed = []
    for task, lr, rows, tier in groups:
        for job in plan(rows, [task], seeds, dataclasses.replace(settings, lr=lr), lr_folder(results, lr)):
            job.extra["lr"] = lr
            keyed.append(((tier, _phase(job), job.seed, len(keyed)), job))
    return [job for _, job in sorted(keyed, key=lambda kv: kv[0])]
