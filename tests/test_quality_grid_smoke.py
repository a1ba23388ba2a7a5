"""benchmarks/quality_grid.py and benchmarks/grid/: the grid as data (the sweep file), resumability,
statistics, peak-RSS measurement by the worker, and one smoke invocation end to end (tiny real run,
then a resume that skips it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.grid import report, rows as R, runner
from heterolora_core.records.record import RunRecord
from heterolora_core.records.store import RunStore
from heterolora_core.records.worker import TRAIN_CMD_ENV, Worker

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "quality_grid.py"


def _glue_dir() -> Path | None:
    for candidate in (os.environ.get("GLUE_DIR"), ROOT.parent / "shared" / "glue"):
        if candidate and (Path(candidate) / "MRPC").is_dir():
            return Path(candidate)
    return None


# ----------------------------------------------------------------------------------------------
# The grid as data
# ----------------------------------------------------------------------------------------------

def test_rows_have_the_budgets_the_issue_states():
    """Every row's config is valid and, on the embedded model, trains the stated parameters."""
    from heterolora_core.planning import plan_budget

    for row in R.ROWS:
        config = R.run_config(row, "mrpc", 0, R.Settings())
        config.validate()
        if config.mode == "adalora":
            assert row.expected_params == 24 * 12 * (384 + 384 + 1)
        plan = plan_budget(config)
        assert plan.trainable_params == row.expected_params, row.id
    assert {r.budget for r in R.ROWS if r.expected_params == 73_728} == {"A"}


def test_the_grid_is_a_sweep_file_the_engine_expands():
    """``python -m heterolora_core sweep benchmarks/grids/quality.yaml`` names the grid's runs: the
    same settings and folders as the grid's own plan, every row of the three seeds and both tasks."""
    from heterolora_core.sweeps import expand

    swept = {run.folder: run.config for run in expand(R.SPEC)}
    planned = R.plan([r.id for r in R.ROWS], ["mrpc", "rte"], [0, 1, 2], R.Settings(), Path("results"))
    assert len(swept) == len(planned) == 9 * 2 * 3 + 8 * 3  # 4 proxy rows and 4 diagnostics on MRPC only
    assert {str(j.path): j.config for j in planned} == swept


def test_plan_follows_the_run_order_without_duplicates(tmp_path):
    jobs = R.plan(R.parse_rows("all"), ["mrpc", "rte"], [0, 1, 2], R.Settings(), tmp_path)
    keys = [(j.row.id, j.task, j.seed) for j in jobs]
    assert len(keys) == len(set(keys)) == 9 * 2 * 3 + 4 * 3  # the proxy sweep is MRPC only
    assert keys[:4] == [("4", "mrpc", 0), ("6", "mrpc", 0), ("8", "mrpc", 0), ("9", "mrpc", 0)]
    first_rte = next(i for i, k in enumerate(keys) if k[1] == "rte")
    assert first_rte == 12 and {k[0] for k in keys[:24]} == {"4", "6", "8", "9"}
    assert {k[0] for k in keys[24:36]} == {"1", "3"}
    assert all(k[1] == "mrpc" for k in keys if k[0].startswith("6."))
    assert jobs[0].path == tmp_path / "mrpc" / "lora-qv-r24" / "seed0"
    # same steps for every row: only the row's own fields differ from the shared settings
    for job in jobs:
        assert (job.config.epochs, job.config.lr, job.config.batch_size, job.config.max_steps) == (3.0, 5e-4, 16, None)
    with pytest.raises(SystemExit, match="unknown row"):
        R.parse_rows("4,42")


# ----------------------------------------------------------------------------------------------
# Resuming
# ----------------------------------------------------------------------------------------------

def _fake_record(job, status: str, **summary) -> None:
    RunRecord.create(job.path, job.config.to_dict(), status=status, **summary)


def test_job_states_decide_skip_rerun_or_refuse(tmp_path):
    jobs = R.plan(["4", "6", "8", "9"], ["mrpc"], [0], R.Settings(), tmp_path)
    done, failed, live, dead = jobs
    _fake_record(done, "done", final_score=0.8)
    _fake_record(failed, "failed", error="boom")
    _fake_record(live, "running", pid=os.getpid(), started_at=time.time())
    _fake_record(dead, "running", pid=2 ** 22 + 12345, started_at=time.time())
    assert [runner.job_state(j) for j in jobs] == ["done", "rerun", "running", "rerun"]
    assert runner.job_state(R.plan(["1"], ["mrpc"], [0], R.Settings(), tmp_path)[0]) == "todo"
    # a finished record made with other settings is never silently reused
    other = R.plan(["4"], ["mrpc"], [0], R.Settings(lr=1e-3), tmp_path)[0]
    with pytest.raises(SystemExit, match="lr 0.0005 -> 0.001"):
        runner.job_state(other)


