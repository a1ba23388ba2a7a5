"""``python -m heterolora_core {train,score,runs,predict}``.

Bad input (unknown task, model, proxy or mode, rank < 1, a ratio outside (0, 1], a budget that
enables nothing, missing GLUE files or columns, an unsupported architecture, a model folder
without weights) is checked before anything heavy is loaded (:func:`heterolora_core.planning.check_run`):
stderr gets one line, the exit code is 2, no traceback, and no run folder is left claiming to be
running. The ``train`` flags are the fields of :class:`~heterolora_core.training.run_config.RunConfig`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

from heterolora_core.methods import registry
from heterolora_core.records.record import RunRecord, Status, read_json
from heterolora_core.records.worker import add_executor_arguments, launcher_from_args, worker_pid
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import DEFAULT_SKETCH_RANK, LORA_TARGETS, Proxy, Scoring

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


_TYPES = {"int": int, "float": float, "str": str}


def _add_run_config_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field; only flags given on the command line override ``--config``."""
    S = argparse.SUPPRESS
    defaults = RunConfig()
    p.add_argument("--config", help="a run's config.json to start from (flags override it)")
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = ",".join(default) if isinstance(default, list) else default
        text = f.metadata["help"] + (f" (default: {shown})" if default not in (None, False) else "")
        if f.name == "mode":
            text = "the method: " + "; ".join(f"{m}: {registry.info(m).label}" for m in registry.names()) + \
                   f" (default: {default})"
        elif f.name == "proxy":
            text += f"; one of {', '.join(p.value for p in Proxy)}"
        if f.name == "shortcuts":
            p.add_argument("--shortcuts", dest="shortcuts", action="store_true", default=S, help=text)
            p.add_argument("--no-shortcuts", dest="shortcuts", action="store_false", default=S,
                           help="LoRA candidates only")
        elif f.name == "bf16":
            p.add_argument(flag, action="store_true", default=S, help=text)
        elif f.name == "lora_targets":
            p.add_argument(flag, type=_csv_list, default=S, help=text)
        else:
            p.add_argument(flag, type=_TYPES[str(f.type).split(" ")[0]], default=S, help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m heterolora_core",
                     description="HeteroLoRA Studio engine: where should LoRA's trainable parameters go?")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune with uniform LoRA, static or dynamic HeteroLoRA, AdaLoRA",
                           description="Fine-tune and write a run record (config.json, summary.json, metrics.jsonl, reallocations.jsonl).")
    _add_run_config_arguments(train)
    train.add_argument("--out", help="run folder (default: $HETEROLORA_HOME/runs/<run-id>, HETEROLORA_HOME defaults to data/)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")

    score = sub.add_parser("score", help="print every candidate's proxy score without training")
    score.add_argument("--model", default=RunConfig.model)
    score.add_argument("--task", default="mrpc")
    score.add_argument("--train-file")
    score.add_argument("--dev-file")
    score.add_argument("--proxy", default=Proxy.GRAD_NORM.value, choices=[p.value for p in Proxy])
    score.add_argument("--rank", type=int, default=8)
    score.add_argument("--lora-targets", type=_csv_list, default=["q", "v"], help=f"subset of {','.join(LORA_TARGETS)}")
    score.add_argument("--shortcuts", dest="shortcuts", action="store_true", default=True)
    score.add_argument("--no-shortcuts", dest="shortcuts", action="store_false")
    score.add_argument("--batches", type=int, default=8, help="scoring batches (default: 8)")
    score.add_argument("--batch-size", type=int, default=16)
    score.add_argument("--max-length", type=int, default=128)
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--scoring", default=Scoring.AUTO.value, choices=[s.value for s in Scoring],
                       help="how gradient statistics are held (default: auto; exact: the full gradient)")
    score.add_argument("--sketch-rank", type=int, default=DEFAULT_SKETCH_RANK, help="k of the scoring sketch")
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")

    runs = sub.add_parser("runs", help="list the runs under the data home")
    runs.add_argument("--home", help="data home (default: $HETEROLORA_HOME or data/)")
    runs.add_argument("--json", action="store_true")

    sweep = sub.add_parser("sweep", help="queue the runs of a sweep file (YAML or JSON), resumably",
                           description="Expand a sweep file into runs, print their count and each row's budget, "
                                       "skip the runs already finished and queue the rest under one experiment.")
    sweep.add_argument("file", help="the sweep file (see heterolora_core/sweeps.py for its keys)")
    sweep.add_argument("--home", help="data home (default: $HETEROLORA_HOME or data/)")
    sweep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a base setting (repeatable), e.g. --set lr=0.001")
    sweep.add_argument("--dry-run", action="store_true", help="print the plan, queue nothing")
    sweep.add_argument("--wait", action="store_true",
                       help="train the queued runs now (a worker in this process, or the home's running worker) "
                            "and return when the sweep is finished")
    sweep.add_argument("--slots", type=int, help="with --wait: runs at once (default: the home's setting, else 1)")
    sweep.add_argument("--gpus", help="with --wait: comma list of CUDA device ids to share out between the slots "
                                      "(slot i gets gpus[i * len(gpus) // slots])")
    sweep.add_argument("--deadline-minutes", type=float, help="with --wait: start no run after this many minutes")
    add_executor_arguments(sweep)

    predict = sub.add_parser("predict", help="predict with a finished run's adapters and head")
    predict.add_argument("--run", required=True, help="the run folder")
    predict.add_argument("--text", required=True)
    predict.add_argument("--text-pair")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    base: dict = {}
    if getattr(args, "config", None):
        base, problem = read_json(Path(args.config))
        if base is None:
            raise ValueError(f"cannot read a run config from {args.config}: {problem}")
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "out", "no_progress")}
    return RunConfig.from_dict({**base, **overrides}).normalised()


