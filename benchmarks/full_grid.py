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

Runs are queued in the run store and trained by the queue worker (``--parallel`` slots), like
``quality_grid.py``, and resumable like it: a finished run is skipped, so a second invocation goes
on where the first stopped. Writes ``<results>/full_grid.json`` (choice, counts, one table per task
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

from heterolora_core.records.home import data_home

from benchmarks import common
from benchmarks.grid.report import aggregate, choose_lrs, collect, format_markdown, format_table, lr_sweep_table
from benchmarks.grid.rows import (DEFAULT_SEEDS, DEFAULT_TASKS, EMBEDDED, HETERO_ROW, SMOKE, UNIFORM_ROW, Settings,
                                  grid_groups, lr_folder, parse_rows, plan, plan_grid, plan_lr_sweep)
from benchmarks.grid.runner import PAUSE_FILE, execute

DEFAULT_LRS = (2e-4, 5e-4, 1e-3, 2e-3)


def report(groups, seeds, settings, results: Path) -> tuple[list[dict[str, Any]], str]:
    """One table per (task, lr) group (diagnostics joined to the grid at the same rate)."""
    merged: dict[tuple[str, float], list[str]] = {}
    for task, lr, rows, _ in groups:
        merged.setdefault((task, lr), [])
        merged[(task, lr)] += [r for r in rows if r not in merged[(task, lr)]]
    tables, markdown = [], []
    for (task, lr), rows in merged.items():
        jobs = plan(rows, [task], seeds, dataclasses.replace(settings, lr=lr), lr_folder(results, lr))
        runs = collect(jobs)
        table = aggregate(runs, settings.model)
        tables.append({"task": task, "lr": lr, "folder": str(lr_folder(results, lr)), "table": table, "runs": runs})
        print(f"\n== {task} at lr {lr:g} ({lr_folder(results, lr)})\n" + format_table(table))
        markdown.append(f"### {task.upper()} at lr {lr:g}\n\n" + format_markdown(table, runs))
    return tables, "\n".join(markdown)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    p.add_argument("--seeds", type=common.int_list, default=",".join(map(str, DEFAULT_SEEDS)))
    p.add_argument("--lrs", type=common.positive_float_list, default=",".join(f"{x:g}" for x in DEFAULT_LRS),
                   help="the sweep's learning rates")
    p.add_argument("--rows", default="all", help="rows of the grid (default: all, with the MRPC proxy sweep)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--model", default=EMBEDDED)
    p.add_argument("--device", default="auto")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (GPU); default 1")
    p.add_argument("--deadline-minutes", type=float, help="start no run after this many minutes")
    p.add_argument("--results", help="records folder (default: data/results/full; smoke: a new temporary folder)")
    p.add_argument("--report-only", action="store_true", help="no training: choice and tables from the records")
    p.add_argument("--smoke", action="store_true", help="tiny runs: MRPC, seed 0, lrs 5e-4,1e-3, rows 1,6, 4 steps")
    args = p.parse_args(argv)

    tasks = [t for t in args.tasks.split(",") if t]
    seeds, lrs = args.seeds, args.lrs
    rows = parse_rows(args.rows)
    settings = Settings(epochs=args.epochs, max_steps=args.max_steps, model=args.model, device=args.device)
    if args.smoke:
        tasks, seeds, lrs, rows = ["mrpc"], [0], [5e-4, 1e-3], ["1", "6"]
        settings = dataclasses.replace(settings, **SMOKE)
    results = Path(args.results).expanduser().resolve() if args.results else (
        Path(tempfile.mkdtemp(prefix="full-grid-smoke-")) if args.smoke else data_home() / "results" / "full")
    print(f"results: {results}", flush=True)
    log = lambda message: print(message, flush=True)  # noqa: E731
    deadline = time.monotonic() + 60 * args.deadline_minutes if args.deadline_minutes else None
    run = functools.partial(execute, log=log, pause_file=results / PAUSE_FILE, results=results,
                            parallel=args.parallel, deadline=deadline)  # one deadline for every step
    counts: dict[str, dict[str, int]] = {}

    sweep_jobs = plan_lr_sweep(lrs, tasks, settings, results)
    if not args.report_only:
        counts["lr-sweep"] = run(sweep_jobs)
    sweep_runs = collect(sweep_jobs)
    print("\n" + lr_sweep_table(sweep_runs), flush=True)
    choice = choose_lrs(sweep_runs)
    print("choice: " + "; ".join(f"{t}: row {UNIFORM_ROW} at {c.get('uniform', '-')}, row {HETERO_ROW} at "
                                 f"{c.get('hetero', '-')}" for t, c in choice.items()), flush=True)
    groups = grid_groups(choice, rows, diagnostics=not args.smoke)
    jobs = plan_grid(groups, seeds, settings, results)
    if not args.report_only:
        counts["grid"] = run(jobs)
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
