"""Scoring at LLM widths: what a dynamic search's gradient statistics cost beside the model.

Random Llama-shaped models (Llama-2 proportions: intermediate ≈ 2.69 × hidden, heads of 128, a
small vocabulary so the weights are the layers'), ``--layers`` layers, all seven targets adapted
at rank 16, batches of 4 × 128 tokens, on the CPU (and on a GPU when ``--device cuda``). Per
hidden size (default 1024, 2048, 4096):

- ``stats / weights``: bytes of the statistics a scoring window holds (``auto``, the default;
  ``sketch`` at k = 32; ``exact``: the full G) over the bytes of the model's fp32 weights;
- ``window / plain``: a training step inside a scoring window over a plain step, interleaved pairs,
  median of the paired ratios (``auto`` and ``exact``; one collector reset before each step, as a
  search keeps one). The classifier's loss reaches the last layer through the pooled token alone
  (the sketches skip the other tokens there); ``LM loss``: the same model as a causal language
  model, every token carrying a gradient everywhere;
- ``ours / PEFT``: our training step over PEFT's LoRA step, same targets and rank (interleaved);
- ``dynamic / uniform peak``: peak resident memory while training (the high-water mark is reset
  after the model is built, ``/proc/self/clear_refs``) of a dynamic search (rank 32, reallocating
  every 4 steps from the windows' statistics) over a uniform LoRA run at the same budget
  (rank 8 on every target), each a fresh process, 12 steps (``--memory-hidden``, default 4096).

``--accuracy``: the embedded model on MRPC, the dashboard's default dynamic run (rank 32, 25% of
q, v and the shortcuts; grad_norm) made longer (``--accuracy-steps``), scored with ``--scoring
sketch`` (k = 32); at every reallocation the same window's exact scores are computed too: Jaccard
of the two selections, Spearman of the two score vectors, relative errors of the scores. The same
windows are sketched again at each of ``--accuracy-ranks`` over ``--accuracy-draws`` draws of the
test matrices, so one lucky or unlucky draw does not decide the verdict.

    python benchmarks/bench_scoring_scale.py [--hidden 1024,2048,4096] [--pairs 5] [--accuracy]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import transformers as tf

from benchmarks import common
from heterolora_core import HeteroLoraConfig, attach
from heterolora_core.adapters.modules import head_module
from heterolora_core.search.budget import Budget
from heterolora_core.search.reallocator import Reallocator
from heterolora_core.search.statistics import ScoringStatistics, SketchStatistics, make_statistics
from heterolora_core.vocab import DEFAULT_SKETCH_RANK

TARGETS = ("q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out")
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, BATCH, TOKENS = 16, 4, 128


def llama(hidden: int, layers: int, seed: int = 0, lm: bool = False):
    """A sequence classifier (the loss reaches the last layer through the pooled last token only),
    or with ``lm`` a causal language model (every token carries a gradient everywhere)."""
    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=int(round(hidden * 2.6875 / 64)) * 64,
                            num_hidden_layers=layers, num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128,
                            num_labels=2, pad_token_id=0, max_position_embeddings=TOKENS)
    return (tf.AutoModelForCausalLM if lm else tf.AutoModelForSequenceClassification).from_config(config)


def batch(device: str, lm: bool = False) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 1024, (BATCH, TOKENS), generator=gen)
    labels = ids if lm else torch.randint(0, 2, (BATCH,), generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def weight_bytes(model) -> int:
    return sum(p.numel() * 4 for n, p in model.named_parameters() if "heterolora" not in n and "lora_" not in n)


def ours(hidden: int, layers: int, device: str, lm: bool = False):
    model = llama(hidden, layers, lm=lm).to(device).train()
    adapters = attach(model, HeteroLoraConfig(rank=RANK, lora_targets=TARGETS, shortcuts=False, init_seed=0))
    if not lm:
        for p in head_module(model).parameters():
            p.requires_grad_(True)
    return model, adapters


def peft_model(hidden: int, layers: int, device: str):
    from peft import LoraConfig, get_peft_model

    model = llama(hidden, layers).to(device).train()
    for p in model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=PEFT_TARGETS))
    for p in head_module(model.base_model.model).parameters():
        p.requires_grad_(True)
    return model


def stepper(model, inputs, adapters=None, scoring: str | None = None):
    """A training step (forward, backward, AdamW, zero_grad), inside a scoring window when
    ``scoring`` names the statistics to gather: one collector, reset before each step, as a
    search keeps one and resets it after each reallocation."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    holder: dict[str, ScoringStatistics] = {}
    if scoring is not None:
        holder["stats"] = make_statistics(scoring, rank=DEFAULT_SKETCH_RANK)

    def step() -> None:
        if scoring is not None:
            holder["stats"].reset()
            with adapters.collecting(holder["stats"]):
                model(**inputs).loss.backward()
        else:
            model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if inputs["input_ids"].is_cuda:
            torch.cuda.synchronize()

    return step, holder