# ----------------------------------------------------------------------------------------------
# Statistics and the table
# ----------------------------------------------------------------------------------------------

def _runs(row: str, finals: list[float], task: str = "mrpc", **extra) -> list[dict]:
    return [{"row": row, "task": task, "seed": s, "status": "done", "metric": "accuracy", "final_score": f,
             "best_score": f + 0.01, "trainable_params": 221_184, "adalora_initial_params": None,
             "wall_seconds": 10.0, "search_seconds": 1.0, "peak_rss_mb": 800.0, **extra} for s, f in enumerate(finals)]


def test_aggregate_reports_intervals_and_noise():
    runs = _runs("4", [0.80, 0.82, 0.81]) + _runs("6", [0.81, 0.83, 0.82]) + _runs("8", [0.70, 0.90, 0.80])
    table = {e["row"]: e for e in report.aggregate(runs)}
    ref = table["4"]
    assert ref["final"]["mean"] == pytest.approx(0.81) and ref["final"]["std"] == pytest.approx(0.01)
    half = 4.302653 * 0.01 / 3 ** 0.5  # t(0.975, 2)
    assert ref["final"]["ci95"] == pytest.approx([0.81 - half, 0.81 + half], abs=1e-6)
    assert ref["best"]["mean"] == pytest.approx(0.82) and ref["vs_reference"] is None
    assert table["6"]["vs_reference"]["verdict"] == "better"  # +1 point on every seed
    assert table["8"]["vs_reference"]["verdict"] == "noise"
    text = report.format_table(report.aggregate(runs))
    assert "81.00 ± 1.00" in text and "4: +1.00" in text and "better" in text and "noise" in text
    markdown = report.format_markdown(report.aggregate(runs), runs)
    assert "| 6 | dynamic combined grad_norm r32, 9/35 | 221,184 | 0,1,2 | 82.00 ± 1.00 |" in markdown
    assert "vs 4: +1.00 [" in markdown and markdown.count("| mrpc | 8 |") == 3
    # a remedy for row 6 is compared with row 6 and with the budget's uniform row 4
    remedy = {e["row"]: e for e in report.aggregate(runs + _runs("6.epoch", [0.84, 0.80, 0.81]))}["6.epoch"]
    assert remedy["vs_reference"]["mean"] == pytest.approx(-0.01 / 3)  # vs 6: +0.03, -0.03, -0.01
    assert (remedy["uniform"], remedy["vs_uniform"]["mean"]) == ("4", pytest.approx(0.02 / 3))  # +0.04, -0.02, 0
    assert table["6"]["vs_uniform"] is None and table["4"]["vs_uniform"] is None
    assert "; vs 4: +0.67 [" in report.format_markdown(report.aggregate(runs + _runs("6.epoch", [0.84, 0.80, 0.81])), runs)
    # searched rows of budget B are also compared with the random control (row 8); row 8 and plain rows are not
    assert (table["6"]["control"], table["6"]["vs_control"]["mean"]) == ("8", pytest.approx(0.02))  # +.11, -.07, +.02
    assert remedy["vs_control"]["mean"] == pytest.approx(0.05 / 3)  # +.14, -.10, +.01
    assert table["8"]["vs_control"] is None and table["4"]["vs_control"] is None
    assert "; vs 8: +2.00 [" in markdown
    single = report.aggregate(_runs("4", [0.8]) + _runs("6", [0.9]))
    assert single[1]["vs_reference"]["verdict"] == "n/a (1 seed)" and single[1]["final"]["ci95"] is None


def test_pause_file_stops_before_the_next_run(tmp_path):
    jobs = R.plan(["4", "6"], ["mrpc"], [0], R.Settings(), tmp_path)
    (tmp_path / runner.PAUSE_FILE).touch()
    logged = []
    counts = runner.execute(jobs, log=logged.append, pause_file=tmp_path / runner.PAUSE_FILE, results=tmp_path)
    assert counts["ran"] == 0 and counts["paused"] == 2
    assert not any(job.path.exists() for job in jobs) and "pause" in logged[-1]


