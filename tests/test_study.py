"""The allocation study (heterolora_core.study, analysis.study, the CLI's study): arms at exact
budgets, the verdict sentence following the intervals of hand-made records, and a smoke study of
two short arms trained end to end."""
import json
from pathlib import Path

import pytest

from heterolora_core.analysis.study import study_verdict, verdict_sentence
from heterolora_core.planning import check_run
from heterolora_core.records.home import PROJECT_ROOT
from heterolora_core.records.record import RunSummary
from heterolora_core.records.store import RunStore, StoredRun
from heterolora_core.study import ARMS, arm_of, study_spec
from heterolora_core.sweeps import expand
from heterolora_core.training.run_config import RunConfig
from cli_helpers import cli_env, run_cli

GLUE = PROJECT_ROOT.parent / "shared" / "glue"
ALL6 = ["q", "k", "v", "o", "ffn_in", "ffn_out"]


@pytest.fixture(autouse=True)
def glue_dir(monkeypatch):
    import os

    if not os.environ.get("GLUE_DIR"):
        if not GLUE.is_dir():
            pytest.skip("no GLUE_DIR and no ../shared/glue")
        monkeypatch.setenv("GLUE_DIR", str(GLUE))


def test_every_arm_plans_its_budget_exactly():
    plan = study_spec({"task": "mrpc", "lora_targets": ALL6}, rank=4, seeds=5, study_id="study-test")
    # rank 4 x 6 layers x (q, k, v, o: 384 + 384; ffn_in, ffn_out: 384 + 1536) = 4 x 6 x (4 x 768 + 2 x 1920)
    assert (plan.budget, plan.half_budget, plan.max_rank) == (4 * 6 * (4 * 768 + 2 * 1920), 82_944, 32)
    runs = expand(plan.spec)
    assert len(runs) == 35 and [r.row.row for r in runs[:7]] == list(ARMS)
    for run in runs:
        spent = check_run(run.config).trainable_params
        assert spent == (plan.half_budget if run.row.row in ("H", "UH") else plan.budget), run.row.row
        assert run.config.shortcuts is False and run.config.lora_targets == ALL6
    assert {r.config.seed for r in runs} == set(range(5))
    assert {r.config.lr for r in runs} == {RunConfig().lr}  # one learning rate for every arm
    with pytest.raises(ValueError, match="even uniform rank"):
        study_spec({"task": "mrpc"}, rank=3)
    for seeds in (0, 10**12):  # refused before any list of seeds is built
        with pytest.raises(ValueError, match="1 to 100 seeds"):
            study_spec({"task": "mrpc"}, rank=4, seeds=seeds)