def cmd_train(args: argparse.Namespace) -> int:
    from heterolora_core.planning import check_run
    from heterolora_core.training.environment import RunCancelled
    from heterolora_core.training.trainer import run_training

    config = config_from_args(args)
    if args.out and RunRecord(args.out).exists():  # refused before the heavy checks; run_training checks again
        status = RunRecord(args.out).raw_summary().status
        if status != Status.QUEUED:
            raise ValueError(f"{args.out} already holds a run ({status}); choose another --out")
    check_run(config)
    try:
        record = run_training(config, args.out, progress=not args.no_progress)
    except RunCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    s = record.summary()
    if s.best_score is None:
        print(f"done: {record.path}")
    else:
        print(f"done: {record.path}  best {s.metric} {s.best_score:.4f}  final {s.final_score or float('nan'):.4f}  "
              f"trainable {s.trainable_params or 0:,} (+ head {s.head_params or 0:,})  {s.wall_seconds} s")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from heterolora_core.planning import score_candidates

    if args.batches < 1:
        raise ValueError("--batches must be >= 1")
    scores, groups = score_candidates(args.proxy, model=args.model, task=args.task, train_file=args.train_file,
                                dev_file=args.dev_file, rank=args.rank, lora_targets=args.lora_targets,
                                shortcuts=args.shortcuts, batches=args.batches, batch_size=args.batch_size,
                                max_length=args.max_length, seed=args.seed, scoring=args.scoring,
                                sketch_rank=args.sketch_rank)
    if args.json:
        print(json.dumps(scores, indent=1))
        return 0
    ranked = sorted(scores, key=lambda n: -scores[n])
    print(f"{'rank':>4}  {'module':<28} {'group':<9} {args.proxy}")
    for i, name in enumerate(ranked, 1):
        print(f"{i:>4}  {name:<28} {groups[name]:<9} {scores[name]:.6g}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """Every run the data home's store indexes (CLI runs, queued runs, benchmark records), newest
    first; a damaged record is listed with what is wrong with it. Scores print in GLUE points
    (×100); ``--json`` keeps the records' fractions."""
    from heterolora_core.analysis.units import format_points
    from heterolora_core.records.store import RunStore

    store = RunStore(Path(args.home).expanduser() if args.home else None)
    rows = []
    for run in store.list_runs():
        config, summary = run.config, run.summary
        method = registry.find(config.mode) if config else None
        rows.append({"run": run.run_id, "status": summary.status, "task": config.task if config else None,
                     "mode": config.mode if config else None,
                     "proxy": config.proxy if method is not None and method.searches else "-",
                     "best": summary.best_score, "trainable": summary.trainable_params,
                     "wall_s": summary.wall_seconds, "error": summary.error, "problem": run.problem,
                     "path": str(run.path)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no runs under {store.home}")
        return 0
    print(f"{'run':<48} {'status':<9} {'task':<6} {'mode':<8} {'proxy':<10} {'best':>7} {'trainable':>10} {'wall s':>8}")
    for r in rows:
        best = format_points(r["best"], missing="-")
        trainable = f"{r['trainable']:,}" if r["trainable"] is not None else "-"
        wall = f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "-"
        print(f"{r['run']:<48} {r['status']:<9} {str(r['task']):<6} {str(r['mode']):<8} {str(r['proxy']):<10} "
              f"{best:>7} {trainable:>10} {wall:>8}")
        if r["problem"]:
            print(f"    damaged record: {r['problem']}")
        elif r["error"] and r["status"] == Status.FAILED:
            print(f"    {r['error']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from heterolora_core.inference import load_run_for_inference, predict

    loaded = load_run_for_inference(args.run)
    print(json.dumps(predict(loaded, args.text, args.text_pair)))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from heterolora_core.records.store import RunStore
    from heterolora_core.sweeps import drain, parse_overrides, prepare, submit

    if not args.wait and args.executor != "local":
        raise ValueError("--executor trains the runs: give it with --wait")
    store = RunStore(Path(args.home).expanduser() if args.home else None)
    spec, planned = prepare(store, args.file, parse_overrides(args.set))
    print(describe_plan(spec, planned), flush=True)
    if args.dry_run:
        return 0
    launcher = _sweep_launcher(args, store.home)  # before queueing: a missing Ray queues nothing
    try:
        records = submit(store, planned, spec.sweep)
        print(f"queued {len(records)} run(s) under experiment {spec.sweep}", flush=True)
        if not args.wait:
            return 0
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
        return drain(store, spec.sweep, slots=args.slots, gpus=gpus, deadline_minutes=args.deadline_minutes,
                     launcher=launcher)
    finally:
        if launcher is not None:
            launcher.close()


def _sweep_launcher(args: argparse.Namespace, home: Path):
    """The launcher of ``sweep --wait --executor ...`` (None: local processes); ValueError when the
    home's worker already runs (it would train the runs, not Ray) or Ray is missing."""
    if args.executor == "local":
        launcher_from_args(args)  # refuses Ray flags without --executor ray
        return None
    pid = worker_pid(home)
    if pid is not None:
        raise ValueError(f"the data home's worker (pid {pid}) is running and would train these runs; "
                         "stop it to train them on Ray")
    return launcher_from_args(args)


def describe_plan(spec, planned) -> str:
    """The count of a sweep's runs, each row's trainable parameters (exact, from the model's shapes;
    every check before a launch is made on the way: :func:`heterolora_core.planning.sweep_budgets`)
    and what is still to do."""
    from heterolora_core.planning import sweep_budgets
    from heterolora_core.sweeps import state_counts

    counts = state_counts(planned)
    lines = [f"sweep {spec.sweep}: {len(planned)} run(s) — " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    for b in sweep_budgets([run for run, _ in planned]):
        lines.append(f"  row {b.row:<14} {b.task:<6} {b.mode:<8} {b.runs:>3} run(s)  "
                     f"{b.trainable_params:>11,} trainable ({b.uniform_equivalent})  {b.label}")
    return "\n".join(lines)


COMMANDS = {"train": cmd_train, "score": cmd_score, "runs": cmd_runs, "sweep": cmd_sweep, "predict": cmd_predict}


def _one_line(exc: BaseException, limit: int = 500) -> str:
    """The first line of an error's message, cut to ``limit`` characters (a message may quote a
    value read from a file)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as exc:
        # our own input errors (DataError, ModelError, UnsupportedModelError are ValueErrors) and
        # files that cannot be read or written (a read-only --out)
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # a failure during real work: the record says failed, one line here
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
