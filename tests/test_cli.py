"""``python -m heterolora_core``: the bad-input contract of ``train`` (exit 2, one ``error:`` line,
no traceback, no run left claiming to be running, a finished run never overwritten), ``--help``,
``runs`` and ``score``. Every command runs in a subprocess, as a user would run it."""
from __future__ import annotations

import concurrent.futures
import json
import re
import time
from pathlib import Path

import pytest

from cli_helpers import cli_env, needs_glue, run_cli, save_tiny_bert
from heterolora_core.records.record import RunRecord, find_runs

# Each case: (id, extra train arguments, extra environment, a fragment the error line must contain).
# "{tmp}" is replaced by the case's scratch folder; the fixture below creates what the cases need.
BAD_INPUTS = [
    ("unknown-task", ["--task", "nosuchtask"], {}, "nosuchtask"),
    ("model-folder-missing", ["--model", "/nonexistent/model"], {}, "/nonexistent/model"),
    ("model-folder-without-weights", ["--model", "{tmp}/config_only"], {}, "no weights"),
    ("model-hub-id-unknown", ["--model", "no-such-model-xyz-123"], {"HF_HUB_OFFLINE": "1"}, "no-such-model-xyz-123"),
    ("unknown-proxy", ["--proxy", "nosuchproxy"], {}, "nosuchproxy"),
    ("unknown-mode", ["--mode", "nosuchmode"], {}, "nosuchmode"),
    ("rank-zero", ["--rank", "0"], {}, "rank"),
    ("enable-ratio-zero", ["--enable-ratio", "0"], {}, "enable ratio"),
    ("enable-ratio-above-one", ["--enable-ratio", "1.5"], {}, "enable ratio"),
    ("budget-enables-nothing", ["--enable-ratio", "0.01", "--no-shortcuts"], {}, "enables nothing"),
    ("glue-dir-without-task", [], {"GLUE_DIR": "{tmp}/empty_glue"}, "MRPC"),
    ("train-file-without-columns", ["--train-file", "{tmp}/bad.csv", "--dev-file", "{tmp}/good.csv"], {}, "missing column"),
    ("unsupported-architecture", ["--model", "{tmp}/gpt2"], {}, "gpt2"),
    ("out-holds-finished-run", ["--out", "{tmp}/finished", "--model", "{tmp}/tiny_bert"], {}, "already holds a run"),
]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    """Runs every bad-input case (three at a time: each is mostly interpreter start-up)."""
    import torch
    import transformers as tf

    root = tmp_path_factory.mktemp("bad_inputs")
    shared = root / "shared"
    shared.mkdir()
    # a folder with a config but no weights
    (shared / "config_only").mkdir()
    tf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=64).save_pretrained(shared / "config_only")
    # an architecture the engine does not support, with weights
    torch.manual_seed(0)
    tf.GPT2ForSequenceClassification(tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=4, n_positions=64,
                                                   bos_token_id=0, eos_token_id=0)).save_pretrained(shared / "gpt2")
    save_tiny_bert(shared / "tiny_bert")
    (shared / "empty_glue").mkdir()
    (shared / "bad.csv").write_text("sentence,lbl\nhello,1\nworld,0\n")
    (shared / "good.csv").write_text("text,label\nhello,1\nworld,0\n")
    # a finished run that must not be touched
    finished = shared / "finished"
    RunRecord.create(finished, {"task": "mrpc", "mode": "dynamic"}, status="queued")
    RunRecord(finished).update_summary(status="done", best_score=0.5)
    RunRecord(finished).append_metrics(step=1, epoch=0.1, loss=0.7)
    (finished / "adapters").mkdir()
    (finished / "adapters" / "adapters.safetensors").write_bytes(b"not really weights")
    before = _snapshot(finished)
    time.sleep(0.05)  # so that a rewrite would show in the mtimes

    def one(case):
        case_id, args, env_extra, _ = case
        home = root / case_id / "home"
        fill = lambda s: s.replace("{tmp}", str(shared))
        args = [fill(a) for a in args]
        if "--out" not in args:
            args += ["--out", str(root / case_id / "out")]
        env = cli_env(home, **{k: fill(v) for k, v in env_extra.items()})
        result = run_cli("train", *args, "--max-steps", "1", "--no-progress", env=env, timeout=240)
        return case_id, {"result": result, "home": home, "out": Path(args[args.index("--out") + 1])}

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(one, BAD_INPUTS))
    results["out-holds-finished-run"]["before"] = before
    return results


def _running_runs(folder: Path) -> list[str]:
    return [str(r.path) for r in find_runs(root=folder) if r.raw_summary().status in ("running", "queued")] \
        if folder.exists() else []


