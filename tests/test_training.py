"""Training runs end to end: the run-record contract of a real short CLI run, the reallocation
schedule and scoring windows, evaluation at the final step, reproducibility from the seed, and the
``predict`` round trip."""
from __future__ import annotations

import concurrent.futures
import json
import math
import subprocess
from types import SimpleNamespace

import pytest

from cli_helpers import GLUE, REPO, cli_env, needs_glue, read_jsonl_strict, run_cli, save_tiny_bert
from heterolora_core.methods.callbacks import SearchCallback
from heterolora_core.records.record import RunRecord
from heterolora_core.search.reallocator import ReallocationSchedule
from heterolora_core.training.run_config import RunConfig

# ---------------------------------------------------------------------------------------------
# The schedule (no model needed)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps_per_epoch, total, fraction, expected", [
    # the authors' f = 1/5 over three epochs: every 20 steps, epoch starts included, 0 and the end excluded
    (100, 300, 0.2, list(range(20, 300, 20))),
    (100, 300, 1.0, [100, 200]),                     # once per epoch
    (100, 250, 0.5, [50, 100, 150, 200]),            # a partial last epoch stops at the last step
    (8, 6, 0.25, [2, 4]),                            # --max-steps ends mid-epoch
    (10, 30, 1 / 3, [3, 7, 10, 13, 17, 20, 23, 27]),  # round(j·f·S) within each epoch
    (7, 14, 0.2, [1, 3, 4, 6, 7, 8, 10, 11, 13]),     # S = 7, f = 0.2: 0, 1.4, 2.8, 4.2, 5.6 rounded
    (3, 6, 0.1, [1, 2, 3, 4, 5]),                    # f·S < 1: rounding repeats a step, kept once
    (100, 20, 0.2, []),                               # shorter than the first interval: step 0 only
    (1, 5, 0.2, [1, 2, 3, 4]),                        # one step per epoch: every epoch start
    (10, 10, 0.25, [3, 5, 8]),                        # halves round up: 2.5 -> 3, 7.5 -> 8
])
def test_reallocation_steps(steps_per_epoch, total, fraction, expected):
    schedule = ReallocationSchedule(steps_per_epoch, total, fraction)
    assert schedule.steps() == expected
    # the training loop never materialises the schedule: its length and membership agree with it
    assert len(schedule) == len(expected)
    assert [s for s in range(-1, total + 2) if s in schedule] == expected


def _callback(schedule: ReallocationSchedule, score_window: int, from_training: bool = True):
    reallocator = SimpleNamespace(scores_from_training=from_training)
    return SearchCallback(reallocator, schedule, score_window, scoring_batches=None, n_scoring_batches=0)


@pytest.mark.parametrize("window", [1, 8, 20])
def test_scoring_window_is_the_steps_just_before_each_reallocation(window):
    schedule = ReallocationSchedule(100, 300, 0.2)
    realloc_steps = schedule.steps()
    callback = _callback(schedule, window)
    in_window = [i for i in range(300) if callback.window_for(i)]
    expected = sorted({i for s in realloc_steps for i in range(s - window, s)})
    assert in_window == expected
    # every reallocation sees exactly `window` steps (the windows do not overlap at these settings)
    for s in realloc_steps:
        assert sum(1 for i in in_window if s - window <= i < s) == window
    # no window after the last reallocation
    assert max(in_window) == realloc_steps[-1] - 1


def test_no_scoring_window_when_scores_need_extra_passes():
    schedule = ReallocationSchedule(100, 300, 0.2)
    assert not any(_callback(schedule, 8, from_training=False).window_for(i) for i in range(300))


# ---------------------------------------------------------------------------------------------
# A tiny in-process run: what each reallocation scored on, and evaluation at the final step
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def windowed_run(tiny_bert, tmp_path_factory):
    """32 rows, batch 4: 8 steps per epoch; reallocations after steps 4 and 8 (f = 0.5), a score
    window of 3 steps, evaluation every 4 steps, stopping at step 10 (between evaluations)."""
    from heterolora_core.search import reallocator
    from heterolora_core.training.trainer import run_training

    out = tmp_path_factory.mktemp("windowed") / "run"
    seen = []
    original = reallocator.Reallocator.reallocate

    def counted() -> int | None:  # what the Runs page shows as trainable parameters at this moment
        return json.loads((out / "summary.json").read_text()).get("trainable_params")

    def spy(self, step, batches=None):
        seen.append({"step": step, "calls": dict(self.collector.calls), "batches": batches, "params_before": counted()})
        result = original(self, step, batches)
        seen[-1]["params_after"] = counted()
        return result

    with pytest.MonkeyPatch.context() as env:
        env.setattr(reallocator.Reallocator, "reallocate", spy)
        if GLUE is not None:
            env.setenv("GLUE_DIR", str(GLUE))
        config = RunConfig(task="mrpc", model=str(tiny_bert), mode="dynamic", proxy="grad_norm", rank=4,
                           train_limit=32, batch_size=4, max_length=32, max_steps=10, realloc_every=0.5,
                           score_window=3, eval_every=4, dev_limit=16, logging_steps=1, device="cpu", seed=0)
        record = run_training(config, out, progress=False)
    return record, seen


