"""Quality grid: dev scores of uniform LoRA, HeteroLoRA and AdaLoRA at matched budgets, over seeds.

The embedded MiniLM (6 layers, d = 384, so one q/v/shortcut module of rank r costs 768·r), MRPC
and RTE, seeds 0, 1, 2. The rows are data (``ROWS``); every row trains the same steps (same
epochs, batch size and learning rate). Budget A, 73,728 adapter parameters (LoRA candidates only):

  1  uniform LoRA q,v, rank 8                                           12 x 8 x 768  =  73,728
  2  static HeteroLoRA, grad_norm, rank 32, 25% of the 12 LoRA modules    3 x 32 x 768 =  73,728
  3  dynamic HeteroLoRA, grad_norm, rank 32, 25% of the 12 LoRA modules   3 x 32 x 768 =  73,728

Budget B, about 221k (LoRA + shortcut candidates):

  4  uniform LoRA q,v, rank 24 (the honest baseline)                    12 x 24 x 768 = 221,184
  5  LoRA + shortcuts, all 35 on, rank 8                                35 x 8 x 768  = 215,040
  6  dynamic HeteroLoRA, combined ranking, grad_norm, rank 32, 9 of 35   9 x 32 x 768 = 221,184
  7  the same with separated ranking (3 LoRA + 6 shortcuts)                               221,184
  8  the same as 6 with the ``constant`` proxy (random selection: the control)           221,184
  9  AdaLoRA (PEFT) on q,v, init_r 32 -> target_r 24; counted final params (r·(d_in+d_out+1))
     221,472 (initial 295,296)

Plus, on MRPC only, row 6 with the snip, synflow, fisher and alpha_test proxies (rows 6.snip, ...).
Budget A rows are compared with row 1, budget B rows with row 4, the proxy sweep with row 6.

Each (row, task, seed) run is a subprocess ``python -m heterolora_core train --out
<results>/<task>/<row-slug>/seed<k> ...`` whose peak resident memory is read from the kernel's
accounting of that child (``os.wait4``), so one crash never stops the grid. The grid is
**resumable**: a run folder whose summary says ``done`` (with the same settings) is skipped; a
failed, cancelled or dead one is removed and rerun; one that another process is running is left
alone. Default run order (``--rows all``): rows 4, 6, 8, 9 on MRPC; the same on RTE; rows 1 and 3;
the rest (2, 5, 7, the proxy sweep); within a phase seed by seed, so every sitting ends with
comparable rows.

The table (printed, and written as JSON next to the records) gives per row and task: trainable
parameters, the final-epoch dev score (headline) as mean ± std, its 95% t-interval over seeds, the
best epoch's mean beside it, the paired difference to the reference row with its 95% t-interval
("noise" when it contains 0), mean wall and search seconds and peak RSS.

    python benchmarks/quality_grid.py                         # the whole grid, in the order above
    python benchmarks/quality_grid.py --tasks mrpc --seeds 0 --rows 4,6,8,9
    python benchmarks/quality_grid.py --lr-sweep 1e-4,2e-4,5e-4,1e-3 --tasks mrpc   # rows 1 and 6, seed 0
    python benchmarks/quality_grid.py --memory                # peak RSS, dynamic (6) vs uniform (4)
    python benchmarks/quality_grid.py --report-only           # table from the records, no training
    python benchmarks/quality_grid.py --smoke                 # tiny runs in a temporary folder (CI)

Options: ``--epochs 3``, ``--max-steps N`` (a trial), ``--lr 5e-4``, ``--batch-size 16``,
``--results data/results``, ``--json <results>/quality_grid.json``, ``--dry-run`` (print the plan).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from heterolora_core.runs import RunConfig, RunRecord  # noqa: E402  (light: no torch)

EMBEDDED = "embedded"
DEFAULT_TASKS = ("mrpc", "rte")
DEFAULT_SEEDS = (0, 1, 2)
MEMORY_TARGET = 1.2  # peak RSS of a dynamic run over a uniform one
IGNORED_FIELDS = ("device", "logging_steps")  # config fields that do not change a run's result


# ----------------------------------------------------------------------------------------------
# The grid as data
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RowSpec:
    """One configuration of the grid: RunConfig overrides plus how to report it.

    ``expected_params``: adapter parameters on the embedded model (checked against the run's
    summary); ``reference``: the row it is compared with; ``tasks``: None for every task.
    """

    id: str
    slug: str
    budget: str
    label: str
    overrides: dict[str, Any]
    expected_params: int | None = None
    reference: str | None = None
    tasks: tuple[str, ...] | None = None
    diagnostic: bool = False  # a remedy tried on row 6, not part of "all"


_LORA_ONLY = dict(shortcuts=False, lora_targets=["q", "v"])
_DYNAMIC_B = dict(mode="dynamic", proxy="grad_norm", rank=32, enable_ratio=0.25, shortcuts=True,
                  lora_targets=["q", "v"], ranking="combined")

ROWS: tuple[RowSpec, ...] = (
    RowSpec("1", "lora-qv-r8", "A", "uniform LoRA q,v r8", dict(mode="lora", rank=8, **_LORA_ONLY), 73_728),
    RowSpec("2", "static-gradnorm-r32-p25", "A", "static grad_norm r32, 3/12 on",
            dict(mode="static", proxy="grad_norm", rank=32, enable_ratio=0.25, **_LORA_ONLY), 73_728, "1"),
    RowSpec("3", "dynamic-gradnorm-r32-p25", "A", "dynamic grad_norm r32, 3/12 on",
            dict(mode="dynamic", proxy="grad_norm", rank=32, enable_ratio=0.25, **_LORA_ONLY), 73_728, "1"),
    RowSpec("4", "lora-qv-r24", "B", "uniform LoRA q,v r24", dict(mode="lora", rank=24, **_LORA_ONLY), 221_184),
    RowSpec("5", "lora-shortcuts-r8", "B", "LoRA + shortcuts, all 35 on, r8",
            dict(mode="lora", rank=8, shortcuts=True, lora_targets=["q", "v"]), 215_040, "4"),
    RowSpec("6", "dynamic-combined-gradnorm-r32", "B", "dynamic combined grad_norm r32, 9/35",
            dict(_DYNAMIC_B), 221_184, "4"),
    RowSpec("7", "dynamic-separated-gradnorm-r32", "B", "dynamic separated grad_norm r32, 9/35",
            {**_DYNAMIC_B, "ranking": "separated"}, 221_184, "4"),
    RowSpec("8", "dynamic-combined-constant-r32", "B", "dynamic combined constant r32, 9/35",
            {**_DYNAMIC_B, "proxy": "constant"}, 221_184, "4"),
    RowSpec("9", "adalora-qv-r32to24", "B", "AdaLoRA q,v init 32 -> target 24",
            dict(mode="adalora", adalora_init_r=32, adalora_target_r=24, **_LORA_ONLY), 221_472, "4"),
) + tuple(
    RowSpec(f"6.{proxy}", f"dynamic-combined-{proxy.replace('_', '')}-r32", "B", f"row 6 with {proxy}",
            {**_DYNAMIC_B, "proxy": proxy}, 221_184, "6", tasks=("mrpc",))
    for proxy in ("snip", "synflow", "fisher", "alpha_test")
) + (
    # Remedies for a dynamic search that does not beat uniform LoRA (the method doc's suspects):
    # raw instead of per-kind normalised combined ranking; fewer set changes (one reallocation per
    # epoch; a single static selection); the authors' scoring (every module on, 32 extra batches).
    RowSpec("6.raw", "dynamic-combined-gradnorm-r32-raw", "B", "row 6 ranking raw scores",
            {**_DYNAMIC_B, "score_norm": "raw"}, 221_184, "6", tasks=("mrpc",), diagnostic=True),
    RowSpec("6.epoch", "dynamic-combined-gradnorm-r32-per-epoch", "B", "row 6 reallocating once per epoch",
            {**_DYNAMIC_B, "realloc_every": 1.0}, 221_184, "6", tasks=("mrpc",), diagnostic=True),
    RowSpec("6.static", "static-combined-gradnorm-r32", "B", "row 6 as one static selection",
            {**_DYNAMIC_B, "mode": "static"}, 221_184, "6", tasks=("mrpc",), diagnostic=True),
    RowSpec("6.authors", "dynamic-combined-gradnorm-r32-authors", "B", "row 6 with the authors' scoring",
            {**_DYNAMIC_B, "proxy_batches": 32}, 221_184, "6", tasks=("mrpc",), diagnostic=True),
)
ROW_BY_ID = {row.id: row for row in ROWS}
UNIFORM_OF_BUDGET = {"A": "1", "B": "4"}  # plain LoRA at each budget
CONTROL_OF_BUDGET = {"B": "8"}  # the same search with the constant proxy: a random selection

# "rows 4, 6, 8, 9 on MRPC; the same on RTE; rows 1 and 3; the rest" (None: every task)
RUN_ORDER: tuple[tuple[tuple[str, ...], tuple[str, ...] | None], ...] = (
    (("4", "6", "8", "9"), ("mrpc",)),
    (("4", "6", "8", "9"), ("rte",)),
    (("1", "3"), None),
    (tuple(r.id for r in ROWS), None),
)
LR_SWEEP_ROWS = ("1", "6")
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


def run_config(row: RowSpec, task: str, seed: int, settings: Settings, lr: float | None = None) -> RunConfig:
    """The RunConfig of one (row, task, seed): engine defaults < shared settings < the row."""
    shared = settings.to_dict()
    if lr is not None:
        shared["lr"] = lr
    return RunConfig.from_dict({**shared, "task": task, "seed": seed, "logging_steps": 50, **row.overrides})


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
    """``all`` / ``sweep`` / a comma list of row ids (``4,6,6.snip``)."""
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
                    jobs.append(Job(row, task, seed, run_config(row, task, seed, settings),
                                    results / task / row.slug / f"seed{seed}"))
    return jobs


def plan_lr_sweep(lrs: list[float], tasks: Iterable[str], settings: Settings, results: Path) -> list[Job]:
    """Rows 1 and 6, seed 0, at each learning rate: ``<results>/lr-sweep/<task>/<slug>/lr<lr>/seed0``."""
    jobs = []
    for task in tasks:
        for lr in lrs:
            for row_id in LR_SWEEP_ROWS:
                row = ROW_BY_ID[row_id]
                jobs.append(Job(row, task, 0, run_config(row, task, 0, settings, lr=lr),
                                results / "lr-sweep" / task / row.slug / f"lr{lr:g}" / "seed0", "lr-sweep", {"lr": lr}))
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
# Running (resumable)
# ----------------------------------------------------------------------------------------------

def config_differences(stored: dict[str, Any], wanted: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Fields (result-relevant) where a stored run's config differs from the wanted one."""
    have = RunConfig.from_dict(stored).to_dict()
    diffs = {}
    for key, value in wanted.to_dict().items():
        if key in IGNORED_FIELDS:
            continue
        if have.get(key) != value and not (isinstance(value, float) and isinstance(have.get(key), (int, float))
                                           and math.isclose(float(have[key]), value)):
            diffs[key] = (have.get(key), value)
    return diffs