def run(arm: str, seed: int, final: float, rank=4, budget=165_888, metric="accuracy"):
    modes = {"U": ("lora", rank, None), "UH": ("lora", rank // 2, None), "A": ("rank_static", 32, budget),
             "R": ("rank_random", 32, budget), "T": ("rank_layers", 32, budget), "I": ("rank_inverted", 32, budget),
             "H": ("rank_static", 32, budget // 2)}
    mode, r, params = modes[arm]
    config = RunConfig(mode=mode, rank=r, budget_params=params, seed=seed, lora_targets=ALL6, shortcuts=False)
    spent = budget if arm not in ("H", "UH") else budget // 2
    return StoredRun(run_id=f"{arm}-{seed}", path=Path("/x"), created_at=0.0, sweep_id="study-x", queue_seq=None,
                     config=config, summary=RunSummary.from_dict({"status": "done", "final_score": final,
                                                                  "best_score": final, "trainable_params": spent,
                                                                  "metric": metric}))


def study(scores: dict[str, list[float]], metric="accuracy"):
    return [run(arm, seed, f, metric=metric) for arm, finals in scores.items() for seed, f in enumerate(finals)]


def test_arms_are_recognised_from_their_configs():
    assert [arm_of(r.config, 4, 165_888) for r in study({a: [0.8] for a in ARMS})] == list(ARMS)
    assert arm_of(RunConfig(mode="rank_static", budget_params=1000, rank=32), 4, 165_888) is None
    assert arm_of(RunConfig(mode="dynamic"), 4, 165_888) is None


def test_the_verdict_follows_the_intervals():
    base = {"U": [0.80, 0.82, 0.84], "R": [0.79, 0.81, 0.83], "T": [0.80, 0.82, 0.84], "I": [0.70, 0.72, 0.74],
            "H": [0.78, 0.80, 0.82], "UH": [0.77, 0.79, 0.81]}
    # A = U + 2, +2.5, +1.5 points: mean +2.00, sd 0.5, interval 2 ± 4.303 * 0.5 / sqrt(3) = [0.76, 3.24]
    better = study_verdict(study({**base, "A": [0.82, 0.845, 0.855]}), "study-x")
    d = better.comparison("A", "U").difference
    assert d.verdict == "better" and d.mean == pytest.approx(0.02) and d.ci95 == pytest.approx((0.00758, 0.03242), abs=1e-5)
    assert better.sentence.startswith("On this model and task, the allocation beat uniform LoRA by +2.00 points [0.8, 3.2]"
                                      " over 3 seeds")
    assert "beat inverted ranks (+12.00)" in better.sentence
    assert better.comparison("H", "U").verdict == "worse" and better.comparison("H", "UH").verdict == "better"
    noise = study_verdict(study({**base, "A": [0.81, 0.81, 0.85]}), "study-x")  # +1, -1, +1
    assert noise.comparison("A", "U").verdict == "noise"
    assert noise.sentence.startswith("On this model and task, the allocation was indistinguishable from uniform LoRA "
                                     "(+0.33 points [-2.5, 3.2], noise, 3 seeds)")
    worse = study_verdict(study({**base, "A": [0.75, 0.78, 0.78]}), "study-x")  # -5, -4, -6
    assert worse.sentence.startswith("On this model and task, the allocation lost to uniform LoRA by -5.00 points")
    single = study_verdict(study({"U": [0.80], "A": [0.83]}), "study-x")
    assert "on one seed: no verdict" in single.sentence and single.comparison("A", "R").difference is None
    assert verdict_sentence([]) .startswith("Not decided yet")
    assert study_verdict(study({"A": [0.8]}), "study-x") is None  # no uniform run: no budget, no verdict


def test_a_study_of_perplexities_reads_lower_as_better_and_keeps_their_unit():
    # A's perplexity is 0.2, 0.25, 0.15 below U's: a lower perplexity beats; the amounts are not ×100
    scores = {"U": [5.0, 5.2, 5.4], "A": [4.8, 4.95, 5.25], "I": [5.5, 5.7, 5.9]}
    verdict = study_verdict(study(scores, metric="perplexity"), "study-x")
    assert verdict.metric == "perplexity" and verdict.comparison("A", "U").verdict == "better"
    assert verdict.comparison("A", "I").verdict == "better"
    assert verdict.sentence.startswith("On this model and task, the allocation beat uniform LoRA by -0.20 perplexity "
                                       "[-0.3, -0.1] over 3 seeds")
    assert "beat inverted ranks (-0.70)" in verdict.sentence  # -0.7, -0.75, -0.65


@pytest.mark.slow
def test_a_smoke_study_of_two_short_arms_trains_and_reports(tmp_path):
    """CI's smoke study: U and A only (rows filtered), one seed, a few steps of the embedded model."""
    home = tmp_path / "home"
    plan = study_spec({"task": "mrpc", "lora_targets": ["q", "v"], "max_steps": 3, "train_limit": 32, "dev_limit": 16,
                       "batch_size": 8, "max_length": 32}, rank=2, seeds=1, study_id="study-smoke")
    data = plan.spec.to_dict()
    data["rows"] = [r for r in data["rows"] if r["row"] in ("U", "A")]
    sweep_file = tmp_path / "study.json"
    sweep_file.write_text(json.dumps(data))
    queued = run_cli("sweep", str(sweep_file), "--home", str(home), "--wait", env=cli_env(home), timeout=600)
    assert queued.returncode == 0, queued.stderr[-2000:]
    rows = RunStore(home).list_runs()
    assert sorted(r.config.mode for r in rows) == ["lora", "rank_static"] and all(r.status == "done" for r in rows)
    assert {r.summary.trainable_params for r in rows} == {plan.budget}
    report = run_cli("study", "--report", "--id", "study-smoke", "--home", str(home), env=cli_env(home), timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "A - U" in report.stdout and "on one seed: no verdict" in report.stdout