def test_peak_rss_is_measured_per_child(tmp_path, monkeypatch):
    """The worker records each training process's own peak resident memory in its summary."""
    big = f"{sys.executable} -c \"import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5)\""
    small = f"{sys.executable} -c \"import time; time.sleep(0.5)\""
    fail = f"{sys.executable} -c \"raise SystemExit(3)\""
    store = RunStore(tmp_path)
    peaks, codes = {}, {}
    for name, command in (("big", big), ("small", small), ("fail", fail)):
        monkeypatch.setenv(TRAIN_CMD_ENV, command)
        record = store.enqueue({"task": "mrpc"}, folder=name)
        Worker(tmp_path, poll=0.05).run_one(record)
        summary = record.summary()
        peaks[name], codes[name] = summary.peak_rss_mb, summary.error
    # MiB; neither child is charged with this (torch-loaded) test process's own memory
    assert 300 <= peaks["big"] < 500 and peaks["small"] < 100
    assert "exited with code 3" in codes["fail"]


def test_memory_summary_pairs_rounds():
    runs = [{"row": r, "round": k, "status": "done", "peak_rss_mb": mb}
            for k, (u, d) in enumerate([(800, 880), (820, 900), (810, 1100)]) for r, mb in (("4", u), ("6", d))]
    m = report.memory_summary(runs)
    assert m["median_uniform_mb"] == 810 and m["median_dynamic_mb"] == 900
    assert m["ratio_of_medians"] == pytest.approx(900 / 810) and m["within_target"]
    assert m["median_paired_ratio"] == pytest.approx(880 / 800)  # of 1.1, 1.098, 1.358


# ----------------------------------------------------------------------------------------------
# The smoke invocation (what CI runs): one tiny real run, then a resume that skips it
# ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(_glue_dir() is None, reason="no GLUE_DIR and no ../shared/glue")
def test_smoke_grid_writes_table_and_resumes(tmp_path):
    env = {**os.environ, "GLUE_DIR": str(_glue_dir()), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--rows", "6", "--results", str(tmp_path / "results")]
    first = subprocess.run(cmd + ["--markdown", str(tmp_path / "grid.md")], capture_output=True, text=True, env=env, timeout=240)
    assert first.returncode == 0, first.stdout + first.stderr
    # the dynamic run's set churn is read from its record: at least its step-0 selection of 9 modules was on
    lines = (tmp_path / "grid.md").read_text().splitlines()
    header = next(l for l in lines if l.startswith("| task | row | seed |"))
    (line,) = [l for l in lines if l.startswith("| mrpc | 6 | 0 |")]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in line.split("|")]))
    swapped, ever_on = cells["set swapped / ever on"].split("/")
    assert swapped.strip().endswith("%") and int(ever_on) >= 9
    drift = cells["drift on/off"]  # a 4-step run reallocates twice or more: a ratio, or "-" if no score moved
    assert drift == "-" or float(drift) > 0
    data = json.loads((tmp_path / "results" / "quality_grid.json").read_text())
    assert data["smoke"] and data["settings"]["max_steps"] == 4 and data["counts"]["ran"] == 1
    (entry,) = data["table"]
    assert (entry["row"], entry["task"], entry["done"], entry["trainable_params"]) == ("6", "mrpc", 1, 221_184)
    assert entry["params_ok"] and 0.0 <= entry["final"]["mean"] <= 1.0 and entry["peak_rss_mb"] > 100
    run = RunRecord(tmp_path / "results" / "mrpc" / "dynamic-combined-gradnorm-r32" / "seed0")
    assert run.summary().status == "done" and run.summary().step == 4
    assert "final mean ± std" in first.stdout and "221,184" in first.stdout

    started = time.perf_counter()
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "skip     1 finished run(s)" in second.stdout and "[1/" not in second.stdout
    assert json.loads((tmp_path / "results" / "quality_grid.json").read_text())["counts"] == \
        {"ran": 0, "skipped": 1, "failed": 0, "busy": 0}
    assert time.perf_counter() - started < 20  # no training, no torch import
    assert "torch" not in subprocess.run([sys.executable, "-c", "import sys, benchmarks.quality_grid; print(sorted(sys.modules))"],
                                         capture_output=True, text=True, env=env, timeout=60).stdout.split("'")
