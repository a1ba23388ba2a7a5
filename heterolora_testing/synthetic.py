"""Synthetic run records and a stand-in trainer, for tests, benchmarks and demos.

- :func:`write_synthetic_run` writes a complete run folder (config, summary, metrics,
  reallocations) whose allocation looks like the paper's: value projections chosen far more often
  than query, upper layers more than lower, ``cross_attn`` the favourite shortcut. No torch.
- ``python -m heterolora_testing.synthetic train --config DIR/config.json --out DIR`` behaves like the
  engine's ``python -m heterolora_core train`` towards the run record (claims a queued run, appends
  metrics and reallocations, updates progress, ends ``done``) but only sleeps. The worker runs it
  instead of the real CLI when ``HETEROLORA_TRAIN_CMD="python -m heterolora_testing.synthetic train"``.
  ``HETEROLORA_FAKE_STEP_SECONDS`` sets the time per step (default 0.05) and
  ``HETEROLORA_FAKE_CRASH_AT`` a step at which it raises; with ``HETEROLORA_FAKE_BEST_LR`` set,
  accuracy drops 0.02 per decade of learning rate away from that rate (a rate to find).

Module names, budgets and selections come from the engine itself (:mod:`heterolora_core.vocab`,
:mod:`heterolora_core.search.budget`, :mod:`heterolora_core.search.selection`), which are torch-free.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
import zlib
from pathlib import Path

from heterolora_core.methods import registry
from heterolora_core.records.record import RunRecord, Status, process_identity
from heterolora_core.search.budget import Budget, resolve
from heterolora_core.search.selection import select
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import DEFAULT_TARGETS, SHORTCUT_KINDS, Group, ModuleName, Ranking, ScoreNorm

_KIND_WEIGHT = {"q": 0.35, "k": 0.3, "v": 3.0, "o": 0.8, "ffn_in": 1.0, "ffn_gate": 0.7, "ffn_out": 1.2,
                "res_attn": 0.6, "res_ffn": 0.7, "cross_attn": 2.0, "cross_ffn": 1.0}
EMBEDDED_LAYERS = 6
EMBEDDED_HIDDEN = 384


def candidate_modules(n_layers: int, lora_targets: list[str] | tuple[str, ...] = DEFAULT_TARGETS,
                      shortcuts: bool = True) -> list[str]:
    """The candidate names of an ``n_layers`` model (method doc section 2): per layer one LoRA module
    per target, and with shortcuts res_attn, res_ffn, cross_attn and cross_ffn (absent in layer 0).
    ``candidate_modules(24)`` has 48 + 95 = 143 names, the OPT-350M search space."""
    names = []
    for layer in range(n_layers):
        names += [str(ModuleName.lora(layer, kind)) for kind in lora_targets]
        if shortcuts:
            names += [str(ModuleName.shortcut(layer, kind)) for kind in SHORTCUT_KINDS
                      if not (kind == "cross_ffn" and layer == 0)]
    return names


def synthetic_scores(modules: list[str], rng: random.Random, realloc: int = 0, proxy: str = "grad_norm") -> dict[str, float]:
    """Proxy scores with the paper's structure; shortcut scores are on a smaller raw scale."""
    scores = {}
    for name in modules:
        parsed = ModuleName.parse(name)
        base = _KIND_WEIGHT.get(parsed.kind, 1.0) * (1.0 + 0.15 * parsed.layer) * (1.0 + 0.02 * realloc)
        noise = math.exp(rng.gauss(0.0, 0.35 if proxy != "constant" else 0.0))
        value = base * noise * (1.0 if parsed.group is Group.LORA else 0.05)
        scores[name] = 1.0 if proxy == "constant" else round(value, 6)
    return scores


def module_cost(rank: int, hidden: int = EMBEDDED_HIDDEN) -> int:
    """r · (d_in + d_out) of a hidden -> hidden candidate (every q, v and shortcut candidate)."""
    return rank * 2 * hidden


def select_top(scores: dict[str, float], ratio: float, rng: random.Random, rank: int = 8) -> list[str]:
    """The engine's own selection: floor(p·n_lora) LoRA and round(p·n_shortcut) shortcut modules,
    each ranked within its group (separated ranking); ties broken by a seed drawn from ``rng``."""
    groups = {n: ModuleName.parse(n).group for n in scores}
    costs = {n: module_cost(rank) for n in scores}
    allocation = resolve(Budget(enable_ratio=ratio), costs, groups, rank)
    return select(scores, groups, allocation, Ranking.SEPARATED, ScoreNorm.RAW, costs, seed=rng.randrange(2**31))


