"""The embedded decoder's costs side by side: our step against PEFT's, a scoring window against a
plain step, and a dynamic search's peak memory against uniform LoRA's, on SmolLM2-135M-Instruct.

The real ``smollm2`` weights (30 layers, hidden 576; fetched and converted once, see
``python -m heterolora_core fetch-model smollm2``) as a causal language model, all seven targets
(q, k, v, o, gate, up, down: 210 candidates), batches of ``--batch`` × ``--tokens`` tokens whose
loss counts the second half only (a prompt, then its completion: the ``lm`` objective's masking).
All ratios are measured in one run, interleaved pairs, medians of the paired ratios:

- ``ours / PEFT``: our training step (forward, backward, AdamW) with uniform LoRA at rank 8 over
  PEFT's LoRA step with the same targets and rank (issue target ≤ 1.05);
- ``window / plain``: a step inside a scoring window (``auto`` statistics, the search's default,
  one collector reset before each step) over a plain step of the same model (target ≤ 1.10);
- ``dynamic / uniform peak``: peak resident memory of a whole training process, the engine's own
  ``run_training`` on MRPC as instructions (``--objective lm``, batch ``--batch``, at most
  ``--tokens`` tokens, ``--memory-steps`` steps, reallocating every quarter epoch): a dynamic search
  (rank 32, grad_norm, ``match_uniform_rank`` 8) over uniform LoRA at rank 8 on the same targets,
  the same budget, each a fresh process, alternating (target ≤ 1.10). The trainer scores step 0
  with every candidate on and drops the gradients of those it leaves off before the first optimizer
  step, so no optimizer state is ever held for the candidates that stay off.

Timings are meant for an idle machine.

    python -m benchmarks.bench_decoder_ratios [--pairs 7] [--batch 4] [--tokens 128] [--memory-rounds 2] [--only memory]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from benchmarks import common
from benchmarks.bench_scoring_scale import PEFT_TARGETS, TARGETS, _peak_rss_mib, alternating_peaks, paired, stepper
from heterolora_core import HeteroLoraConfig, attach

RANK = 8
VOCAB_LOW = 100  # token ids drawn above the special tokens


def smollm2():
    """SmolLM2-135M-Instruct from the cache, fp32, in training mode (the cache is filled on first use)."""
    from heterolora_core.training.models import load_causal_lm

    return load_causal_lm("smollm2").train()


def lm_batch(model, batch: int, tokens: int) -> dict:
    """Random tokens; the loss counts the second half (the completion), the first half is -100."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(VOCAB_LOW, model.config.vocab_size, (batch, tokens), generator=gen)
    labels = ids.clone()
    labels[:, : tokens // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def ours(model):
    return attach(model, HeteroLoraConfig(rank=RANK, lora_targets=TARGETS, shortcuts=False, init_seed=0))


def peft(model):
    from peft import LoraConfig, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    return get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0,
                                            target_modules=PEFT_TARGETS, task_type="CAUSAL_LM"))


def measure_steps(pairs: int, batch: int, tokens: int) -> dict:
    torch.manual_seed(0)
    mine = smollm2()
    adapters = ours(mine)
    inputs = lm_batch(mine, batch, tokens)
    theirs = peft(smollm2())
    out = {"candidates": len(adapters.names()), "trainable_ours": adapters.num_trainable(),
           "trainable_peft": sum(p.numel() for p in theirs.parameters() if p.requires_grad)}
    out["ours_over_peft"] = paired(stepper(mine, inputs)[0], stepper(theirs, inputs)[0], pairs)
    del theirs
    out["window_over_plain"] = paired(stepper(mine, inputs, adapters, "auto")[0], stepper(mine, inputs)[0], pairs)
    return out


def memory_child(role: str, batch: int, tokens: int, steps: int) -> None:
    """Train through the engine (``run_training``) and print the process's peak RSS (MiB) as JSON."""
    import tempfile

    from heterolora_core.training.run_config import RunConfig
    from heterolora_core.training.trainer import run_training

    search = {"mode": "dynamic", "rank": 32, "match_uniform_rank": 8, "proxy": "grad_norm"}
    config = RunConfig.from_dict({
        "model": "smollm2", "task": "mrpc", "objective": "lm", "lora_targets": list(TARGETS), "shortcuts": False,
        "train_limit": batch * steps, "dev_limit": batch, "max_steps": steps, "batch_size": batch, "max_length": tokens,
        "realloc_every": 0.25, "lr": 5e-4, "seed": 0,
        **(search if role == "search" else {"mode": "lora", "rank": 8})})
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_training(config, os.path.join(tmp, "run"), progress=False).summary()
    print(json.dumps({"role": role, "peak_mib": _peak_rss_mib(), "trainable": summary.trainable_params,
                      "reallocations": summary.num_reallocations}))


def measure_memory(batch: int, tokens: int, steps: int, rounds: int) -> dict:
    measured = alternating_peaks("benchmarks.bench_decoder_ratios",
                                 ["--batch", str(batch), "--tokens", str(tokens), "--memory-steps", str(steps)], rounds)
    return {"train_steps": steps, **measured, "unit": "RSS MiB"}


def print_table(results: dict) -> None:
    s = results.get("steps")
    if s:
        print(f"\nSmolLM2-135M-Instruct, {s['candidates']} candidates, batch {results['batch']} x {results['tokens']} "
              f"tokens, rank {RANK} on all seven targets ({s['trainable_ours']:,} trainable; PEFT {s['trainable_peft']:,})")
        print(f"{'ratio':<26} {'median':>7} {'target':>7} {'a s':>7} {'b s':>7} {'pairs':>5}")
        for name, key, target in (("ours / PEFT step", "ours_over_peft", 1.05),
                                  ("scoring window / plain", "window_over_plain", 1.10)):
            r = s[key]
            print(f"{name:<26} {r['median_ratio']:>7.3f} {target:>7.2f} {r['median_a_s']:>7.2f} {r['median_b_s']:>7.2f} "
                  f"{r['pairs']:>5}")
    m = results.get("memory")
    if m:
        print(f"{'dynamic / uniform peak':<26} {m['median_ratio']:>7.3f} {1.10:>7.2f}   "
              f"(RSS MiB: uniform {m['peaks_mib']['uniform']}, dynamic {m['peaks_mib']['dynamic']}; "
              f"{m['trainable']['uniform']:,} vs {m['trainable']['dynamic']:,} trainable at the end)")


def main() -> None:
    parser = common.parser(__doc__, "decoder_ratios.json")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--memory-steps", type=int, default=12)
    parser.add_argument("--memory-rounds", type=int, default=2)
    parser.add_argument("--only", choices=["steps", "memory"],
                        help="measure one part; the other is kept from --out (each part records when it was measured)")
    parser.add_argument("--child-memory", choices=["uniform", "search"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        memory_child(args.child_memory, args.batch, args.tokens, args.memory_steps)
        return
    results = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                           "torch": torch.__version__},
               "batch": args.batch, "tokens": args.tokens}
    if args.only and args.out.is_file():
        kept = json.loads(args.out.read_text())
        results.update({k: kept[k] for k in ("steps", "memory") if k in kept and k != args.only})
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    if args.only in (None, "steps"):
        results["steps"] = {**measure_steps(args.pairs, args.batch, args.tokens), "when": now}
    if args.only in (None, "memory"):
        results["memory"] = {**measure_memory(args.batch, args.tokens, args.memory_steps, args.memory_rounds),
                             "when": now}
    print_table(results)
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
