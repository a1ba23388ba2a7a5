"""The heterogeneous-rank grid (issue 15): its sweep files plan the stated budgets, and
benchmarks/rank_grid.py reports hand-computed statistics and rank shares from records."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import rank_grid
from heterolora_core.planning import plan_budget
from heterolora_core.sweeps import expand, load_sweep
from heterolora_testing.synthetic import write_synthetic_run

B, A = 221_184, 73_728
EXPECTED = {  # row -> trainable adapter parameters on the embedded model (the labels' budgets)
    "uniform-qv-r24": B, "rank-static-qv": B, "rank-static-all": B, "rank-random-qv": B, "rank-random-all": B,
    "eva-qv-r24": B, "adalora-qv-r32to24": 24 * 12 * (384 + 384 + 1), "lora-all-r5": 5 * 6 * (4 * 768 + 2 * 1920),
    "uniform-qv-r8": A, "a-rank-static-qv": A, "a-rank-static-all": A, "a-rank-random-qv": A, "a-rank-random-all": A,
    "a-eva-qv-r8": A, "a-lora-all-r2": 2 * 6 * (4 * 768 + 2 * 1920),
    "rank-dynamic-all": B, "rank-dynamic-qv": B, "rank-static-all-ginit": B, "leave-out-static-r8": B,
    "same-set-r24": 9 * 24 * 768, "all35-r32": 35 * 32 * 768,
}


def test_every_row_of_the_rank_sweeps_plans_its_stated_budget():
    rows = {}
    for path in rank_grid.DEFAULT_SWEEPS:
        for run in expand(load_sweep(path)):
            rows.setdefault(run.row.row, run.config)
    assert set(rows) == set(EXPECTED)
    assert {row: plan_budget(config).trainable_params for row, config in rows.items()} == EXPECTED


SWEEP = """
sweep: tiny-ranks
folder: "r/{row}/seed{seed}"
base: {task: mrpc, max_steps: 2}
axes: {seed: [0, 1, 2]}
rows:
  - {row: uniform, mode: lora, rank: 8, shortcuts: false, report: {budget: A}}
  - {row: ranked, mode: rank_static, rank: 16, budget_params: 73728, shortcuts: false,
     report: {budget: A, reference: uniform, control: shuffled, versus: [missing-row]}}
  - {row: shuffled, mode: rank_random, rank: 16, budget_params: 73728, shortcuts: false, report: {budget: A}}
"""


def _write(home: Path, row: str, seed: int, final: float, **kw) -> Path:
    path = home / "r" / row / f"seed{seed}"
    write_synthetic_run(path, mode=kw.pop("mode", "lora"), seed=seed, final_score=final, best_score=final, **kw)
    return path


def test_the_report_pairs_by_seed_and_says_where_the_ranks_went(tmp_path):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(SWEEP)
    home = tmp_path / "home"
    for seed, (u, r) in enumerate([(0.78, 0.80), (0.80, 0.81), (0.79, 0.82)]):
        _write(home, "uniform", seed, u)
        path = _write(home, "ranked", seed, r, mode="static", n_layers=2)
        # one reallocation with known ranks: layer 0 q 4, v 12; layer 1 q off, v 8
        scores = {f"layer.{layer}.lora.{kind}": 1.0 for layer in (0, 1) for kind in ("q", "v")}  # every candidate
        line = {"step": 0, "scores": scores, "enabled": ["layer.0.lora.q", "layer.0.lora.v", "layer.1.lora.v"],
                "ranks": {"layer.0.lora.q": 4, "layer.0.lora.v": 12, "layer.1.lora.v": 8}}
        (path / "reallocations.jsonl").write_text(json.dumps(line) + "\n")
        curve = [{"step": 10, "epoch": 0.5, "loss": 0.9}, {"step": 20, "epoch": 1.0, "eval_accuracy": 0.70 + seed / 100},
                 {"step": 30, "epoch": 1.5, "loss": 0.5 + seed / 10}, {"step": 40, "epoch": 2.0, "eval_accuracy": r}]
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in curve))
    _write(home, "shuffled", 0, 0.79)  # the control has one seed only
    reports = rank_grid.read_sweep_rows(sweep, home)
    rank_grid.compare(reports)
    ranked = next(r for r in reports if r.row == "ranked")
    assert ranked.final == pytest.approx({0: 0.80, 1: 0.81, 2: 0.82})
    vs_uniform = ranked.versus["uniform"]
    # differences 0.02, 0.01, 0.03: mean 0.02, std 0.01, t(2) = 4.303 -> ± 0.0248
    assert vs_uniform.mean == pytest.approx(0.02)
    assert vs_uniform.ci95 == pytest.approx((0.02 - 0.024841, 0.02 + 0.024841), abs=1e-5)
    assert vs_uniform.verdict == "noise"
    assert ranked.versus["shuffled"].seeds == (0,) and "missing-row" not in ranked.versus
    assert ranked.rank_by_kind == pytest.approx({"q": 2.0, "v": 10.0})  # q: (4 + 0) / 2, v: (12 + 8) / 2
    assert ranked.layer_share == pytest.approx({0: 2 / 3, 1: 1 / 3})  # 16 of 24 rank units (q, v alike)
    assert ranked.curve == pytest.approx({1.0: 0.71, 2.0: 0.81})  # (0.70 + 0.71 + 0.72) / 3, (0.80 + 0.81 + 0.82) / 3
    assert ranked.last_train_loss == pytest.approx(0.6)  # (0.5 + 0.6 + 0.7) / 3
    text = rank_grid.format_markdown(reports)
    assert "| ranked | 71.00 (ep 1) → 81.00 (ep 2) | 0.600 |" in text
    assert "vs uniform: +2.00 [-0.5, 4.5] noise" in text
    assert "| shuffled |" in text and "0 (1 of 3)" in text
    assert "q 2.0, v 10.0; layers 0→1: 67 33%" in text


def test_a_missing_sweep_file_is_one_line(tmp_path, capsys):
    assert rank_grid.main([str(tmp_path / "none.yaml"), "--json", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
