"""Where searches put their budget: per row of the quality grid, the share of enabled slots per
layer and per family (LoRA / shortcut), averaged over seeds, beside the row's mean final score.

Reads the grid's run records (no training). A module's weight is its enable frequency over the
run's reallocations (``heterolora_core.analysis.slot_shares``); each seed's shares are computed from
its own record and then averaged.

    python benchmarks/allocation_shares.py --results data/results/gpu/lr0.0005 --task mrpc \\
        --rows 6,6.snip,6.synflow,6.fisher,6.alpha_test,7,8,3,2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_grid as qg  # noqa: E402

from heterolora_core.analysis import slot_shares  # noqa: E402
from heterolora_core.runs import RunRecord  # noqa: E402


def row_shares(results: Path, task: str, row_id: str, seeds: list[int]) -> dict[str, Any] | None:
    """Mean layer and family shares and mean final score over the row's finished seeds (None if none)."""
    row = qg.ROW_BY_ID[row_id]
    per_seed, finals = [], []
    for seed in seeds:
        record = RunRecord(results / task / row.slug / f"seed{seed}")
        if not record.exists() or record.summary().get("status") != "done":
            continue
        per_seed.append(slot_shares(record.reallocations()))
        finals.append(record.summary().get("final_score"))
    if not per_seed:
        return None
    layers = sorted({k for s in per_seed for k in s["layer"]})
    return {
        "row": row_id, "label": row.label, "seeds": len(per_seed),
        "layer": {k: statistics.fmean(s["layer"].get(k, 0.0) for s in per_seed) for k in layers},
        "lora": statistics.fmean(s["family"].get("lora", 0.0) for s in per_seed),
        "final": qg._mean(finals),
    }


def markdown(entries: list[dict[str, Any]]) -> str:
    layers = sorted({k for e in entries for k in e["layer"]})
    lines = [f"| row | layers {' / '.join(map(str, layers))} | LoRA share | seeds | final % (mean) |",
             "|---|---|---|---|---|"]
    for e in entries:
        shares = " / ".join(f"{100 * e['layer'].get(k, 0.0):.0f}%" for k in layers)
        final = "-" if e["final"] is None else f"{100 * e['final']:.2f}"
        lines.append(f"| {e['row']} {e['label']} | {shares} | {100 * e['lora']:.0f}% | {e['seeds']} | {final} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, help="a grid folder (<results>/<task>/<row>/seed<k>)")
    p.add_argument("--task", default="mrpc")
    p.add_argument("--rows", default="6,7,8,3,2", help="row ids (searched rows: static or dynamic)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--json", help="also write the shares here")
    args = p.parse_args(argv)
    results = Path(args.results)
    rows = qg.parse_rows(args.rows)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    entries = [e for e in (row_shares(results, args.task, r, seeds) for r in rows) if e is not None]
    if not entries:
        raise SystemExit(f"no finished records of rows {', '.join(rows)} for {args.task} under {results}")
    print(markdown(entries))
    if args.json:
        Path(args.json).write_text(json.dumps(entries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