def job_state(job: Job) -> str:
    """``todo`` (no record), ``done``, ``running`` (a live process owns it) or ``rerun``; raises
    SystemExit when a finished record was made with other settings (results would mix)."""
    record = RunRecord(job.path)
    if not record.exists():
        return "todo"
    status = record.summary().get("status")  # a dead 'running' run reads as failed
    if status == "done":
        diffs = config_differences(record.config(), job.config)
        if diffs:
            shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diffs.items()))
            raise SystemExit(f"{job.path} holds a finished run with other settings ({shown}); "
                             f"use another --results folder")
        return "done"
    if status in ("running", "queued") and record.raw_summary().get("pid"):
        return "running"
    return "rerun"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    glue = ROOT.parent / "shared" / "glue"
    if "GLUE_DIR" not in env and glue.is_dir():
        env["GLUE_DIR"] = str(glue)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _vm_hwm_mb(pid: int) -> float | None:
    """The peak resident set of a live process's own address space (``VmHWM``), Linux only."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_measured(cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT, poll_seconds: float = 0.1) -> tuple[int, float, float | None]:
    """Run ``cmd`` with output to ``log_path``; (exit code, seconds, peak RSS in MiB of the child).

    The peak is the kernel's accounting of that one child (``os.wait4`` -> ``ru_maxrss``). On
    Linux a child's ``ru_maxrss`` also carries the parent's own peak from before ``exec`` (the
    address space it replaced), so it is the child's peak only when it exceeds this process's
    peak at spawn time, which holds for every training run (this process imports no torch).
    Otherwise the highest ``VmHWM`` seen by polling the child's ``/proc`` entry is used (None when
    the child ended before the first poll).
    """
    import resource
    import threading

    log_path.parent.mkdir(parents=True, exist_ok=True)
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    polled: list[float] = []
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
        finished = threading.Event()

        def poll() -> None:
            while not finished.wait(poll_seconds):
                value = _vm_hwm_mb(proc.pid)
                if value is not None:
                    polled.append(value)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        finally:
            finished.set()
            poller.join()
    seconds = time.perf_counter() - start
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    if usage.ru_maxrss > own_peak:
        peak: float | None = usage.ru_maxrss / scale
    else:
        peak = max(polled) if polled else None
    return proc.returncode, seconds, peak


def train_command(job: Job) -> list[str]:
    return [sys.executable, "-m", "heterolora_core", "train", "--out", str(job.path), "--no-progress",
            *job.config.to_cli_args()]


PAUSE_FILE = "PAUSE"  # touch <results>/PAUSE to stop a long sitting after the run in progress


def execute(jobs: list[Job], dry_run: bool = False, log=print, pause_file: Path | None = None,
            parallel: int = 1, deadline: float | None = None) -> dict[str, int]:
    """Run every job that is not done; returns counts of what happened (ran, skipped, failed, busy,
    and paused when ``pause_file`` appeared, or the ``time.monotonic()`` ``deadline`` passed,
    before a run could start).

    ``parallel`` runs that many jobs at once, each its own process, started in ``jobs`` order
    (for a GPU, where one small run leaves most of the device idle; on a CPU keep 1, since runs
    would share the cores and their wall times would mean nothing)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    counts = {"ran": 0, "skipped": 0, "failed": 0, "busy": 0}
    env = _child_env()
    todo = [(job, job_state(job)) for job in jobs]
    pending = [(j, s) for j, s in todo if s in ("todo", "rerun")]
    counts["skipped"] = sum(1 for _, s in todo if s == "done")
    counts["busy"] = sum(1 for _, s in todo if s == "running")
    for job, state in todo:
        if state == "running":
            log(f"busy     {job.name} (another process is running it)")
    if counts["skipped"]:
        log(f"skip     {counts['skipped']} finished run(s)")
    if dry_run:
        for job, _ in pending:
            log(" ".join(train_command(job)))
        return counts
    lock = threading.Lock()
    stop_reason: list[str] = []

    def may_start(job: Job) -> bool:
        with lock:
            if not stop_reason:
                if pause_file is not None and pause_file.exists():
                    # Lets a sitting end (or a timing benchmark get the machine) between runs, losing none.
                    stop_reason.append(f"{pause_file} exists: stopping before {job.name}; delete it and rerun to go on")
                elif deadline is not None and time.monotonic() >= deadline:
                    stop_reason.append(f"deadline passed: stopping before {job.name}; rerun to go on")
                if stop_reason:
                    log(f"pause    {stop_reason[0]}")
            if stop_reason:
                counts["paused"] = counts.get("paused", 0) + 1
                return False
            return True

    def run_one(i: int, job: Job, state: str) -> None:
        if not may_start(job):
            return
        if state == "rerun":
            previous = RunRecord(job.path).summary()
            log(f"rerun    {job.name} (was {previous.get('status')}: {previous.get('error', '')})")
            shutil.rmtree(job.path)
        log(f"[{i}/{len(pending)}] {job.kind} row {job.row.id} {job.task} seed {job.seed} -> {job.path}")
        code, seconds, peak = run_measured(train_command(job), job.path / "grid.log", env)
        record = RunRecord(job.path)
        if record.exists():
            record.update_summary(process_seconds=round(seconds, 2), parallel_runs=parallel,
                                  peak_rss_mb=round(peak, 1) if peak is not None else None)
        summary = record.summary()
        with lock:
            if code == 0 and summary.get("status") == "done":
                counts["ran"] += 1
                log(f"         done in {seconds:.0f} s ({job.name}): final {summary.get('final_score')}  "
                    f"best {summary.get('best_score')}  trainable {summary.get('trainable_params')}  "
                    f"peak RSS {peak or float('nan'):.0f} MiB")
            else:
                counts["failed"] += 1
                tail = (job.path / "grid.log").read_text(errors="replace").strip().splitlines()[-1:] \
                    if (job.path / "grid.log").exists() else []
                log(f"         FAILED (exit {code}) {job.name}: {summary.get('error') or (tail[0] if tail else '')}")

    if parallel <= 1:
        for i, (job, state) in enumerate(pending, 1):
            run_one(i, job, state)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:  # submitted in order, started in order
            for future in [pool.submit(run_one, i, job, state) for i, (job, state) in enumerate(pending, 1)]:
                future.result()
    return counts


