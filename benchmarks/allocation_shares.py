"""Where searches put their budget: per row of the quality grid, the share of enabled slots per
layer and per group (LoRA / shortcut), averaged over seeds, beside the row's mean final score.

Reads the grid's run records (no training). A module's weight is its enable frequency over the
run's reallocations (``heterolora_core.analysis.allocation.slot_shares``); each seed's shares are
computed from its own record and then averaged (``benchmarks.grid.report.row_shares``).

    python benchmarks/allocation_shares.py --results data/results/gpu/lr0.0005 --task mrpc \\
        --rows 6,6.snip,6.synflow,6.fisher,6.alpha_test,7,8,3,2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import common
from benchmarks.grid.report import row_shares, shares_markdown
from benchmarks.grid.rows import parse_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, help="a grid folder (<results>/<task>/<row>/seed<k>)")
    p.add_argument("--task", default="mrpc")
    p.add_argument("--rows", default="6,7,8,3,2", help="row ids (searched rows: static or dynamic)")
    p.add_argument("--seeds", type=common.int_list, default="0,1,2")
    p.add_argument("--json", help="also write the shares here")
    args = p.parse_args(argv)
    results = Path(args.results)
    rows = parse_rows(args.rows)
    seeds = args.seeds
    entries = [e for e in (row_shares(results, args.task, r, seeds) for r in rows) if e is not None]
    if not entries:
        raise SystemExit(f"no finished records of rows {', '.join(rows)} for {args.task} under {results}")
    print(shares_markdown(entries))
    if args.json:
        Path(args.json).write_text(json.dumps(entries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
