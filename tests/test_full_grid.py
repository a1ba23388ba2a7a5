"""benchmarks/full_grid.py (sweep -> learning-rate choice -> grid), the grid's parallel,
deadline-bounded execution on the engine's worker, and benchmarks/allocation_shares.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import allocation_shares as shares
from benchmarks.grid import report, rows as R, runner
from heterolora_core.records.record import RunRecord
from heterolora_core.records.worker import TRAIN_CMD_ENV

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "full_grid.py"


def _sweep(task, row, finals):
    return [{"task": task, "row": row, "lr": lr, "status": "done", "final_score": score}
            for lr, score in finals.items()]


def test_choice_takes_each_rows_best_final_score_and_the_smaller_rate_on_ties():
    runs = (_sweep("mrpc", "1", {2e-4: 0.77, 5e-4: 0.80, 1e-3: 0.79})
            + _sweep("mrpc", "6", {2e-4: 0.70, 5e-4: 0.72, 1e-3: 0.72})  # tie: 5e-4
            + _sweep("rte", "1", {5e-4: 0.55})
            + [{"task": "rte", "row": "6", "lr": 1e-3, "status": "failed", "final_score": None},
               {"task": "rte", "row": "4", "lr": 1e-3, "status": "done", "final_score": 0.99}])  # not a sweep row
    assert report.choose_lrs(runs) == {"mrpc": {"uniform": 5e-4, "hetero": 5e-4}, "rte": {"uniform": 5e-4}}


def test_groups_add_the_hetero_rate_only_where_it_differs_and_diagnostics_only_on_mrpc():
    rows = R.parse_rows("all")
    groups = R.grid_groups({"mrpc": {"uniform": 5e-4, "hetero": 1e-3}, "rte": {"uniform": 5e-4, "hetero": 5e-4}}, rows)
    summary = [(task, lr, tier) for task, lr, _, tier in groups]
    assert summary == [("mrpc", 5e-4, 0), ("rte", 5e-4, 0), ("mrpc", 1e-3, 1), ("mrpc", 1e-3, 2)]
    assert groups[3][2] == ["6.raw", "6.epoch", "6.static", "6.authors"]
    assert len(R.grid_groups({"rte": {"uniform": 5e-4}}, rows, diagnostics=False)) == 1


def test_plan_runs_the_chosen_rate_in_run_order_first(tmp_path):
    groups = R.grid_groups({"mrpc": {"uniform": 5e-4, "hetero": 1e-3}, "rte": {"uniform": 2e-4}}, R.parse_rows("all"))
    jobs = R.plan_grid(groups, [0, 1, 2], R.Settings(), tmp_path)
    # tier 0: 13 MRPC rows + 9 RTE rows, 3 seeds; tier 1: 13 MRPC rows; tier 2: 4 diagnostics
    assert len(jobs) == (13 + 9) * 3 + 13 * 3 + 4 * 3
    head = [(j.row.id, j.task, j.seed, j.config.lr) for j in jobs[:8]]
    assert head[:4] == [(r, "mrpc", 0, 5e-4) for r in ("4", "6", "8", "9")]
    assert head[4:8] == [(r, "mrpc", 1, 5e-4) for r in ("4", "6", "8", "9")]
    tiers = [j.config.lr for j in jobs]
    first_hetero = tiers.index(1e-3)
    assert set(tiers[:first_hetero]) == {5e-4, 2e-4} and 5e-4 not in tiers[first_hetero:]
    assert jobs[0].path == tmp_path / "lr0.0005" / "mrpc" / "lora-qv-r24" / "seed0"
    assert {j.row.id for j in jobs[-12:]} == {"6.raw", "6.epoch", "6.static", "6.authors"}


def test_parallel_execution_overlaps_runs_and_a_passed_deadline_starts_none(tmp_path, monkeypatch):
    # the worker runs the stand-in trainer: 15 steps of 0.1 s, a finished record at the end
    monkeypatch.setenv(TRAIN_CMD_ENV, f"{sys.executable} -m heterolora_testing.synthetic train")
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.1")
    jobs = R.plan(["4", "6"], ["mrpc"], [0], R.Settings(max_steps=15), tmp_path)
    counts = runner.execute(jobs, log=lambda _: None, parallel=1, deadline=time.monotonic() - 1, results=tmp_path)
    assert counts["ran"] == 0 and counts["paused"] == 2 and not any(j.path.exists() for j in jobs)

    counts = runner.execute(jobs, log=lambda _: None, parallel=2, results=tmp_path)
    assert counts == {"ran": 2, "skipped": 0, "failed": 0, "busy": 0}
    a, b = (RunRecord(j.path).summary() for j in jobs)
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # the two runs overlapped
    assert a.parallel_runs == 2

    again = runner.execute(jobs, log=lambda _: None, parallel=2, results=tmp_path)
    assert again["skipped"] == 2 and again["ran"] == 0


def _glue_dir() -> Path | None:
    for candidate in (os.environ.get("GLUE_DIR"), ROOT.parent / "shared" / "glue"):
        if candidate and (Path(candidate) / "MRPC").is_dir():
            return Path(candidate)
    return None


@pytest.mark.skipif(_glue_dir() is None, reason="no GLUE_DIR and no ../shared/glue")
def test_full_grid_smoke_sweeps_chooses_and_runs_the_grid(tmp_path):
    env = {**os.environ, "GLUE_DIR": str(_glue_dir()), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--parallel", "2", "--results", str(results)],
                          capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((results / "full_grid.json").read_text())
    sweep = {(r["row"], r["lr"]): r["final_score"] for r in data["lr_sweep"] if r["status"] == "done"}
    assert len(sweep) == 4
    choice = data["choice"]["mrpc"]
    for key, row in (("uniform", "1"), ("hetero", "6")):  # the choice is the sweep's best (smaller on ties)
        best = max(sweep[(row, lr)] for lr in (5e-4, 1e-3))
        assert choice[key] == min(lr for lr in (5e-4, 1e-3) if sweep[(row, lr)] == best)
    rates = sorted({choice["uniform"], choice["hetero"]})
    assert [t["lr"] for t in data["tables"]] == sorted(rates, key=lambda lr: lr != choice["uniform"])
    for table in data["tables"]:
        assert {(e["row"], e["done"]) for e in table["table"]} == {("1", 1), ("6", 1)}
        assert (results / f"lr{table['lr']:g}" / "mrpc" / "lora-qv-r8" / "seed0" / "summary.json").is_file()
    assert "### MRPC at lr" in (results / "full_grid.md").read_text()
    assert data["counts"]["grid"]["ran"] == 2 * len(rates)


def test_allocation_shares_average_each_seeds_shares(tmp_path, capsys):
    row = R.ROW_BY_ID["6"]
    sets = {0: [["layer.0.lora.q", "layer.1.shortcut.res_ffn"]],                    # layer 0: 1/2, lora 1/2
            1: [["layer.1.lora.v"], ["layer.1.lora.v", "layer.0.shortcut.res_attn"]]}  # freq 1, 1/2: layer 1 2/3
    for seed, realloc_sets in sets.items():
        record = RunRecord.create(tmp_path / "mrpc" / row.slug / f"seed{seed}", {"task": "mrpc"}, status="done",
                                  final_score=0.70 + seed / 10)
        for step, enabled in enumerate(realloc_sets):
            record.append_reallocation(step, {n: 1.0 for n in enabled}, enabled)
    entry = report.row_shares(tmp_path, "mrpc", "6", [0, 1, 2])  # seed 2 has no record
    assert entry["seeds"] == 2 and entry["final"] == pytest.approx(0.75)
    assert entry["layer"] == pytest.approx({0: (1 / 2 + 1 / 3) / 2, 1: (1 / 2 + 2 / 3) / 2})
    assert entry["lora"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert shares.main(["--results", str(tmp_path), "--rows", "6"]) == 0
    assert "| 6 dynamic combined grad_norm r32, 9/35 | 42% / 58% | 58% | 2 | 75.00 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no finished records"):
        shares.main(["--results", str(tmp_path), "--rows", "8"])


def test_benchmark_list_flags_refuse_bad_values_in_one_line():
    import argparse

    from benchmarks import common

    assert common.int_list("0, 1,2") == [0, 1, 2]
    assert common.positive_float_list("2e-4,5e-4") == [2e-4, 5e-4]
    for parse, text in [(common.int_list, "0,x"), (common.int_list, ""), (common.positive_int_list, "1024,0"),
                        (common.positive_float_list, "nan"), (common.positive_float_list, "1e-3,-1")]:
        with pytest.raises(argparse.ArgumentTypeError) as error:
            parse(text)
        assert "\n" not in str(error.value) and repr(text) in str(error.value)