@needs_glue
def test_each_reallocation_scores_exactly_its_window(windowed_run):
    record, seen = windowed_run
    assert [s["step"] for s in seen] == [0, 4, 8]
    summary = record.summary()
    assert summary.planned_reallocations == 3  # step 0 and the schedule's steps
    config, _ = record.run_config()
    schedule = ReallocationSchedule(math.ceil(summary.train_rows / config.batch_size), summary.max_steps,
                                    config.realloc_every)
    assert schedule.steps() == [4, 8]
    # step 0 is scored from the first training batch (every module on), without extra passes
    assert seen[0]["batches"] is None and set(seen[0]["calls"].values()) == {1}
    # later reallocations: the gradients of exactly the 3 training steps before them, every candidate
    names = set(record.reallocations()[0].scores)
    for s in seen[1:]:
        assert s["batches"] is None
        assert set(s["calls"]) == names
        assert set(s["calls"].values()) == {3}, s


@needs_glue
def test_summary_counts_the_selected_modules_from_the_first_selection(windowed_run):
    record, seen = windowed_run
    enabled_params = record.summary().trainable_params
    # tiny BERT: every candidate costs the same, so each selection of the same size costs the same
    n_candidates = len(record.reallocations()[0].scores)
    assert len(record.reallocations()[0].enabled) < n_candidates
    # before the search has selected, every candidate is on: no count rather than the all-on count
    assert seen[0]["params_before"] is None
    assert [s["params_after"] for s in seen] == [enabled_params] * 3


@needs_glue
def test_evaluates_at_the_final_step_between_evaluations(windowed_run):
    record, _ = windowed_run
    evals = [m for m in read_jsonl_strict(record.path / RunRecord.METRICS) if "eval_accuracy" in m]
    assert [m["step"] for m in evals] == [4, 8, 10]
    summary = record.summary()
    assert summary.final_score == evals[-1]["eval_accuracy"]
    assert summary.best_score == max(m["eval_accuracy"] for m in evals)
    losses = [m for m in record.metrics() if "loss" in m]
    assert [m["step"] for m in losses] == list(range(1, 11))


# ---------------------------------------------------------------------------------------------
# A real short run through the CLI: the run-record contract
# ---------------------------------------------------------------------------------------------

CONTRACT_ARGS = ["--task", "mrpc", "--mode", "dynamic", "--proxy", "grad_norm", "--rank", "32",
                 "--enable-ratio", "0.25", "--train-limit", "64", "--batch-size", "8", "--max-length", "64",
                 "--max-steps", "6", "--realloc-every", "0.25", "--dev-limit", "32", "--logging-steps", "2",
                 "--device", "cpu", "--seed", "0", "--no-progress"]