def paired(step_a, step_b, pairs: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        step_a(), step_b()
    ratios, a_times, b_times = [], [], []
    for i in range(pairs):
        order = [(step_a, a_times), (step_b, b_times)][:: -1 if i % 2 else 1]
        for step, sink in order:
            start = time.perf_counter()
            step()
            sink.append(time.perf_counter() - start)
        ratios.append(a_times[-1] / b_times[-1])
    return {"median_ratio": statistics.median(ratios), "median_a_s": statistics.median(a_times),
            "median_b_s": statistics.median(b_times), "pairs": pairs}


def measure_width(hidden: int, layers: int, pairs: int, device: str) -> dict:
    model, adapters = ours(hidden, layers, device)
    inputs = batch(device)
    out = {"hidden": hidden, "layers": layers, "weights_mib": weight_bytes(model) / 2**20, "modules": len(adapters.names())}
    plain, _ = stepper(model, inputs)
    for scoring in ("auto", "sketch", "exact"):
        step, holder = stepper(model, inputs, adapters, scoring)
        step()
        out[f"stats_mib_{scoring}"] = holder["stats"].nbytes() / 2**20
        out[f"stats_over_weights_{scoring}"] = holder["stats"].nbytes() / weight_bytes(model)
    for scoring in ("auto", "exact"):
        window, _ = stepper(model, inputs, adapters, scoring)
        out[f"window_over_plain_{scoring}"] = paired(window, plain, pairs)
    del model, adapters, plain, window
    # a language model's loss: every token carries a gradient at every candidate, none is skipped
    lm_model, lm_adapters = ours(hidden, layers, device, lm=True)
    lm_inputs = batch(device, lm=True)
    out["window_over_plain_auto_lm"] = paired(stepper(lm_model, lm_inputs, lm_adapters, "auto")[0],
                                              stepper(lm_model, lm_inputs)[0], pairs)
    del lm_model, lm_adapters
    peft = peft_model(hidden, layers, device)
    mine, _ = ours(hidden, layers, device)
    out["ours_over_peft"] = paired(stepper(mine, inputs)[0], stepper(peft, inputs)[0], pairs)
    return out


# ----------------------------------------------------------------------------------------------
# Peak memory: a dynamic search against uniform LoRA at the same budget, each its own process
# ----------------------------------------------------------------------------------------------

def memory_child(role: str, hidden: int, layers: int, steps: int, device: str) -> None:
    """Train ``steps`` steps and print the peak resident memory (MiB) as JSON."""
    torch.manual_seed(0)
    model = llama(hidden, layers).to(device).train()
    searching = role == "search"
    rank = 32 if searching else 8
    adapters = attach(model, HeteroLoraConfig(rank=rank, lora_targets=TARGETS, shortcuts=False, init_seed=0))
    for p in head_module(model).parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs = batch(device)
    _reset_peak_rss()  # the peak of building the model is the same for both: measure training alone
    reallocator = None
    if searching:  # 25% of the candidates at rank 32 = every candidate at rank 8
        reallocator = Reallocator(model, adapters, "grad_norm", Budget(match_uniform_rank=8), seed=0)
    for step in range(steps):
        window = reallocator.training_window() if reallocator is not None else contextlib.nullcontext()
        with window:
            model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if reallocator is not None and step % 4 == 3:
            reallocator.reallocate(step + 1)
    trainable = adapters.num_trainable()
    peak = _peak_rss_mib()
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({"role": role, "peak_mib": peak, "trainable": trainable}))


