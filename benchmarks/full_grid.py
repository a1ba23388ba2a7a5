"""The whole quality grid in one unattended sitting: learning-rate sweep, the choice it implies, grid.

For a machine that trains several runs at once (a GPU: ``--device cuda --parallel 12``). On this
project's 2-core CPU use ``quality_grid.py`` step by step instead. The steps, per task:

1. learning-rate sweep: rows 1 (uniform LoRA q,v r8) and 6 (dynamic HeteroLoRA), seed 0, at each
   of ``--lrs``: ``<results>/lr-sweep/<task>/<row>/lr<lr>/seed0``;
2. the choice: ``lr_uniform`` is the rate of row 1's best final-epoch dev score, ``lr_hetero``
   row 6's (ties go to the smaller rate). Every row runs at ``lr_uniform``; where ``lr_hetero``
   differs, every row runs at it too (the issue's "report both");
3. the grid: every row (on MRPC also the proxy sweep) and seed at the chosen rate(s), then the
   row-6 diagnostics on MRPC at ``lr_hetero``: ``<results>/lr<lr>/<task>/<row>/seed<k>``. Runs are
   started in the quality grid's order (rows 4, 6, 8, 9 on MRPC; on RTE; rows 1 and 3; the rest),
   seed by seed, so a sitting cut short by ``--deadline-minutes`` ends with comparable rows.

Resumable like ``quality_grid.py``: a finished run is skipped, so a second invocation goes on
where the first stopped. Writes ``<results>/full_grid.json`` (choice, counts, one table per task
and rate) and ``<results>/full_grid.md`` (the Markdown tables for ``docs/results.md``).

    python benchmarks/full_grid.py --results data/results/gpu --device cuda --parallel 12
    python benchmarks/full_grid.py --results data/results/gpu --report-only
    python benchmarks/full_grid.py --smoke          # tiny runs in a temporary folder (CI)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_grid as qg  # noqa: E402  (no torch)

DEFAULT_LRS = (2e-4, 5e-4, 1e-3, 2e-3)
UNIFORM_ROW, HETERO_ROW = qg.LR_SWEEP_ROWS  # "1", "6"


def choose_lrs(sweep_runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task ``{"uniform": lr, "hetero": lr}``: the rate of the best final-epoch score of row 1
    and of row 6 in the sweep (ties: the smaller rate); a task whose sweep has no finished run of
    a row gets no entry for it."""
    choice: dict[str, dict[str, float]] = {}
    for run in sweep_runs:
        if run["status"] != "done" or run["final_score"] is None:
            continue
        key = {UNIFORM_ROW: "uniform", HETERO_ROW: "hetero"}.get(run["row"])
        if key is None:
            continue
        best = choice.setdefault(run["task"], {}).get(key)
        current = (run["final_score"], -run["lr"])
        if best is None or current > best[0]:
            choice[run["task"]][key] = (current, run["lr"])
    return {task: {k: v[1] for k, v in picks.items()} for task, picks in choice.items()}


def _phase(job: qg.Job) -> int:
    """The index of the first ``qg.RUN_ORDER`` phase that holds the job's row and task."""
    for i, (rows, tasks) in enumerate(qg.RUN_ORDER):
        if job.row.id in rows and (tasks is None or job.task in tasks):
            return i
    return len(qg.RUN_ORDER)


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
        names = qg.parse_rows("diagnostics")
        for task, picks in choice.items():
            lr = picks.get("hetero", picks.get("uniform"))
            if lr is not None and any(task in (qg.ROW_BY_ID[r].tasks or (task,)) for r in names):
                groups.append((task, lr, names, 2))
    return groups


def plan_grid(groups: list[tuple[str, float, list[str], int]], seeds: list[int], settings: qg.Settings,
              results: Path) -> list[qg.Job]:
    """Every group's jobs, by tier, then in the quality grid's run order (phase, then seed)."""
    keyed = []
    for task, lr, rows, tier in groups:
        for job in qg.plan(rows, [task], seeds, dataclasses.replace(settings, lr=lr), lr_folder(results, lr)):
            job.extra["lr"] = lr
            keyed.append(((tier, _phase(job), job.seed, len(keyed)), job))
    return [job for _, job in sorted(keyed, key=lambda kv: kv[0])]