@needs_glue
@pytest.mark.slow
@pytest.mark.parametrize("case_id, args, env, fragment", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_exits_2_with_one_error_line(bad_input_results, case_id, args, env, fragment):
    got = bad_input_results[case_id]
    result = got["result"]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"stderr must be exactly one line, got {len(lines)}:\n{result.stderr[-3000:]}"
    assert lines[0].startswith("error:"), lines[0]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    # no run folder left claiming to be running (neither --out nor the data home)
    out = got["out"]
    if case_id == "out-holds-finished-run":
        assert _snapshot(out) == got["before"], "the finished run's files were modified"
        assert RunRecord(out).raw_summary().status == "done"
    else:
        assert not (out / RunRecord.SUMMARY).exists() or RunRecord(out).raw_summary().status not in ("running", "queued")
    assert _running_runs(got["home"]) == []


@needs_glue
@pytest.mark.slow
def test_bad_input_is_refused_before_a_run_folder_is_made(bad_input_results):
    """Every check above happens before the run folder is claimed: nothing is created at all
    (stricter than "nothing left running"), in --out or in the data home."""
    for case_id, got in bad_input_results.items():
        if case_id != "out-holds-finished-run":
            assert not got["out"].exists(), case_id
        assert not (got["home"] / "runs").exists(), case_id


TRAIN_FLAGS = ["--model", "--task", "--mode", "--proxy", "--rank", "--alpha", "--enable-ratio",
               "--match-uniform-rank", "--ranking", "--score-norm", "--shortcuts", "--no-shortcuts",
               "--lora-targets", "--epochs", "--max-steps", "--train-limit", "--realloc-every", "--proxy-batches",
               "--lr", "--batch-size", "--seed", "--device", "--bf16", "--out"]


def test_train_help_documents_every_flag():
    result = run_cli("train", "--help", env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    options = text[text.index("options:"):] if "options:" in text else text
    for flag in TRAIN_FLAGS:
        # the flag is listed as an option and carries a description on its line or the next
        match = re.search(rf"^\s+{re.escape(flag)}\b[^\n]*\n?([^\n]*)", options, flags=re.MULTILINE)
        assert match, f"{flag} is not documented in train --help"
        described = match.group(0).replace(flag, "").strip()
        assert re.search(r"[a-z]{3,}", described), f"{flag} has no description: {match.group(0)!r}"


def test_runs_lists_the_runs_of_the_data_home(tmp_path):
    home = tmp_path / "home"
    done = RunRecord.create(home / "runs" / "20250101-000000-mrpc-dynamic-grad_norm-aaaaaa",
                            {"task": "mrpc", "mode": "dynamic", "proxy": "grad_norm"})
    done.update_summary(status="done", best_score=0.8125, trainable_params=221184, wall_seconds=12.0)
    lora = RunRecord.create(home / "runs" / "20250101-000001-rte-lora-bbbbbb", {"task": "rte", "mode": "lora"})
    lora.update_summary(status="failed", error="ValueError: boom")
    RunRecord.create(tmp_path / "elsewhere" / "runs" / "not-listed", {"task": "sst2", "mode": "lora"})

    listed = run_cli("runs", "--json", env=cli_env(home), timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = {row["run"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {done.run_id, lora.run_id}
    assert rows[done.run_id]["status"] == "done" and rows[done.run_id]["best"] == 0.8125
    assert rows[done.run_id]["trainable"] == 221184 and rows[done.run_id]["proxy"] == "grad_norm"
    assert rows[lora.run_id]["status"] == "failed" and rows[lora.run_id]["proxy"] == "-"

    table = run_cli("runs", env=cli_env(home), timeout=120)
    assert table.returncode == 0
    assert done.run_id in table.stdout and lora.run_id in table.stdout and "ValueError: boom" in table.stdout
    # scores in GLUE points (x100) in the text table; --json keeps the record's fraction (above)
    line = next(l for l in table.stdout.splitlines() if l.startswith(done.run_id))
    assert " 81.25 " in line and "0.8125" not in table.stdout
    assert "not-listed" not in table.stdout

    # --home wins over the environment
    other = run_cli("runs", "--json", "--home", str(tmp_path / "elsewhere"), env=cli_env(home), timeout=120)
    assert [row["run"] for row in json.loads(other.stdout)] == ["not-listed"]


@needs_glue
@pytest.mark.slow
def test_score_prints_a_score_for_every_candidate(tmp_path):
    from heterolora_core.adapters.config import HeteroLoraConfig
    from heterolora_core.adapters.families import attach
    from heterolora_core.training.models import meta_classifier

    model = save_tiny_bert(tmp_path / "tiny_bert")
    result = run_cli("score", "--model", str(model), "--task", "mrpc", "--rank", "4", "--batches", "2",
                     "--batch-size", "4", "--max-length", "32", "--json", env=cli_env(tmp_path / "home"), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout)
    expected = attach(meta_classifier(str(model)), HeteroLoraConfig(rank=4, lora_targets=("q", "v"), shortcuts=True))
    assert set(scores) == set(expected.names())
    assert all(isinstance(v, float) and v >= 0 for v in scores.values())
    assert sum(v > 0 for v in scores.values()) >= len(scores) - 1  # grad_norm is non-zero at B = 0 (layer 0 has no cross_ffn source)


def test_run_training_refuses_a_folder_holding_a_run(tmp_path):
    """The CLI refuses early; ``run_training`` (the dashboard's worker path) refuses too, when it
    claims the folder: only a ``queued`` record may be taken over."""
    from heterolora_core.training.run_config import RunConfig
    from heterolora_core.training.trainer import run_training

    for status in ("done", "failed", "cancelled", "running"):
        folder = tmp_path / status
        RunRecord.create(folder, {"task": "mrpc"}, status="queued").update_summary(status=status)
        before = _snapshot(folder)
        with pytest.raises(ValueError, match="already holds a run"):
            run_training(RunConfig(device="cpu"), folder, progress=False)
        assert _snapshot(folder) == before


def test_runs_filters_limits_and_keeps_columns_aligned_on_long_ids(tmp_path, capsys):
    from heterolora_core.cli import RUNS_LIMIT, main
    from heterolora_testing.synthetic import write_synthetic_run

    home = tmp_path / "home"
    for i in range(RUNS_LIMIT + 5):
        write_synthetic_run(home / "runs" / f"run{i:03d}", task="rte" if i % 3 else "mrpc", n_reallocations=1,
                            steps=10, created_at=1000.0 + i, mode="lora" if i % 2 else "dynamic")
    write_synthetic_run(home / "runs" / ("a-very-long-run-id-" + "x" * 60), n_reallocations=1, steps=10,
                        created_at=5000.0, short_run=True)
    assert main(["runs", "--home", str(home)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows, more = lines[0], lines[1:-1], lines[-1]
    assert len(rows) == RUNS_LIMIT and more.startswith(f"... 6 more (newest {RUNS_LIMIT} shown of {RUNS_LIMIT + 6}")
    assert rows[0].startswith("a-very-long-run-id-") and "done (short)" in rows[0]
    # every column starts (left-aligned) or ends (right-aligned) where its header does, the long id notwithstanding
    for row in rows[:3]:
        for name in ("status", "task", "mode"):
            start = header.index(name)
            assert row[start - 2:start] == "  " and row[start] != " ", (name, row)
        end = header.index("best") + len("best")
        assert row[end - 1] != " " and row[end:end + 2] == "  ", row
    assert main(["runs", "--home", str(home), "--task", "mrpc", "--mode", "dynamic", "--all"]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = sum(1 for i in range(RUNS_LIMIT + 5) if i % 3 == 0 and i % 2 == 0) + 1  # and the long one (mrpc, dynamic)
    assert len(out) == 1 + expected and all(" mrpc " in l and " dynamic " in l for l in out[1:])
    assert main(["runs", "--home", str(home), "--search", "no such run"]) == 0
    assert "match these filters" in capsys.readouterr().out


def test_train_log_lines_read_as_text_not_dicts():
    from heterolora_core.training.callbacks import format_log

    line = format_log({"loss": 0.68561, "grad_norm": 1.2345, "learning_rate": 0.0005, "epoch": 0.25}, 8, 32)
    assert line == ("step 8/32 · training loss 0.6856 · gradient norm (before clipping) 1.2345 · learning rate 5e-4"
                    " · epoch 0.25")
    assert format_log({"eval_loss": 0.61, "eval_accuracy": 0.799, "eval_runtime": 3.1, "total_flos": 1e9}, 32, 32) == \
        "step 32/32 · dev loss 0.6100 · dev accuracy 79.90"


def test_both_of_trainers_log_printers_are_swapped_for_readable_lines():
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from heterolora_core.training.callbacks import ReadablePrinter, ReadableProgress, use_readable_progress

    class FakeTrainer:
        def __init__(self, callbacks):
            self.callback_handler = type("Handler", (), {"callbacks": list(callbacks)})()

        def remove_callback(self, cls):
            self.callback_handler.callbacks = [c for c in self.callback_handler.callbacks if type(c) is not cls]

        def add_callback(self, cls):
            self.callback_handler.callbacks.append(cls())

    for stock, readable in ((ProgressCallback, ReadableProgress), (PrinterCallback, ReadablePrinter)):
        trainer = FakeTrainer([stock()])
        use_readable_progress(trainer)
        assert [type(c) for c in trainer.callback_handler.callbacks] == [readable]