def _reset_peak_rss() -> None:
    """Linux: reset this process's resident high-water mark (``VmHWM``) to its current RSS."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def alternating_peaks(module: str, child_args: list[str], rounds: int) -> dict:
    """Peak memory of uniform LoRA and of a dynamic search, each in a fresh ``python -m module
    --child-memory ROLE *child_args`` process printing JSON, the order alternating by round; the
    peaks, the trainable counts and the median of the per-round ratios dynamic / uniform."""
    peaks: dict[str, list[float]] = {"uniform": [], "dynamic": []}
    trainable = {}
    for r in range(rounds):
        for kind in (("uniform", "dynamic") if r % 2 == 0 else ("dynamic", "uniform")):
            role = "search" if kind == "dynamic" else "uniform"
            proc = subprocess.run([sys.executable, "-m", module, "--child-memory", role, *child_args],
                                  capture_output=True, text=True, check=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            peaks[kind].append(result["peak_mib"])
            trainable[kind] = result["trainable"]
    ratios = [d / u for d, u in zip(peaks["dynamic"], peaks["uniform"])]
    return {"peaks_mib": peaks, "trainable": trainable, "median_ratio": statistics.median(ratios)}


def measure_memory(hidden: int, layers: int, steps: int, device: str, rounds: int) -> dict:
    measured = alternating_peaks("benchmarks.bench_scoring_scale",
                                 ["--memory-hidden", str(hidden), "--layers", str(layers), "--memory-steps", str(steps),
                                  "--device", device], rounds)
    return {"hidden": hidden, "steps": steps, **measured,
            "unit": "GPU MiB allocated" if device.startswith("cuda") else "RSS MiB"}


# ----------------------------------------------------------------------------------------------
# Accuracy on the embedded model: sketched against exact scores of the same windows
# ----------------------------------------------------------------------------------------------

class TeeStatistics(ScoringStatistics):
    """Feeds every batch to an exact and a sketch collector; answers as the sketch (the run trains
    on the sketched selection), keeps the exact one for comparison."""

    def __init__(self, factors: bool = False):
        super().__init__(factors)
        self.exact = make_statistics("exact", factors=factors)
        self.sketch = make_statistics("sketch", rank=DEFAULT_SKETCH_RANK, factors=factors)

    def add(self, module, grad, x):
        self.exact.add(module, grad, x)
        self.sketch.add(module, grad, x)
        self.calls[module.name] = self.calls.get(module.name, 0) + 1

    def grad_norm(self, name):
        return self.sketch.grad_norm(name)

    def fisher(self, name):
        return self.sketch.fisher(name)

    def factor_products(self, module):
        return self.sketch.factor_products(module)

    def spectrum(self, name):
        return self.sketch.spectrum(name)

    def directions(self, name, r):
        return self.sketch.directions(name, r)

    def tensors(self):
        return self.sketch.tensors()

    def reset(self):
        super().reset()
        self.exact.reset()
        self.sketch.reset()


def sketched_again(exact: ScoringStatistics, adapters, k: int, draw: int) -> dict[str, float]:
    """grad_norm of every candidate from a fresh sketch (rank k, test matrices of seed ``draw``)
    of each exact G. The sketches are linear in G, so one batch with x = I and δ = Gᵀ (G = δᵀx)
    gives what the window's batches streamed one by one give, to rounding."""
    sketch = SketchStatistics(k, seed=draw)
    for module in adapters.modules_in_order():
        if module.name in exact.G:
            G = exact.G[module.name]
            sketch.add(module, G.transpose(0, 1).contiguous(), torch.eye(G.shape[1]))
    return {m.name: (sketch.grad_norm(m.name) if m.name in sketch else 0.0) for m in adapters.modules_in_order()}


