"""How long ``python -m heterolora_core recommend`` takes end to end, and where the time goes.

The issue's target: the embedded model, MRPC, a budget of 73,728 parameters (uniform q,v at rank
8), grad_norm, in at most 30 s on the project's CPU. Each repeat runs the command as a user does
(a fresh process, a fresh record) and splits its time with the engine's own numbers:

    end to end      the command's wall time, process start to exit
    startup         ``python -c "import heterolora_core.recommend"`` alone (interpreter, torch, transformers)
    model load      ``load_classifier`` of the model alone, in this process (measured separately)
    allocation      the record's ``search_seconds`` (scoring the calibration batches and allocating)
    rest            end to end - startup - model load - allocation (checks, data, PEFT key checks, writes)

Prints a table and writes ``benchmarks/results/recommend.json``. Run it on an idle machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from benchmarks.common import parser, positive_int_list, write_json
from heterolora_core.records.home import PROJECT_ROOT
from heterolora_core.records.record import RunRecord


def timed_command(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


def model_load_seconds(model: str) -> float:
    from heterolora_core.training.models import load_classifier

    start = time.perf_counter()
    load_classifier(model, 2)
    return time.perf_counter() - start


def one_repeat(opts, batches: int, home: Path, env: dict[str, str]) -> dict:
    record = home / "runs" / f"rec-{batches}-{time.time_ns()}"
    args = ["-m", "heterolora_core", "recommend", "--model", opts.model, "--task", opts.task, "--budget-params",
            str(opts.budget), "--proxy", opts.proxy, "--batches", str(batches), "--record", str(record), "--quiet"]
    total, done = timed_command(args, env)
    if done.returncode != 0:
        raise SystemExit(f"recommend failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    startup, _ = timed_command(["-c", "import heterolora_core.recommend"], env)
    summary = RunRecord(record).summary()
    return {"batches": batches, "end_to_end_s": total, "startup_s": startup,
            "allocation_s": summary.search_seconds, "trainable_params": summary.trainable_params}


def main() -> None:
    p = parser(__doc__, "recommend.json")
    p.add_argument("--model", default="embedded")
    p.add_argument("--task", default="mrpc")
    p.add_argument("--budget", type=int, default=73_728)
    p.add_argument("--proxy", default="grad_norm")
    p.add_argument("--batches", type=positive_int_list, default=[8], help="calibration batches to try (default: 8)")
    p.add_argument("--repeats", type=int, default=3)
    opts = p.parse_args()
    load = median(model_load_seconds(opts.model) for _ in range(opts.repeats))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-recommend-") as home:
        env = {**os.environ, "HETEROLORA_HOME": home, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        for batches in opts.batches:
            runs = [one_repeat(opts, batches, Path(home), env) for _ in range(opts.repeats)]
            row = {key: median(r[key] for r in runs) for key in ("end_to_end_s", "startup_s", "allocation_s")}
            row.update(batches=batches, model_load_s=load, trainable_params=runs[0]["trainable_params"],
                       repeats=opts.repeats)
            row["rest_s"] = row["end_to_end_s"] - row["startup_s"] - load - row["allocation_s"]
            rows.append(row)
    print(f"recommend: {opts.model}, {opts.task}, budget {opts.budget:,}, {opts.proxy}; median of {opts.repeats}")
    print(f"{'batches':>7} {'end to end s':>12} {'startup s':>9} {'model load s':>12} {'allocation s':>12} {'rest s':>7}")
    for r in rows:
        print(f"{r['batches']:>7} {r['end_to_end_s']:>12.2f} {r['startup_s']:>9.2f} {r['model_load_s']:>12.2f} "
              f"{r['allocation_s']:>12.2f} {r['rest_s']:>7.2f}")
    write_json(opts.out, {"setting": {"model": opts.model, "task": opts.task, "budget": opts.budget,
                                      "proxy": opts.proxy, "target_seconds": 30}, "rows": rows,
                          "python": sys.version.split()[0], "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
