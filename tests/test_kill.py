"""A training run killed with SIGKILL (no chance to clean up) leaves a readable record, and the
listing reports it as failed with the reason."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import REPO, cli_env, needs_glue, read_jsonl_strict, run_cli, save_tiny_bert
from heterolora_core.records.record import RunRecord, read_json

pytestmark = [needs_glue, pytest.mark.slow]


def _wait_until_training(record: RunRecord, proc: subprocess.Popen, log, timeout: float = 180.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed:\n{log.read()[-3000:]}")
        summary, _ = read_json(record.path / RunRecord.SUMMARY)
        summary = summary or {}
        if summary.get("status") == "running" and record.metrics() and record.reallocations():
            return summary
        time.sleep(0.2)
    pytest.fail("the run never reached a running state with metrics and reallocations")


def test_sigkilled_run_is_readable_and_listed_as_failed(tmp_path):
    model = save_tiny_bert(tmp_path / "tiny_bert")
    home = tmp_path / "home"
    out = home / "runs" / "killed-run"
    # far more steps than the test waits for: it is killed as soon as it has written some of everything
    args = ["train", "--model", str(model), "--task", "mrpc", "--mode", "dynamic", "--proxy", "grad_norm",
            "--rank", "4", "--train-limit", "64", "--batch-size", "8", "--max-length", "32", "--max-steps", "5000",
            "--realloc-every", "0.25", "--score-window", "1", "--logging-steps", "1", "--dev-limit", "16",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    log = open(tmp_path / "train.log", "w+")  # a file, not a pipe: nothing blocks on a full buffer
    proc = subprocess.Popen([sys.executable, "-m", "heterolora_core", *args], cwd=REPO, env=cli_env(home),
                            stdout=log, stderr=subprocess.STDOUT)
    record = RunRecord(out)
    try:
        running = _wait_until_training(record, proc, log)
        assert running["pid"] == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL

    # every JSON-lines file parses line by line (only a torn last line may not)
    metrics = read_jsonl_strict(out / RunRecord.METRICS)
    reallocations = read_jsonl_strict(out / RunRecord.REALLOCATIONS)
    assert metrics and reallocations
    assert all("step" in m and "loss" in m for m in metrics if "eval_loss" not in m)
    assert all(isinstance(r["enabled"], list) and r["scores"] for r in reallocations)
    assert json.loads((out / RunRecord.CONFIG).read_text())["max_steps"] == 5000
    # the readers skip a torn last line: the whole lines before it are still there
    with open(out / RunRecord.METRICS, "a") as fh:
        fh.write('{"step": 99, "epoch": 0.1, "lo')
    assert record.metrics() == metrics
    assert not (out / "adapters").exists()

    # the raw summary still says running; the effective status is failed, with the reason
    assert record.raw_summary().status == "running"
    effective = record.summary()
    assert effective.status == "failed"
    assert "process" in effective.error and str(proc.pid) in effective.error

    listed = run_cli("runs", "--json", env=cli_env(home), timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["run"] for row in rows] == ["killed-run"]
    assert rows[0]["status"] == "failed" and "process" in rows[0]["error"]
    # the listing persisted it: nothing is left claiming to be running
    persisted = record.raw_summary()
    on_disk, _ = read_json(out / RunRecord.SUMMARY)
    assert persisted.status == "failed" and "pid" not in on_disk and "process" in persisted.error