def measure_accuracy(steps: int, ranks: list[int], draws: int) -> dict:
    """The run trains on the streamed sketch (rank DEFAULT_SKETCH_RANK, seed 0); at each
    reallocation the same window's exact scores are compared with it, and with fresh sketches of
    every rank in ``ranks`` over ``draws`` draws of the test matrices."""
    import tempfile

    from scipy.stats import spearmanr

    from dashboard.components.forms import SHORT_RUN
    from heterolora_core.search import reallocator as realloc_module
    from heterolora_core.search.proxies import scores_from_gradients
    from heterolora_core.search.selection import select
    from heterolora_core.training.run_config import RunConfig
    from heterolora_core.training.trainer import run_training

    rows, per_rank = [], {k: [] for k in ranks}
    original = realloc_module.Reallocator.reallocate

    def compared(self, step, batches=None):
        if isinstance(self.collector, TeeStatistics) and len(self.collector) > 0:
            exact = scores_from_gradients(self.proxy, self.adapters, self.collector.exact, self.seed)
            tie = self.seed * 1_000_003 + int(step)
            chosen = set(select(exact, self.groups, self.allocation, self.ranking, self.score_norm, self.costs, tie))
            names = list(exact)

            def agreement(sketch: dict[str, float]) -> dict:
                other = set(select(sketch, self.groups, self.allocation, self.ranking, self.score_norm, self.costs, tie))
                errors = [abs(sketch[n] / exact[n] - 1) for n in names if exact[n] > 0]
                return {"step": int(step), "jaccard": len(chosen & other) / len(chosen | other),
                        "spearman": float(spearmanr([exact[n] for n in names], [sketch[n] for n in names]).correlation),
                        "median_rel_error": statistics.median(errors), "max_rel_error": max(errors)}

            rows.append(agreement(scores_from_gradients(self.proxy, self.adapters, self.collector.sketch, self.seed)))
            for k in ranks:
                for draw in range(draws):
                    per_rank[k].append({**agreement(sketched_again(self.collector.exact, self.adapters, k, draw)), "draw": draw})
        return original(self, step, batches)

    realloc_module.Reallocator.reallocate = compared
    realloc_module.make_statistics = lambda *args, **kwargs: TeeStatistics(kwargs.get("factors", False))
    config = RunConfig.from_dict({**SHORT_RUN, "max_steps": steps, "scoring": "sketch", "sketch_rank": DEFAULT_SKETCH_RANK})
    with tempfile.TemporaryDirectory() as tmp:
        run_training(config, os.path.join(tmp, "run"), progress=False)
    return {**summarise_agreement(rows), "rows": rows,
            "by_rank": {str(k): summarise_agreement(per_rank[k]) for k in ranks}, "draws": draws,
            "config": {"steps": steps, "scoring": "sketch", "k": DEFAULT_SKETCH_RANK, "proxy": SHORT_RUN["proxy"]}}


def summarise_agreement(rows: list[dict]) -> dict:
    same = sum(1 for r in rows if r["jaccard"] == 1.0)
    return {"reallocations": len(rows), "identical_selections": same, "share_identical": same / len(rows) if rows else None,
            "min_jaccard": min(r["jaccard"] for r in rows), "min_spearman": min(r["spearman"] for r in rows),
            "median_spearman": statistics.median(r["spearman"] for r in rows),
            "median_rel_error": statistics.median(r["median_rel_error"] for r in rows),
            "max_rel_error": max(r["max_rel_error"] for r in rows)}


