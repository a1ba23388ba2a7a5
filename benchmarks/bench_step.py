"""Training-step cost of our adapters against PEFT and against a frozen model.

Two side-by-side comparisons on the embedded model (MiniLM, 6 layers) with one real MRPC batch:

1. ours   : query+value LoRA, rank 8, alpha 16, all on (hooks on the stock modules)
   peft   : PEFT's LoRA in the same configuration (LoraConfig r=8, alpha=16, query/value)
2. off    : ours with every candidate (q,v LoRA + shortcuts) attached but disabled
   frozen : the same model with no adapters at all
   (the head is trained in every case)

A step is forward, backward, AdamW step, zero_grad. The two sides of a pair alternate (A,B then
B,A) so drift in the machine's speed hits both; the ratio is the median over pairs of
time(ours) / time(reference). Prints a table and writes JSON.

    python benchmarks/bench_step.py [--pairs 15] [--batch-size 16] [--out benchmarks/results/step.json]
"""
from __future__ import annotations

import statistics
import time

import torch

from benchmarks import common

from heterolora_core import HeteroLoraConfig, attach
from heterolora_core.adapters.modules import head_module
from heterolora_core.training.data import load_task, make_collator, tokenize_examples
from heterolora_core.training.models import load_classifier, load_tokenizer


def real_batch(batch_size: int, max_length: int) -> dict:
    task = load_task("mrpc")
    tokenizer = load_tokenizer("embedded")
    rows = tokenize_examples(task.train, tokenizer, max_length, limit=batch_size)
    return dict(make_collator(tokenizer)(rows))


def trainer_for(model):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    def step(batch):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def build(kind: str):
    torch.manual_seed(0)
    model = load_classifier("embedded", 2)
    model.train()
    if kind == "ours":
        attach(model, HeteroLoraConfig(rank=8, alpha=16, lora_targets=("q", "v")))
    elif kind == "peft":
        from peft import LoraConfig, get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=["query", "value"]))
    elif kind == "off":
        adapters = attach(model, HeteroLoraConfig(rank=8, alpha=16, lora_targets=("q", "v"), shortcuts=True))
        adapters.set_enabled([])
    elif kind == "frozen":
        for p in model.parameters():
            p.requires_grad_(False)
    head = head_module(model.base_model.model if kind == "peft" else model)
    for p in head.parameters():
        p.requires_grad_(True)
    return model


def time_pairs(step_a, step_b, batch, pairs: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        step_a(batch)
        step_b(batch)
    times_a, times_b, ratios = [], [], []
    for i in range(pairs):
        order = [(step_a, times_a), (step_b, times_b)]
        if i % 2:
            order.reverse()
        for step, sink in order:
            start = time.perf_counter()
            step(batch)
            sink.append(time.perf_counter() - start)
        ratios.append(times_a[-1] / times_b[-1])
    return {"median_a_s": statistics.median(times_a), "median_b_s": statistics.median(times_b),
            "median_pair_ratio": statistics.median(ratios), "ratio_of_medians": statistics.median(times_a) / statistics.median(times_b),
            "pairs": pairs}


def main() -> None:
    parser = common.parser(__doc__, "step.json")
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    batch = real_batch(args.batch_size, args.max_length)
    results = {"torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
               "tokens": int(batch["attention_mask"].numel())}
    for name, (a, b) in {"ours_vs_peft": ("ours", "peft"), "disabled_vs_frozen": ("off", "frozen")}.items():
        results[name] = time_pairs(trainer_for(build(a)), trainer_for(build(b)), batch, args.pairs)
    print(f"{'comparison':<20} {'A median ms':>12} {'B median ms':>12} {'median A/B':>11} {'A/B of medians':>15}")
    for name in ("ours_vs_peft", "disabled_vs_frozen"):
        r = results[name]
        print(f"{name:<20} {1e3 * r['median_a_s']:>12.1f} {1e3 * r['median_b_s']:>12.1f} "
              f"{r['median_pair_ratio']:>11.3f} {r['ratio_of_medians']:>15.3f}")
    common.write_json(args.out, results)


if __name__ == "__main__":
    main()
