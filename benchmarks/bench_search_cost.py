"""Search cost: wall time of a dynamic HeteroLoRA run against a uniform LoRA run of the same steps.

MRPC, the embedded model, full training set, batch 16 (229 steps per epoch, so the default
reallocation every 1/5 epoch happens at steps 46, 92, ... plus step 0). Three configurations at
the same trainable budget (221,184 adapter parameters):

- uniform : uniform LoRA q,v at rank 24
- dynamic : dynamic HeteroLoRA, grad_norm, rank 32, 9 of 35 candidates (defaults: scores from the
            training steps' own gradients)
- authors : the same with the authors' scoring (32 extra forward/backward batches per reallocation)

Runs are separate processes (``python -m heterolora_core train``), alternated uniform, dynamic,
authors, then the next round in rotated order; ratios are medians over rounds of the paired
times. Reports wall time (process start to end of the run record) and the training-loop time.

    python benchmarks/bench_search_cost.py [--rounds 3] [--max-steps 100] [--out benchmarks/results/search_cost.json]
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from heterolora_core.records.home import PROJECT_ROOT as ROOT
from heterolora_core.records.record import RunRecord

CONFIGS = {
    "uniform": ["--mode", "lora", "--rank", "24", "--no-shortcuts"],
    "dynamic": ["--mode", "dynamic", "--rank", "32", "--match-uniform-rank", "24", "--shortcuts"],
    "authors": ["--mode", "dynamic", "--rank", "32", "--match-uniform-rank", "24", "--shortcuts",
                "--proxy-batches", "32"],
}


def run_once(name: str, args, out_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "heterolora_core", "train", "--task", "mrpc", "--proxy", "grad_norm",
           "--max-steps", str(args.max_steps), "--batch-size", "16", "--lr", "5e-4", "--seed", str(args.seed),
           "--logging-steps", "50", "--no-progress", "--out", str(out_dir), *CONFIGS[name]]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = RunRecord(out_dir).summary()
    return {"process_seconds": wall, "train_seconds": summary.train_seconds, "wall_seconds": summary.wall_seconds,
            "search_seconds": summary.search_seconds, "final_score": summary.final_score,
            "trainable_params": summary.trainable_params, "num_reallocations": summary.num_reallocations}


def main() -> None:
    parser = common.parser(__doc__, "search_cost.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default="uniform,dynamic,authors")
    args = parser.parse_args()
    names = args.configs.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                result = run_once(name, args, Path(tmp) / f"{name}-{r}")
                runs[name].append(result)
                print(f"round {r} {name:<8} process {result['process_seconds']:6.1f} s  train {result['train_seconds']:6.1f} s  "
                      f"search {result['search_seconds']:6.2f} s  dev acc {result['final_score']:.4f}", flush=True)

    def ratio(name: str, key: str) -> float:
        return statistics.median(a[key] / b[key] for a, b in zip(runs[name], runs["uniform"]))

    table = {}
    for name in names:
        table[name] = {
            "median_process_seconds": statistics.median(x["process_seconds"] for x in runs[name]),
            "median_train_seconds": statistics.median(x["train_seconds"] for x in runs[name]),
            "median_search_seconds": statistics.median(x["search_seconds"] for x in runs[name]),
            "dev_accuracy": [x["final_score"] for x in runs[name]],
            "trainable_params": runs[name][0]["trainable_params"],
            "num_reallocations": runs[name][0]["num_reallocations"],
        }
        if name != "uniform" and "uniform" in runs:
            table[name]["process_ratio_vs_uniform"] = ratio(name, "process_seconds")
            table[name]["train_ratio_vs_uniform"] = ratio(name, "train_seconds")
    print(f"\n{'config':<9} {'trainable':>10} {'reallocs':>8} {'process s':>10} {'train s':>9} {'search s':>9} "
          f"{'process x':>10} {'train x':>8}  dev accuracy")
    for name, row in table.items():
        print(f"{name:<9} {row['trainable_params']:>10,} {row['num_reallocations']:>8} {row['median_process_seconds']:>10.1f} "
              f"{row['median_train_seconds']:>9.1f} {row['median_search_seconds']:>9.2f} "
              f"{row.get('process_ratio_vs_uniform', 1.0):>10.3f} {row.get('train_ratio_vs_uniform', 1.0):>8.3f}  "
              f"{', '.join(f'{s:.4f}' for s in row['dev_accuracy'])}")
    common.write_json(args.out, {"max_steps": args.max_steps, "rounds": args.rounds, "runs": runs, "table": table})


if __name__ == "__main__":
    main()