def print_table(results: dict) -> None:
    if results.get("widths"):
        print(f"\n{'hidden':>6} {'modules':>7} {'weights MiB':>11} {'stats/weights auto':>18} {'sketch':>7} {'exact':>6} "
              f"{'window/plain auto':>17} {'LM loss':>7} {'exact':>6} {'ours/PEFT':>9}")
    for r in results.get("widths", []):
        lm = r.get("window_over_plain_auto_lm", {}).get("median_ratio", float("nan"))
        print(f"{r['hidden']:>6} {r['modules']:>7} {r['weights_mib']:>11.0f} {r['stats_over_weights_auto']:>18.3%} "
              f"{r['stats_over_weights_sketch']:>7.3%} {r['stats_over_weights_exact']:>6.0%} "
              f"{r['window_over_plain_auto']['median_ratio']:>17.3f} {lm:>7.3f} {r['window_over_plain_exact']['median_ratio']:>6.3f} "
              f"{r['ours_over_peft']['median_ratio']:>9.3f}")
    if "memory" in results:
        m = results["memory"]
        print(f"\ndynamic / uniform peak ({m['unit']}) at hidden {m['hidden']}: {m['median_ratio']:.3f} "
              f"(uniform {m['peaks_mib']['uniform']}, dynamic {m['peaks_mib']['dynamic']})")
    if "accuracy" in results:
        a = results["accuracy"]
        print(f"\nembedded MRPC, streamed sketch (k={a['config']['k']}) vs exact over {a['reallocations']} reallocations: "
              f"identical selections {a['identical_selections']}/{a['reallocations']}, min Jaccard {a['min_jaccard']:.2f}, "
              f"Spearman min {a['min_spearman']:.4f} median {a['median_spearman']:.4f}")
        print(f"\n{'k':>4} {'identical':>12} {'min Jaccard':>11} {'min Spearman':>12} {'median |err|':>12} {'max |err|':>9}"
              f"   (fresh sketches of the same windows, {a['draws']} draws)")
        for k, r in a.get("by_rank", {}).items():
            print(f"{k:>4} {r['identical_selections']:>5}/{r['reallocations']:<6} {r['min_jaccard']:>11.2f} "
                  f"{r['min_spearman']:>12.4f} {r['median_rel_error']:>12.2%} {r['max_rel_error']:>9.2%}")


def main() -> None:
    parser = common.parser(__doc__, "scoring_scale.json")
    parser.add_argument("--hidden", type=common.positive_int_list, default="1024,2048,4096")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-hidden", type=int, default=4096)
    parser.add_argument("--memory-steps", type=int, default=12)
    parser.add_argument("--memory-rounds", type=int, default=2)
    parser.add_argument("--no-widths", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--accuracy-steps", type=int, default=96)
    parser.add_argument("--accuracy-ranks", type=common.positive_int_list, default="8,16,32,64", help="sketch ranks checked on fresh sketches of each window")
    parser.add_argument("--accuracy-draws", type=int, default=5, help="draws of the test matrices per rank")
    parser.add_argument("--merge", action="store_true", help="keep the parts of --out not measured this time")
    parser.add_argument("--child-memory", choices=["uniform", "search"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        memory_child(args.child_memory, args.memory_hidden, args.layers, args.memory_steps, args.device)
        return
    results = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                           "device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
               "when": time.strftime("%Y-%m-%d %H:%M:%S"), "rank": RANK, "batch": [BATCH, TOKENS]}
    if not args.no_widths:
        results["widths"] = []
        for hidden in args.hidden:
            results["widths"].append(measure_width(hidden, args.layers, args.pairs, args.device))
            print(json.dumps({k: v for k, v in results["widths"][-1].items()}, default=str), flush=True)
    if not args.no_memory:
        results["memory"] = measure_memory(args.memory_hidden, args.layers, args.memory_steps, args.device, args.memory_rounds)
    if args.accuracy:
        results["accuracy"] = measure_accuracy(args.accuracy_steps, args.accuracy_ranks,
                                               args.accuracy_draws)
    if args.merge and args.out.is_file():
        results = {**json.loads(args.out.read_text()), **results}
    print_table(results)
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
