"""``python -m heterolora_core {train,score,runs,predict}``.

Bad input (unknown task, model, proxy or mode, rank < 1, a ratio outside (0, 1], a budget that
enables nothing, missing GLUE files or columns, an unsupported architecture, a model folder
without weights) is checked before anything heavy is loaded: stderr gets one line, the exit code
is 2, no traceback, and no run folder is left claiming to be running.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .runs import DEFAULT_MODEL, MODES, PROXIES, RANKINGS, SCORE_NORMS, RunConfig, RunRecord

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_CANCELLED = 130


def _quiet_libraries() -> None:
    """Library chatter would bury the one-line error; progress bars stay (they go to stderr only
    during real work)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # the hub client's "Retrying in 1s" warnings
    warnings.filterwarnings("ignore")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one ``error: ...`` line on stderr, exit code 2
    (argparse's own ``error`` prints the usage block first and prefixes the program name)."""

    def error(self, message: str):
        message = " ".join(str(message).split())
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # only flags given on the command line override --config
    d = RunConfig()
    p.add_argument("--config", help="a run's config.json to start from (flags override it)")
    p.add_argument("--model", default=S, help=f"HF model id or local folder (default: {DEFAULT_MODEL}, the packaged all-MiniLM-L6-v2)")
    p.add_argument("--task", default=S, help=f"cola sst2 mrpc stsb qqp mnli qnli rte wnli, or custom with --train-file/--dev-file (default: {d.task})")
    p.add_argument("--mode", default=S, choices=MODES, help=f"lora: uniform LoRA; static/dynamic: HeteroLoRA; adalora: PEFT's AdaLoRA baseline (default: {d.mode})")
    p.add_argument("--proxy", default=S, choices=PROXIES, help=f"zero-cost proxy of the search (default: {d.proxy})")
    p.add_argument("--rank", type=int, default=S, help=f"rank of every candidate module (default: {d.rank})")
    p.add_argument("--alpha", type=float, default=S, help="LoRA alpha (default: 2*rank, i.e. alpha/r = 2 at every rank; the authors used 16)")
    p.add_argument("--enable-ratio", type=float, default=S, help=f"fraction p of candidates enabled by the search (default: {d.enable_ratio})")
    p.add_argument("--match-uniform-rank", type=int, default=S, help="budget = uniform LoRA at this rank on the LoRA targets (overrides --enable-ratio)")
    p.add_argument("--ranking", default=S, choices=RANKINGS, help=f"rank LoRA and shortcut candidates together or separately (default: {d.ranking})")
    p.add_argument("--score-norm", default=S, choices=SCORE_NORMS, help="kind: normalise scores per module kind before a combined ranking; raw: the authors' way (default: kind)")
    p.add_argument("--shortcuts", dest="shortcuts", action="store_true", default=S, help="include the LoRA-adapted shortcut candidates (default)")
    p.add_argument("--no-shortcuts", dest="shortcuts", action="store_false", default=S, help="LoRA candidates only")
    p.add_argument("--lora-targets", type=_csv_list, default=S, help="comma-separated subset of q,k,v,o,ffn_gate,ffn_in,ffn_out (default: q,v)")
    p.add_argument("--epochs", type=float, default=S, help=f"training epochs (default: {d.epochs:g})")
    p.add_argument("--max-steps", type=int, default=S, help="stop after this many optimizer steps (overrides --epochs)")
    p.add_argument("--train-limit", type=int, default=S, help="use only the first N training rows (short runs)")
    p.add_argument("--dev-limit", type=int, default=S, help="evaluate on the first N dev rows only")
    p.add_argument("--realloc-every", type=float, default=S, help=f"dynamic search: reallocate every this fraction of an epoch (default: {d.realloc_every})")
    p.add_argument("--proxy-batches", type=int, default=S, help="score on N extra batches at every reallocation with every module on (the authors: 32); default: reuse the training steps' gradients")
    p.add_argument("--score-window", type=int, default=S, help=f"training steps whose gradients make up a reallocation's scores (default: {d.score_window})")
    p.add_argument("--lr", type=float, default=S, help=f"constant learning rate (default: {d.lr:g})")
    p.add_argument("--batch-size", type=int, default=S, help=f"per-device batch size (default: {d.batch_size})")
    p.add_argument("--max-length", type=int, default=S, help=f"truncate inputs to this many tokens (default: {d.max_length})")
    p.add_argument("--eval-every", type=int, default=S, help="evaluate every K steps (default: every epoch, and always at the end)")
    p.add_argument("--logging-steps", type=int, default=S, help="log the training loss every K steps (default: about eight times a run, at most every 10 steps)")
    p.add_argument("--seed", type=int, default=S, help="seed: same seed, same selections and metrics")
    p.add_argument("--device", default=S, help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--bf16", action="store_true", default=S, help="bfloat16 autocast (CUDA with bf16 support)")
    p.add_argument("--train-file", default=S, help="your own training data: CSV or JSON lines with text, [text_pair,] label")
    p.add_argument("--dev-file", default=S, help="your own dev data, same columns")
    p.add_argument("--adalora-init-r", type=int, default=S, help="adalora mode: initial rank (default: 32)")
    p.add_argument("--adalora-target-r", type=int, default=S, help="adalora mode: average target rank (default: 24)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m heterolora_core",
                     description="HeteroLoRA Studio engine: where should LoRA's trainable parameters go?")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune with uniform LoRA, static or dynamic HeteroLoRA",
                           description="Fine-tune and write a run record (config.json, summary.json, metrics.jsonl, reallocations.jsonl).")
    _add_train_arguments(train)
    train.add_argument("--out", help="run folder (default: $HETEROLORA_HOME/runs/<run-id>, HETEROLORA_HOME defaults to data/)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    score = sub.add_parser("score", help="print every candidate's proxy score without training")
    score.add_argument("--model", default=DEFAULT_MODEL)
    score.add_argument("--task", default="mrpc")
    score.add_argument("--train-file")
    score.add_argument("--dev-file")
    score.add_argument("--proxy", default="grad_norm", choices=PROXIES)
    score.add_argument("--rank", type=int, default=8)
    score.add_argument("--lora-targets", type=_csv_list, default=["q", "v"])
    score.add_argument("--shortcuts", dest="shortcuts", action="store_true", default=True)
    score.add_argument("--no-shortcuts", dest="shortcuts", action="store_false")
    score.add_argument("--batches", type=int, default=8, help="scoring batches (default: 8)")
    score.add_argument("--batch-size", type=int, default=16)
    score.add_argument("--max-length", type=int, default=128)
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")

    runs = sub.add_parser("runs", help="list the runs under the data home")
    runs.add_argument("--home", help="data home (default: $HETEROLORA_HOME or data/)")
    runs.add_argument("--json", action="store_true")

    predict = sub.add_parser("predict", help="predict with a finished run's adapters and head")
    predict.add_argument("--run", required=True, help="the run folder")
    predict.add_argument("--text", required=True)
    predict.add_argument("--text-pair")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    from .runs import read_json

    base: dict = {}
    if getattr(args, "config", None):
        base = read_json(Path(args.config)) or {}
        if not base:
            raise ValueError(f"cannot read a run config from {args.config}")
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("command", "config", "out", "no_progress")}
    return RunConfig.from_dict({**base, **overrides})


def cmd_train(args: argparse.Namespace) -> int:
    from .training import RunCancelled, check_budget, normalise_config, run_training, validate_config

    config = normalise_config(config_from_args(args))
    if args.out and RunRecord(args.out).exists():  # refused before the heavy checks; run_training checks again
        status = RunRecord(args.out).raw_summary().get("status")
        if status != "queued":
            raise ValueError(f"{args.out} already holds a run ({status}); choose another --out")
    validate_config(config)
    from .data import TASKS

    num_labels = TASKS[config.task].num_labels if config.task in TASKS else 2
    if config.mode != "adalora":
        check_budget(config, num_labels=num_labels)
    try:
        record = run_training(config, args.out, progress=not args.no_progress)
    except RunCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    summary = record.summary()
    score = summary.get("best_score")
    metric = summary.get("metric", "score")
    print(f"done: {record.path}  best {metric} {score:.4f}  final {summary.get('final_score', float('nan')):.4f}  "
          f"trainable {summary.get('trainable_params'):,} (+ head {summary.get('head_params'):,})  "
          f"{summary.get('wall_seconds')} s" if score is not None else f"done: {record.path}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .architectures import attach
    from .config import HeteroLoraConfig
    from .data import check_task_source, load_task, make_collator, tokenize_examples
    from .models import check_model, load_classifier, load_tokenizer
    from .proxies import compute_scores

    task_id = "custom" if args.train_file else args.task
    check_task_source(task_id, train_file=args.train_file, dev_file=args.dev_file)
    check_model(args.model)
    hetero = HeteroLoraConfig(rank=args.rank, lora_targets=tuple(args.lora_targets), shortcuts=args.shortcuts,
                              init_seed=args.seed)
    if args.batches < 1:
        raise ValueError("--batches must be >= 1")
    task = load_task(task_id, train_file=args.train_file, dev_file=args.dev_file)
    tokenizer = load_tokenizer(args.model)
    rows = tokenize_examples(task.train, tokenizer, args.max_length, limit=args.batches * args.batch_size * 4)
    torch.manual_seed(args.seed)
    model = load_classifier(args.model, task.num_labels, "regression" if task.is_regression else None)
    adapters = attach(model, hetero)
    loader = DataLoader(rows, batch_size=args.batch_size, shuffle=True, collate_fn=make_collator(tokenizer),
                        generator=torch.Generator().manual_seed(args.seed))
    batches = [b for _, b in zip(range(args.batches), loader)]
    from tqdm.auto import tqdm

    scores = compute_scores(args.proxy, model, adapters, batches=batches, seed=args.seed,
                            progress=lambda items: tqdm(items, desc=f"scoring ({args.proxy})", leave=False))
    if args.json:
        print(json.dumps(scores, indent=1))
        return 0
    ranked = sorted(scores, key=lambda n: -scores[n])
    print(f"{'rank':>4}  {'module':<28} {'group':<9} {args.proxy}")
    for i, name in enumerate(ranked, 1):
        print(f"{i:>4}  {name:<28} {adapters.module(name).group:<9} {scores[name]:.6g}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .runs import data_home, find_runs

    home = Path(args.home).expanduser().resolve() if args.home else data_home()
    rows = []
    for record in find_runs(home):
        record.mark_failed_if_dead()
        cfg, summary = record.config(), record.summary()
        rows.append({"run": record.run_id, "status": summary.get("status"), "task": cfg.get("task"),
                     "mode": cfg.get("mode"), "proxy": cfg.get("proxy") if cfg.get("mode") in ("static", "dynamic") else "-",
                     "best": summary.get("best_score"), "trainable": summary.get("trainable_params"),
                     "wall_s": summary.get("wall_seconds"), "error": summary.get("error"), "path": str(record.path)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no runs under {home / 'runs'}")
        return 0
    print(f"{'run':<48} {'status':<9} {'task':<6} {'mode':<8} {'proxy':<10} {'best':>7} {'trainable':>10} {'wall s':>8}")
    for r in rows:
        best = f"{r['best']:.4f}" if isinstance(r["best"], (int, float)) else "-"
        trainable = f"{r['trainable']:,}" if isinstance(r["trainable"], int) else "-"
        wall = f"{r['wall_s']:.0f}" if isinstance(r["wall_s"], (int, float)) else "-"
        print(f"{r['run']:<48} {r['status']:<9} {str(r['task']):<6} {str(r['mode']):<8} {str(r['proxy']):<10} "
              f"{best:>7} {trainable:>10} {wall:>8}")
        if r["status"] == "failed" and r["error"]:
            print(f"    {r['error']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import load_run_for_inference, predict

    loaded = load_run_for_inference(args.run)
    result = predict(loaded, args.text, args.text_pair)
    print(json.dumps(result))
    return 0


COMMANDS = {"train": cmd_train, "score": cmd_score, "runs": cmd_runs, "predict": cmd_predict}


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        # our own input errors (DataError, ModelError, UnsupportedModelError are ValueErrors)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # a failure during real work: the record says failed, one line here
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: {type(exc).__name__}: {message}", file=sys.stderr)
        return EXIT_FAILED