# ----------------------------------------------------------------------------------------------
# Statistics and the table
# ----------------------------------------------------------------------------------------------

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy is in requirements.txt
        return _T975.get(df, 1.96)


def describe(values: list[float]) -> dict[str, Any]:
    """n, mean, sample std and the 95% t-interval of the mean (None where n is too small)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = statistics.fmean(values)
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = statistics.stdev(values)
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def paired_difference(row: dict[int, float], reference: dict[int, float]) -> dict[str, Any] | None:
    """Row minus reference over the seeds both have (same seed = same data order and init), with
    the 95% t-interval of the mean difference; ``verdict``: noise when the interval contains 0."""
    seeds = sorted(set(row) & set(reference))
    if not seeds:
        return None
    stats = describe([row[s] - reference[s] for s in seeds])
    ci = stats["ci95"]
    verdict = "n/a (1 seed)" if ci is None else ("noise" if ci[0] <= 0.0 <= ci[1] else ("better" if ci[0] > 0 else "worse"))
    return {"seeds": seeds, "mean": stats["mean"], "ci95": ci, "verdict": verdict}


def collect(jobs: list[Job]) -> list[dict[str, Any]]:
    """One dict per job: where it is, its status and what its summary reports."""
    out = []
    for job in jobs:
        record = RunRecord(job.path)
        summary = record.summary() if record.exists() else {"status": "todo"}
        churn = None
        if job.config.mode == "dynamic" and summary.get("status") == "done":
            from heterolora_core.analysis import score_drift, set_churn  # pandas, only when there is a record to read

            reallocations = record.reallocations()
            churn = {**set_churn(reallocations), "on_over_off": score_drift(reallocations)["on_over_off"]}
        out.append({
            "row": job.row.id, "task": job.task, "seed": job.seed, "kind": job.kind, **job.extra,
            "path": str(job.path), "status": summary.get("status"), "metric": summary.get("metric"),
            "final_score": summary.get("final_score"), "best_score": summary.get("best_score"),
            "trainable_params": summary.get("trainable_params"), "head_params": summary.get("head_params"),
            "adalora_initial_params": summary.get("adalora_initial_params"),
            "wall_seconds": summary.get("wall_seconds"), "search_seconds": summary.get("search_seconds"),
            "process_seconds": summary.get("process_seconds"), "peak_rss_mb": summary.get("peak_rss_mb"),
            "peak_gpu_mb": summary.get("peak_gpu_mb"), "device": summary.get("device"),
            "parallel_runs": summary.get("parallel_runs"),
            "steps": summary.get("step"), "error": summary.get("error"), "churn": churn,
        })
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.fmean(values) if values else None


def aggregate(runs: list[dict[str, Any]], model: str = EMBEDDED) -> list[dict[str, Any]]:
    """The table: one entry per (row, task) with at least one planned run, in ``ROWS`` order."""
    done = [r for r in runs if r["status"] == "done" and r["final_score"] is not None]
    finals = {}
    for r in done:
        finals.setdefault((r["row"], r["task"]), {})[r["seed"]] = r["final_score"]
    table = []
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    for task in tasks:
        for row in ROWS:
            planned = [r for r in runs if r["row"] == row.id and r["task"] == task]
            if not planned:
                continue
            mine = [r for r in planned if r["status"] == "done" and r["final_score"] is not None]
            params = sorted({r["trainable_params"] for r in mine if r["trainable_params"] is not None})
            entry = {
                "row": row.id, "label": row.label, "budget": row.budget, "task": task,
                "metric": next((r["metric"] for r in mine if r["metric"]), None),
                "planned": len(planned), "done": len(mine), "seeds": sorted(r["seed"] for r in mine),
                "trainable_params": params[0] if len(params) == 1 else (params or None),
                "expected_params": row.expected_params if model == EMBEDDED else None,
                "adalora_initial_params": next((r["adalora_initial_params"] for r in mine if r["adalora_initial_params"]), None),
                "final": describe([r["final_score"] for r in mine]),
                "best": describe([r["best_score"] for r in mine if r["best_score"] is not None]),
                "wall_seconds": _mean([r["wall_seconds"] for r in mine]),
                "search_seconds": _mean([r["search_seconds"] for r in mine]),
                "peak_rss_mb": _mean([r["peak_rss_mb"] for r in mine]),
                "peak_gpu_mb": _mean([r.get("peak_gpu_mb") for r in mine]),
                "mean_swapped": _mean([r["churn"]["mean_swapped"] for r in mine if r.get("churn")]),
                "ever_enabled": _mean([r["churn"]["ever_enabled"] for r in mine if r.get("churn")]),
                "on_over_off": _mean([r["churn"]["on_over_off"] for r in mine if r.get("churn")]),
                "reference": row.reference,
                "vs_reference": None,
            }
            entry["params_ok"] = (entry["expected_params"] is None or entry["trainable_params"] is None
                                  or entry["trainable_params"] == entry["expected_params"])
            if row.reference and (row.reference, task) in finals and (row.id, task) in finals:
                entry["vs_reference"] = paired_difference(finals[(row.id, task)], finals[(row.reference, task)])
            # rows compared with row 6 (proxy sweep, remedies) also against their budget's uniform row
            uniform = UNIFORM_OF_BUDGET.get(row.budget)
            entry["uniform"] = uniform if uniform not in (None, row.id, row.reference) else None
            entry["vs_uniform"] = None
            if entry["uniform"] and (uniform, task) in finals and (row.id, task) in finals:
                entry["vs_uniform"] = paired_difference(finals[(row.id, task)], finals[(uniform, task)])
            # searched rows also against the random control: is the proxy better than chance?
            control = CONTROL_OF_BUDGET.get(row.budget)
            searched = row.overrides.get("mode") in ("static", "dynamic")
            entry["control"] = control if searched and control not in (row.id, row.reference, entry["uniform"]) else None
            entry["vs_control"] = None
            if entry["control"] and (control, task) in finals and (row.id, task) in finals:
                entry["vs_control"] = paired_difference(finals[(row.id, task)], finals[(control, task)])
            table.append(entry)
    return table


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _final_text(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{_pct(stats['mean'])} ± {_pct(stats['std'])}" if stats["std"] is not None else _pct(stats["mean"])


def _ci_text(ci: list[float] | None) -> str:
    return "" if ci is None else f"[{_pct(ci[0], 1)}, {_pct(ci[1], 1)}]"


def _difference_text(other: str, vs: dict[str, Any]) -> str:
    """``"4: +1.00 [0.2, 1.8] better"``: a paired difference against row ``other``, in points."""
    return f"{other}: {100 * vs['mean']:+.2f} {_ci_text(vs['ci95'])} {vs['verdict']}"


def _seconds(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(table: list[dict[str, Any]]) -> str:
    """The table as text; scores in percent of the task's headline metric."""
    head = (f"{'row':<12} {'configuration':<38} {'task':<5} {'trainable':>10} {'n':>3}  {'final mean ± std':<17} {'95% CI':<15} "
            f"{'best':>6}  {'Δ vs ref (95% CI)':<31} {'wall s':>7} {'search s':>8} {'RSS MiB':>8}")
    lines = [head, "-" * len(head)]
    for e in table:
        b = e["best"]
        final, ci = _final_text(e["final"]), _ci_text(e["final"]["ci95"]) or "-"
        params = e["trainable_params"]
        params_text = f"{params:,}" if isinstance(params, int) else ("-" if params is None else "mixed")
        if not e["params_ok"]:
            params_text += "!"
        vs = e["vs_reference"]
        if vs is None:
            vs_text = "(reference)" if e["reference"] is None else "-"
        else:
            vs_text = _difference_text(e["reference"], vs)
        wall, search, rss = _seconds(e["wall_seconds"]), _seconds(e["search_seconds"], 2), _seconds(e["peak_rss_mb"])
        n = f"{e['done']}" if e["done"] == e["planned"] else f"{e['done']}/{e['planned']}"
        lines.append(f"{e['row']:<12} {e['label'][:38]:<38} {e['task']:<5} {params_text:>10} {n:>3}  {final:<17} {ci:<15} "
                     f"{_pct(b['mean']):>6}  {vs_text:<31} {wall:>7} {search:>8} {rss:>8}")
    metrics = sorted({e["metric"] for e in table if e["metric"]})
    lines.append(f"scores: dev {'/'.join(metrics) or 'score'} in %, final epoch (headline) and best epoch; "
                 "Δ: paired by seed against the reference row; noise = its 95% interval contains 0")
    for e in table:
        if e["adalora_initial_params"]:
            lines.append(f"row {e['row']} ({e['task']}): AdaLoRA's counted parameters after its final allocation "
                         f"(kept rank x (d_in + d_out + 1)); {e['adalora_initial_params']:,} at init_r")
    if any(not e["params_ok"] for e in table):
        lines.append("!: trainable parameters differ from the row's stated budget")
    return "\n".join(lines)