def write_synthetic_run(
    path: str | os.PathLike,
    *,
    n_layers: int = EMBEDDED_LAYERS,
    n_reallocations: int = 10,
    mode: str = "dynamic",
    proxy: str = "grad_norm",
    seed: int = 0,
    rank: int = 32,
    enable_ratio: float = 0.25,
    lora_targets: tuple[str, ...] = ("q", "v"),
    shortcuts: bool = True,
    status: str = "done",
    steps: int = 100,
    sweep_id: str | None = None,
    model: str = "embedded",
    created_at: float | None = None,
    best_score: float | None = None,
    final_score: float | None = None,
    task: str = "mrpc",
    lr: float = 5e-4,
    ranking: str = "combined",
    ranks: bool = False,
    short_run: bool = False,
    device: str = "cpu",
) -> RunRecord:
    """Write a complete synthetic run folder at ``path`` and return its record.

    A static run gets exactly one reallocation (step 0); ``lora`` mode none. ``steps`` training
    steps are logged every 5 steps with an evaluation every 20. ``best_score`` / ``final_score``
    replace the scores the synthetic evaluations reach (a hand-made record for statistics);
    ``ranks=True`` adds a per-module rank to every reallocation line (a rank-allocating method's
    record: each enabled module between 1 and ``rank``, 0 when off).
    """
    rng = random.Random(zlib.crc32(f"{proxy}/{seed}".encode()))
    config = RunConfig(task=task, model=model, mode=mode, proxy=proxy, rank=rank, enable_ratio=enable_ratio,
                       ranking=ranking, lora_targets=list(lora_targets), shortcuts=shortcuts, seed=seed, lr=lr,
                       max_steps=steps, dev_limit=200 if short_run else None).to_dict()
    if sweep_id:
        config["sweep_id"] = sweep_id
    record = RunRecord.create(path, config, status=Status.QUEUED)
    modules = candidate_modules(n_layers, lora_targets, shortcuts)
    method = registry.info(mode)
    if not method.searches:
        n_reallocations = 0
    elif not method.reallocates:
        n_reallocations = 1
    for r in range(n_reallocations):
        step = 0 if n_reallocations <= 1 else round(r * steps / n_reallocations)
        scores = synthetic_scores(modules, rng, r, proxy)
        enabled = select_top(scores, enable_ratio, rng, rank)
        extra = {"ranks": {n: (1 + rng.randrange(rank) if n in enabled else 0) for n in modules}} if ranks else {}
        record.append_reallocation(step, scores, enabled, **extra)
    quality = {"grad_norm": 0.84, "snip": 0.82, "synflow": 0.82, "fisher": 0.83, "alpha_test": 0.83, "constant": 0.81}.get(proxy, 0.8)
    best = 0.0
    for step in range(0, steps + 1, 5):
        record.append_metrics(step=step, epoch=round(step / 25, 3), loss=round(0.7 * math.exp(-step / 60) + 0.25 + 0.02 * rng.random(), 5))
        if step and step % 20 == 0:
            acc = round(quality - 0.12 * math.exp(-step / 40) + 0.01 * rng.gauss(0, 1), 4)
            best = max(best, acc)
            record.append_metrics(step=step, epoch=round(step / 25, 3), eval_accuracy=acc, eval_f1=round(acc + 0.05, 4))
    n_enabled = len(select_top(dict.fromkeys(modules, 1.0), enable_ratio, rng, rank)) if method.searches else len(modules)
    now = time.time()
    created = created_at if created_at is not None else now
    record.update_summary(
        status=status, created_at=created, started_at=created + 1, finished_at=created + 61 if status == "done" else None,
        progress=1.0 if status == "done" else 0.5, step=steps if status == "done" else steps // 2, max_steps=steps,
        best_score=best_score if best_score is not None else best,
        final_score=final_score if final_score is not None else best, metric="accuracy",
        trainable_params=n_enabled * module_cost(rank), head_params=2 * EMBEDDED_HIDDEN + 2, num_reallocations=n_reallocations,
        wall_seconds=60.0 + rng.random() * 5, search_seconds=2.0 + rng.random(),
        n_layers=n_layers, error="synthetic failure" if status == "failed" else None,
        train_rows=steps * RunConfig().batch_size, device=device,
    )
    return record