def report(groups, seeds, settings, results: Path) -> tuple[list[dict[str, Any]], str]:
    """One table per (task, lr) group (diagnostics joined to the grid at the same rate)."""
    merged: dict[tuple[str, float], list[str]] = {}
    for task, lr, rows, _ in groups:
        merged.setdefault((task, lr), [])
        merged[(task, lr)] += [r for r in rows if r not in merged[(task, lr)]]
    tables, markdown = [], []
    for (task, lr), rows in merged.items():
        jobs = qg.plan(rows, [task], seeds, dataclasses.replace(settings, lr=lr), lr_folder(results, lr))
        runs = qg.collect(jobs)
        table = qg.aggregate(runs, settings.model)
        tables.append({"task": task, "lr": lr, "folder": str(lr_folder(results, lr)), "table": table, "runs": runs})
        print(f"\n== {task} at lr {lr:g} ({lr_folder(results, lr)})\n" + qg.format_table(table))
        markdown.append(f"### {task.upper()} at lr {lr:g}\n\n" + qg.format_markdown(table, runs))
    return tables, "\n".join(markdown)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(qg.DEFAULT_TASKS))
    p.add_argument("--seeds", default=",".join(map(str, qg.DEFAULT_SEEDS)))
    p.add_argument("--lrs", default=",".join(f"{x:g}" for x in DEFAULT_LRS), help="the sweep's learning rates")
    p.add_argument("--rows", default="all", help="rows of the grid (default: all, with the MRPC proxy sweep)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--model", default=qg.EMBEDDED)
    p.add_argument("--device", default="auto")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (GPU); default 1")
    p.add_argument("--deadline-minutes", type=float, help="start no run after this many minutes")
    p.add_argument("--results", help="records folder (default: data/results/full; smoke: a new temporary folder)")
    p.add_argument("--report-only", action="store_true", help="no training: choice and tables from the records")
    p.add_argument("--smoke", action="store_true", help="tiny runs: MRPC, seed 0, lrs 5e-4,1e-3, rows 1,6, 4 steps")
    args = p.parse_args(argv)

    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    lrs = [float(x) for x in args.lrs.split(",") if x]
    rows = qg.parse_rows(args.rows)
    settings = qg.Settings(epochs=args.epochs, max_steps=args.max_steps, model=args.model, device=args.device)
    if args.smoke:
        tasks, seeds, lrs, rows = ["mrpc"], [0], [5e-4, 1e-3], ["1", "6"]
        settings = dataclasses.replace(settings, **qg.SMOKE)
    results = Path(args.results).expanduser().resolve() if args.results else (
        Path(tempfile.mkdtemp(prefix="full-grid-smoke-")) if args.smoke else qg.ROOT / "data" / "results" / "full")
    print(f"results: {results}", flush=True)
    log = lambda message: print(message, flush=True)  # noqa: E731
    deadline = time.monotonic() + 60 * args.deadline_minutes if args.deadline_minutes else None
    execute = functools.partial(qg.execute, log=log, pause_file=results / qg.PAUSE_FILE,
                                parallel=args.parallel, deadline=deadline)  # one deadline for every step
    counts: dict[str, dict[str, int]] = {}

    sweep_jobs = qg.plan_lr_sweep(lrs, tasks, settings, results)
    if not args.report_only:
        counts["lr-sweep"] = execute(sweep_jobs)
    sweep_runs = qg.collect(sweep_jobs)
    print("\n" + qg.lr_sweep_table(sweep_runs), flush=True)
    choice = choose_lrs(sweep_runs)
    print("choice: " + "; ".join(f"{t}: row {UNIFORM_ROW} at {c.get('uniform', '-')}, row {HETERO_ROW} at "
                                 f"{c.get('hetero', '-')}" for t, c in choice.items()), flush=True)
    groups = grid_groups(choice, rows, diagnostics=not args.smoke)
    jobs = plan_grid(groups, seeds, settings, results)
    if not args.report_only:
        counts["grid"] = execute(jobs)
    tables, markdown = report(groups, seeds, settings, results)
    output = {"generated_at": time.strftime("%Y-%m-%d %H:%M:%S"), "results": str(results),
              "settings": settings.to_dict(), "smoke": args.smoke, "lrs": lrs, "parallel": args.parallel,
              "choice": choice, "groups": [{"task": t, "lr": lr, "rows": r, "tier": k} for t, lr, r, k in groups],
              "counts": counts, "lr_sweep": sweep_runs, "tables": tables}
    results.mkdir(parents=True, exist_ok=True)
    (results / "full_grid.json").write_text(json.dumps(output, indent=2))
    (results / "full_grid.md").write_text(markdown)
    print(f"\nwrote {results / 'full_grid.json'} and full_grid.md")
    return 1 if any(c.get("failed") for c in counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