@pytest.fixture(scope="module")
def contract_run(tmp_path_factory):
    """The embedded MiniLM (6 layers, hidden 384) on MRPC: 64 rows / batch 8 = 8 steps per epoch,
    stopped by --max-steps 6 in the middle of the first epoch."""
    root = tmp_path_factory.mktemp("contract")
    out = root / "run"
    result = run_cli("train", *CONTRACT_ARGS, "--out", str(out), env=cli_env(root / "home"), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result


@needs_glue
@pytest.mark.slow
def test_cli_run_record_contract(contract_run):
    out, result = contract_run
    assert result.stdout.strip().splitlines()[-1].startswith(f"done: {out}")
    assert "it/s]" not in result.stderr and "Loading weights" not in result.stderr  # --no-progress: no bar at all
    record = RunRecord(out)

    config = json.loads((out / "config.json").read_text())
    for key in ("task", "model", "mode", "proxy", "rank", "enable_ratio", "ranking", "shortcuts", "lora_targets",
                "seed", "lr", "epochs", "max_steps", "versions", "git_commit"):
        assert key in config, key
    assert (config["task"], config["model"], config["mode"], config["proxy"]) == ("mrpc", "embedded", "dynamic", "grad_norm")
    assert (config["rank"], config["enable_ratio"], config["shortcuts"], config["lora_targets"]) == (32, 0.25, True, ["q", "v"])
    assert (config["seed"], config["max_steps"], config["ranking"]) == (0, 6, "combined")
    assert {"torch", "transformers"} <= set(config["versions"]) and config["versions"]["torch"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert config["git_commit"] == (head or None)
    # config.json reruns the run: RunConfig round-trips it
    assert RunConfig.from_dict(config).to_dict() == {k: config[k] for k in RunConfig().to_dict()}

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and "pid" not in summary and "error" not in summary
    # 6 layers x (q, v) = 12 LoRA + 23 shortcut candidates; 25 % enables floor(3) + round(5.75) = 9
    # modules of rank 32 on 384 -> 384 maps: 9 x 32 x (384 + 384)
    assert summary["trainable_params"] == 9 * 32 * 768 == 221184
    assert summary["head_params"] == 384 * 2 + 2
    assert summary["metric"] == "accuracy"
    assert summary["num_reallocations"] == 3 and summary["planned_reallocations"] == 3
    steps_per_epoch = math.ceil(summary["train_rows"] / config["batch_size"])
    assert steps_per_epoch == 8  # 64 rows / batch 8; --max-steps 6, --realloc-every 0.25
    assert ReallocationSchedule(steps_per_epoch, summary["max_steps"], config["realloc_every"]).steps() == [2, 4]
    assert summary["step"] == 6 and summary["max_steps"] == 6 and summary["progress"] == 1.0
    assert 0.0 <= summary["final_score"] <= summary["best_score"] <= 1.0
    assert summary["wall_seconds"] > 0 and summary["search_seconds"] >= 0
    assert summary["wall_seconds"] >= summary["search_seconds"]

    metrics = read_jsonl_strict(out / "metrics.jsonl")
    assert metrics == record.metrics()
    losses = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in losses] == [2, 4, 6]
    assert all({"step", "epoch", "loss"} <= set(m) for m in losses)
    assert [m["epoch"] for m in losses] == [0.25, 0.5, 0.75]
    evals = [m for m in metrics if "eval_accuracy" in m]
    # --max-steps stopped mid-epoch: still exactly one evaluation, at the final step
    assert [m["step"] for m in evals] == [6]
    assert {"eval_loss", "eval_f1"} <= set(evals[0])
    assert summary["final_score"] == evals[-1]["eval_accuracy"] == summary["best_score"]

    reallocations = read_jsonl_strict(out / "reallocations.jsonl")
    assert [r["step"] for r in reallocations] == [0, 2, 4]
    names = list(reallocations[0]["scores"])
    assert len(names) == 35 and sum(".lora." in n for n in names) == 12
    for r in reallocations:
        assert list(r["scores"]) == names
        assert len(r["enabled"]) == 9 and set(r["enabled"]) <= set(names)
        assert len(set(r["enabled"])) == 9
    enabled_at_end = json.loads((out / "adapters" / "enabled.json").read_text())
    assert enabled_at_end == reallocations[-1]["enabled"]
    assert (out / "adapters" / "adapters.safetensors").is_file()
    assert not (out / ".trainer").exists()


@needs_glue
@pytest.mark.slow
def test_predict_round_trip(contract_run):
    import torch
    from safetensors.torch import load_file

    from heterolora_core.inference import load_run_for_inference, predict

    out, _ = contract_run
    text = "The company said profits rose 5 percent in the quarter."
    pair = "Profits at the company rose five percent this quarter, it said."
    result = run_cli("predict", "--run", str(out), "--text", text, "--text-pair", pair, env=cli_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert set(printed) == {"label", "label_name", "probabilities"}
    assert printed["label_name"] == ["not_equivalent", "equivalent"][printed["label"]]
    assert len(printed["probabilities"]) == 2 and abs(sum(printed["probabilities"]) - 1) < 1e-5

    loaded = load_run_for_inference(out)
    assert printed == predict(loaded, text, pair)
    # the loaded model is the trained one: its adapters and head are the saved tensors ...
    saved = load_file(str(out / "adapters" / "adapters.safetensors"))
    adapters = loaded.model.heterolora
    assert adapters.enabled() == json.loads((out / "adapters" / "enabled.json").read_text())
    for module in adapters.modules_in_order():
        assert torch.equal(module.lora_B.detach(), saved[f"adapters.{module.name}.lora_B"])
        assert torch.equal(module.lora_A.detach(), saved[f"adapters.{module.name}.lora_A"])
    assert any(saved[f"adapters.{n}.lora_B"].abs().max() > 0 for n in adapters.enabled())
    # ... and the printed prediction is its logits
    inputs = loaded.tokenizer(text, pair, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**inputs).logits[0]
    probabilities = torch.softmax(logits, dim=-1)
    assert printed["label"] == int(logits.argmax())
    assert printed["probabilities"] == pytest.approx(probabilities.tolist(), abs=1e-6)
    # the adapters matter: with every candidate off, the logits differ
    adapters.set_enabled([])
    with torch.no_grad():
        bare = loaded.model(**inputs).logits[0]
    assert not torch.allclose(bare, logits)


def test_predict_rejects_a_folder_that_is_not_a_finished_run(tmp_path):
    RunRecord.create(tmp_path / "queued", {"task": "mrpc", "mode": "dynamic"})
    for folder in (tmp_path / "missing", tmp_path / "queued"):
        result = run_cli("predict", "--run", str(folder), "--text", "hi", env=cli_env(), timeout=120)
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error:"), result.stderr


# ---------------------------------------------------------------------------------------------
# Same seed, same run
# ---------------------------------------------------------------------------------------------

def _comparable_metrics(record: RunRecord) -> list[dict]:
    return [{k: v for k, v in m.items() if "runtime" not in k and "per_second" not in k} for m in record.metrics()]


def _comparable_reallocations(record: RunRecord) -> list[dict]:
    return [{k: getattr(r, k) for k in ("step", "scores", "enabled")} for r in record.reallocations()]


SEED_RUN = ["--task", "mrpc", "--mode", "dynamic", "--proxy", "grad_norm", "--rank", "4", "--train-limit", "48",
            "--batch-size", "8", "--max-length", "32", "--max-steps", "12", "--realloc-every", "0.34",
            "--score-window", "2", "--dev-limit", "32", "--logging-steps", "2", "--device", "cpu"]


@needs_glue
@pytest.mark.slow
def test_same_seed_same_selections_and_metrics(tiny_bert, tmp_path):
    env = cli_env(tmp_path / "home")

    def train(name):
        return run_cli("train", "--model", str(tiny_bert), *SEED_RUN, "--seed", "0", "--no-progress",
                       "--out", str(tmp_path / name), env=env, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # two separate processes
        results = dict(zip("ab", pool.map(train, "ab")))
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
    a, b = RunRecord(tmp_path / "a"), RunRecord(tmp_path / "b")
    assert len(a.reallocations()) == a.summary().planned_reallocations == 6
    assert [r.enabled for r in a.reallocations()] == [r.enabled for r in b.reallocations()]
    assert _comparable_reallocations(a) == _comparable_reallocations(b)  # the scores too, bit for bit
    assert _comparable_metrics(a) == _comparable_metrics(b)
    assert any("eval_loss" in m for m in a.metrics())
    assert a.summary().best_score == b.summary().best_score
    assert a.summary().final_score == b.summary().final_score

    # another seed draws other batches (and initialisations): the losses change. In-process: the
    # same arguments through the CLI's own parser.
    from heterolora_core.cli import build_parser, config_from_args
    from heterolora_core.training.trainer import run_training

    other_args = build_parser().parse_args(["train", "--model", str(tiny_bert), *SEED_RUN, "--seed", "1"])
    other_config = config_from_args(other_args)
    assert other_config.to_dict() == {**RunConfig.from_dict(a.config()).to_dict(), "seed": 1}
    with pytest.MonkeyPatch.context() as patch:
        if GLUE is not None:
            patch.setenv("GLUE_DIR", str(GLUE))
        other = run_training(other_config, tmp_path / "other", progress=False)
    assert [m.get("loss") for m in other.metrics()] != [m.get("loss") for m in a.metrics()]


@needs_glue
def test_run_in_a_thread_and_signal_handlers_restored(tiny_bert, tmp_path):
    """run_training is a library call: it works off the main thread (no signal handlers there) and
    leaves the caller's SIGTERM handler as it found it."""
    import signal
    import threading

    from heterolora_core.training.trainer import run_training

    config = RunConfig(task="mrpc", model=str(tiny_bert), mode="static", rank=4, train_limit=16, batch_size=8,
                       max_length=32, max_steps=2, dev_limit=8, device="cpu")
    outcome = {}

    def target():
        try:
            outcome["record"] = run_training(config, tmp_path / "threaded", progress=False)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    with pytest.MonkeyPatch.context() as patch:
        if GLUE is not None:
            patch.setenv("GLUE_DIR", str(GLUE))
        thread = threading.Thread(target=target)
        thread.start()
        thread.join(timeout=300)
        assert "error" not in outcome, repr(outcome.get("error"))
        assert outcome["record"].summary().status == "done"

        def mine(signum, frame):  # pragma: no cover - never called
            pass

        previous = signal.signal(signal.SIGTERM, mine)
        try:
            run_training(config, tmp_path / "main_thread", progress=False)
            assert signal.getsignal(signal.SIGTERM) is mine
        finally:
            signal.signal(signal.SIGTERM, previous)