def write_many_runs(home: str | os.PathLike, n: int, *, experiments: int = 10, n_layers: int = EMBEDDED_LAYERS,
                    n_reallocations: int = 3, steps: int = 40) -> list[RunRecord]:
    """``n`` small synthetic runs under ``<home>/results/exp<k>/run<i>``, a research-scale store: tasks,
    modes, proxies, ranks, learning rates, seeds and statuses vary from run to run (deterministic in
    ``n``), spread over ``experiments`` folders, newest last."""
    modes, proxies = registry.names(), ("grad_norm", "snip", "fisher", "constant")
    tasks, rates, ranks = ("mrpc", "rte", "cola"), (2e-4, 5e-4, 1e-3), (8, 16, 32)
    statuses = ("done",) * 8 + ("failed", "cancelled")
    start = time.time() - 10 * n
    records = []
    for i in range(n):
        mode = modes[i % len(modes)]
        records.append(write_synthetic_run(
            Path(home) / "results" / f"exp{i % experiments}" / f"run{i:05d}", n_layers=n_layers,
            n_reallocations=n_reallocations, mode=mode, proxy=proxies[(i // 7) % len(proxies)], seed=(i // 3) % 3,
            rank=ranks[(i // 11) % len(ranks)], task=tasks[(i // 13) % len(tasks)], lr=rates[(i // 17) % len(rates)],
            status=statuses[(i // experiments) % len(statuses)], steps=steps, shortcuts=registry.info(mode).shortcuts,
            created_at=start + 10 * i))
    return records


# ---------------------------------------------------------------------------------------------
# The stand-in trainer
# ---------------------------------------------------------------------------------------------


def fake_train(config_path: Path, out: Path) -> int:
    """Play a training run on the record in ``out`` (see the module docstring). Exit codes as the CLI."""
    record = RunRecord(out)
    summary = record.raw_summary()
    if summary.status != Status.QUEUED:
        print(f"error: {out} is not a queued run (status {summary.status!r})", file=sys.stderr)
        return 2
    config = RunConfig.from_dict(record.config())
    step_seconds = float(os.environ.get("HETEROLORA_FAKE_STEP_SECONDS", "0.05"))
    crash_at = int(os.environ.get("HETEROLORA_FAKE_CRASH_AT", "-1"))
    best_lr = os.environ.get("HETEROLORA_FAKE_BEST_LR")
    lr_penalty = 0.02 * abs(math.log10(config.lr / float(best_lr))) if best_lr else 0.0
    max_steps = config.max_steps or 20
    steps_per_epoch = max(1, math.ceil((config.train_limit or 64) / config.batch_size))
    realloc_every = max(1, round(config.realloc_every * steps_per_epoch))
    modules = candidate_modules(EMBEDDED_LAYERS, config.lora_targets, config.shortcuts)
    rng = random.Random(config.seed)
    started = time.time()
    # a budget in parameters is spent exactly; a method without search trains every candidate (q, v: hidden -> hidden)
    if config.budget_params:
        trainable = config.budget_params
    elif not registry.info(config.mode).searches:
        trainable = len(modules) * module_cost(config.rank)
    else:
        trainable = len(select_top(dict.fromkeys(modules, 1.0), config.enable_ratio, rng, config.rank)) * module_cost(config.rank)
    record.update_summary(status=Status.RUNNING, **process_identity(), started_at=started,
                          step=0, max_steps=max_steps, progress=0.0, metric="accuracy", n_layers=EMBEDDED_LAYERS,
                          trainable_params=trainable)
    print(f"fake training {out.name}: {max_steps} steps", flush=True)
    best = 0.0
    n_realloc = 0
    for step in range(max_steps):
        if step == crash_at:
            raise RuntimeError(f"fake crash at step {step}")
        method = registry.info(config.mode)
        if method.searches and (step == 0 or (method.reallocates and step % realloc_every == 0)):
            scores = synthetic_scores(modules, rng, n_realloc, config.proxy)
            record.append_reallocation(step, scores, select_top(scores, config.enable_ratio, rng, config.rank))
            n_realloc += 1
        time.sleep(step_seconds)
        record.append_metrics(step=step + 1, epoch=round((step + 1) / steps_per_epoch, 3), loss=round(0.7 * math.exp(-step / 30) + 0.3, 5))
        if (step + 1) % steps_per_epoch == 0 or step + 1 == max_steps:
            acc = round(0.7 + 0.1 * (step + 1) / max_steps + 0.01 * rng.random() - lr_penalty, 4)
            best = max(best, acc)
            record.append_metrics(step=step + 1, epoch=round((step + 1) / steps_per_epoch, 3), eval_accuracy=acc)
        elapsed = time.time() - started
        record.update_summary(step=step + 1, progress=(step + 1) / max_steps, best_score=best or None,
                              eta_seconds=elapsed / (step + 1) * (max_steps - step - 1), num_reallocations=n_realloc)
    record.update_summary(status="done", pid=None, eta_seconds=None, progress=1.0, final_score=best, best_score=best,
                          wall_seconds=time.time() - started, search_seconds=0.0, finished_at=time.time())
    print("done", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heterolora_testing.synthetic")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="play a training run on a queued run folder")
    train.add_argument("--config", required=True, type=Path)
    train.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    return fake_train(args.config, args.out)


if __name__ == "__main__":
    sys.exit(main())