def format_markdown(table: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """The table as Markdown for ``docs/results.md``: one section per task, then every run.
    "set swapped / ever on": a dynamic row's mean share of its enabled set switched off per
    reallocation, and how many modules were ever on (:func:`heterolora_core.analysis.set_churn`);
    "drift on/off": the median score change of modules that were trained since the last
    reallocation over that of the resting ones (:func:`heterolora_core.analysis.score_drift`);
    "RSS MiB" / "GPU MiB": the runs' mean peak resident memory (``os.wait4``) and peak GPU memory
    allocated (``torch.cuda.max_memory_allocated``; "-" on a CPU)."""
    out = []
    for task in dict.fromkeys(e["task"] for e in table):
        metric = next((e["metric"] for e in table if e["task"] == task and e["metric"]), "score")
        out += [f"#### {task.upper()} ({metric}, %)", "",
                "| row | configuration | trainable | seeds | final mean ± std | 95% CI | best epoch | Δ vs ref (95% CI) "
                "| wall s | search s | set swapped / ever on | drift on/off | RSS MiB | GPU MiB |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in (e for e in table if e["task"] == task):
            if e["vs_reference"] is None:
                vs_text = "(reference)" if e["reference"] is None else "-"
            else:
                vs_text = "vs " + _difference_text(e["reference"], e["vs_reference"])
            if e.get("vs_uniform"):
                vs_text += "; vs " + _difference_text(e["uniform"], e["vs_uniform"])
            if e.get("vs_control"):
                vs_text += "; vs " + _difference_text(e["control"], e["vs_control"])
            params = e["trainable_params"]
            churn = "-" if e.get("mean_swapped") is None else f"{100 * e['mean_swapped']:.0f}% / {e['ever_enabled']:.0f}"
            out.append(f"| {e['row']} | {e['label']} | {f'{params:,}' if isinstance(params, int) else '-'} "
                       f"| {','.join(map(str, e['seeds'])) or '-'} | {_final_text(e['final'])} | {_ci_text(e['final']['ci95']) or '-'} "
                       f"| {_pct(e['best']['mean'])} | {vs_text} | {_seconds(e['wall_seconds'])} "
                       f"| {_seconds(e['search_seconds'], 2)} | {churn} | {_seconds(e.get('on_over_off'), 2)} "
                       f"| {_seconds(e['peak_rss_mb'])} | {_seconds(e.get('peak_gpu_mb'))} |")
        out.append("")
    out += ["#### Every run", "", "| task | row | seed | final | best | steps | wall s | search s | set swapped / ever on | drift on/off |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["task"], r["row"], r["seed"])):
        if r["status"] != "done":
            continue
        churn = "-" if not r.get("churn") else f"{100 * r['churn']['mean_swapped']:.0f}% / {r['churn']['ever_enabled']}"
        out.append(f"| {r['task']} | {r['row']} | {r['seed']} | {_pct(r['final_score'])} | {_pct(r['best_score'])} | {r.get('steps', '-')} "
                   f"| {_seconds(r['wall_seconds'])} | {_seconds(r['search_seconds'] or 0.0, 2)} | {churn} "
                   f"| {_seconds((r.get('churn') or {}).get('on_over_off'), 2)} |")
    return "\n".join(out) + "\n"


def lr_sweep_table(runs: list[dict[str, Any]]) -> str:
    lines = [f"{'task':<5} {'row':<4} {'lr':>8} {'final':>7} {'best':>7} {'status':<8}"]
    for r in sorted(runs, key=lambda r: (r["task"], r["row"], r["lr"])):
        lines.append(f"{r['task']:<5} {r['row']:<4} {r['lr']:>8g} {_pct(r['final_score']):>7} "
                     f"{_pct(r['best_score']):>7} {r['status']:<8}")
    return "\n".join(lines)


def memory_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median peak RSS of the dynamic and the uniform runs, their ratio and the paired ratios."""
    uniform_id, dynamic_id = MEMORY_PAIR
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["status"] == "done" and r["peak_rss_mb"]:
            by_round.setdefault(r["round"], {})[r["row"]] = r["peak_rss_mb"]
    uniform = [v[uniform_id] for v in by_round.values() if uniform_id in v]
    dynamic = [v[dynamic_id] for v in by_round.values() if dynamic_id in v]
    pairs = [v[dynamic_id] / v[uniform_id] for v in by_round.values() if uniform_id in v and dynamic_id in v]
    out: dict[str, Any] = {"uniform_row": uniform_id, "dynamic_row": dynamic_id, "uniform_mb": uniform,
                           "dynamic_mb": dynamic, "target_ratio": MEMORY_TARGET}
    if uniform and dynamic:
        out["median_uniform_mb"] = statistics.median(uniform)
        out["median_dynamic_mb"] = statistics.median(dynamic)
        out["ratio_of_medians"] = out["median_dynamic_mb"] / out["median_uniform_mb"]
        out["median_paired_ratio"] = statistics.median(pairs) if pairs else None
        out["within_target"] = out["ratio_of_medians"] <= MEMORY_TARGET
    return out


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", help="comma list (default: mrpc,rte; smoke: mrpc)")
    p.add_argument("--seeds", help="comma list (default: 0,1,2; smoke: 0)")
    p.add_argument("--rows", help="all, sweep, diagnostics, or row ids such as 4,6,8,9,6.snip (default: all; smoke: 4,6)")
    p.add_argument("--epochs", type=float, default=3.0, help="training epochs of every row (default: 3)")
    p.add_argument("--max-steps", type=int, help="stop every run after N steps (a trial; overrides --epochs)")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate of every row (default: 5e-4)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--model", default=EMBEDDED)
    p.add_argument("--device", default="auto")
    p.add_argument("--results", help="run records folder (default: data/results; smoke: a new temporary folder)")
    p.add_argument("--json", help="where to write the JSON (default: <results>/quality_grid.json)")
    p.add_argument("--lr-sweep", help="comma list of learning rates: run rows 1 and 6, seed 0, at each (instead of the grid)")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS of a dynamic (row 6) vs uniform (row 4) run")
    p.add_argument("--memory-rounds", type=int, help="rounds of the memory pair (default: 3; smoke: 1)")
    p.add_argument("--memory-steps", type=int, default=100, help="steps of each memory run (default: 100)")
    p.add_argument("--smoke", action="store_true", help="tiny runs (train/dev limit 32, 4 steps, length 32) in a temp folder")
    p.add_argument("--report-only", action="store_true", help="no training: the table from the records there are")
    p.add_argument("--markdown", help="also write the grid's tables as Markdown to this file (for docs/results.md)")
    p.add_argument("--dry-run", action="store_true", help="print the commands of the runs still to do")
    p.add_argument("--parallel", type=int, default=1,
                   help="runs at once (default 1; more only on a GPU: CPU runs would share the cores)")
    p.add_argument("--deadline-minutes", type=float,
                   help="start no run after this many minutes (what is left runs on the next invocation)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    smoke = args.smoke
    tasks = [t.strip() for t in (args.tasks or ("mrpc" if smoke else ",".join(DEFAULT_TASKS))).split(",") if t.strip()]
    seeds = [int(s) for s in (args.seeds or ("0" if smoke else ",".join(map(str, DEFAULT_SEEDS)))).split(",") if s.strip()]
    rows = parse_rows(args.rows or ("4,6" if smoke else "all"))
    settings = Settings(epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size,
                        max_length=args.max_length, model=args.model, device=args.device)
    if smoke:
        settings = dataclasses.replace(settings, **SMOKE)
    if args.results:
        results = Path(args.results).expanduser().resolve()
    elif smoke:
        results = Path(tempfile.mkdtemp(prefix="quality-grid-smoke-"))
    else:
        results = ROOT / "data" / "results"
    json_path = Path(args.json) if args.json else results / "quality_grid.json"
    print(f"results: {results}", flush=True)
    log = lambda message: print(message, flush=True)  # noqa: E731
    run_options = dict(parallel=max(1, args.parallel),
                       deadline=time.monotonic() + 60 * args.deadline_minutes if args.deadline_minutes else None)

    output: dict[str, Any] = {"generated_at": time.strftime("%Y-%m-%d %H:%M:%S"), "results": str(results),
                              "settings": settings.to_dict(), "smoke": smoke}
    if args.lr_sweep:
        lrs = [float(x) for x in args.lr_sweep.split(",") if x.strip()]
        jobs = plan_lr_sweep(lrs, tasks, settings, results)
        if not args.report_only:
            output["counts"] = execute(jobs, args.dry_run, log, results / PAUSE_FILE, **run_options)
        runs = collect(jobs)
        print("\n" + lr_sweep_table(runs))
        output.update(kind="lr-sweep", lrs=lrs, runs=runs)
        json_path = Path(args.json) if args.json else results / "lr_sweep.json"
    else:
        jobs = plan(rows, tasks, seeds, settings, results)
        if not jobs:
            raise SystemExit("nothing to run: no row fits the given tasks")
        memory_jobs = []
        if args.memory:
            rounds = args.memory_rounds or (1 if smoke else 3)
            memory_jobs = plan_memory(tasks[0], rounds, settings, results,
                                      None if smoke else args.memory_steps)
        if not args.report_only:
            output["counts"] = execute(jobs + memory_jobs, args.dry_run, log, results / PAUSE_FILE, **run_options)
        runs = collect(jobs)
        table = aggregate(runs, settings.model)
        print("\n" + format_table(table))
        if args.markdown and not args.dry_run:
            Path(args.markdown).write_text(format_markdown(table, runs))
            print(f"wrote {args.markdown}")
        output.update(kind="grid", rows={r.id: dataclasses.asdict(r) for r in ROWS if r.id in rows},
                      table=table, runs=runs)
        if memory_jobs:
            memory = memory_summary(collect(memory_jobs))
            output["memory"] = memory
            if "ratio_of_medians" in memory:
                print(f"\npeak RSS, dynamic row {memory['dynamic_row']} / uniform row {memory['uniform_row']}: "
                      f"{memory['median_dynamic_mb']:.0f} / {memory['median_uniform_mb']:.0f} MiB = "
                      f"{memory['ratio_of_medians']:.3f} (target <= {MEMORY_TARGET}; "
                      f"{'met' if memory['within_target'] else 'NOT met'})")
    if args.dry_run:
        return 0
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(output, indent=2))
    print(f"\nwrote {json_path}")
    failed = output.get("counts", {}).get("failed", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
