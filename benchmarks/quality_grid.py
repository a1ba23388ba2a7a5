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

The rows are the sweep file ``benchmarks/grids/quality.yaml`` (``python -m heterolora_core sweep``
runs it as it is); this script runs a chosen part of it and writes its report. Each (row, task,
seed) run is queued in the run store of the data home and trained by the queue worker
(:mod:`heterolora_core.records.worker`), ``--parallel`` at a time, which reads each run's peak
resident memory from the kernel (``os.wait4``), so one crash never stops the grid. The grid is
**resumable**: a run folder whose summary says ``done`` (with the same settings) is skipped; a
failed, cancelled or dead one is removed and rerun; one that is queued or running is left to the
queue. Default run order (``--rows all``): rows 4, 6, 8, 9 on MRPC; the same on RTE; rows 1 and 3;
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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from heterolora_core.records.home import data_home

from benchmarks.grid.report import MEMORY_TARGET, aggregate, collect, format_markdown, format_table, lr_sweep_table, memory_summary
from benchmarks.grid.rows import (DEFAULT_SEEDS, DEFAULT_TASKS, EMBEDDED, ROWS, SMOKE, Settings, parse_rows, plan,
                                  plan_lr_sweep, plan_memory)
from benchmarks.grid.runner import PAUSE_FILE, execute


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
        results = data_home() / "results"
    json_path = Path(args.json) if args.json else results / "quality_grid.json"
    print(f"results: {results}", flush=True)
    log = lambda message: print(message, flush=True)  # noqa: E731
    run_options = dict(parallel=max(1, args.parallel), results=results,
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
