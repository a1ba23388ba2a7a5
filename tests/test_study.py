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


def run(arm: str, seed: int, final: float, rank=4, budget=165_888, metric="accuracy", seconds=None):
    modes = {"U": ("lora", rank, None), "UH": ("lora", rank // 2, None), "A": ("rank_static", 32, budget),
             "R": ("rank_random", 32, budget), "T": ("rank_layers", 32, budget), "I": ("rank_inverted", 32, budget),
             "H": ("rank_static", 32, budget // 2)}
    mode, r, params = modes[arm]
    config = RunConfig(mode=mode, rank=r, budget_params=params, seed=seed, lora_targets=ALL6, shortcuts=False)
    spent = budget if arm not in ("H", "UH") else budget // 2
    return StoredRun(run_id=f"{arm}-{seed}", path=Path("/x"), created_at=0.0, sweep_id="study-x", queue_seq=None,
                     config=config, summary=RunSummary.from_dict({"status": "done", "final_score": final,
                                                                  "best_score": final, "trainable_params": spent,
                                                                  "metric": metric, **(seconds or {})}))


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
    assert {a.lrs for a in better.arms.values()} == {(RunConfig().lr,)}  # one rate: the study chose none
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


def test_the_search_cost_is_the_median_share_of_wall_time_over_the_allocating_arms():
    """A 4 s of 200 s (2%) and 6 s of 200 s (3%), R 1 s of 100 s (1%); the uniform arms' seconds
    (50% here) are no search and stay out: median 2.0% over 3 runs, range 1.0-3.0%."""
    runs = [run("U", 0, 0.8, seconds={"search_seconds": 50, "wall_seconds": 100}),
            run("A", 0, 0.8, seconds={"search_seconds": 4, "wall_seconds": 200}),
            run("A", 1, 0.8, seconds={"search_seconds": 6, "wall_seconds": 200}),
            run("R", 0, 0.8, seconds={"search_seconds": 1, "wall_seconds": 100}),
            run("T", 0, 0.8, seconds={"search_seconds": 1})]  # no wall time: left out, not divided by zero
    verdict = study_verdict(runs, "study-x")
    assert sorted(verdict.search_shares) == [1.0, 2.0, 3.0]
    assert verdict.search_cost_text() == "Search cost: median 2.0% of wall time (1.0–3.0%, 3 runs of the allocating arms)"
    assert study_verdict([run("U", 0, 0.8), run("A", 0, 0.8)], "study-x").search_cost_text() is None


def test_where_the_ranks_went_is_the_mean_over_seeds_with_shares_of_the_total():
    """Two seeds over 2 layers x (q, v), hand-computed: seed 0 ranks q0=4, v0=0 (off), q1=2, v1=2;
    seed 1 q0=2, v0=2, q1=2, v1=2 (v0 enabled at rank 2). Mean grid q=(3, 2), v=(1, 2); total 8, so
    q holds 5/8 = 62.5% and v 37.5%; layer 0 4/8 = 50%, layer 1 50%."""
    from heterolora_core.analysis import allocation as alloc
    from heterolora_core.analysis.study import rank_placement
    from heterolora_core.records.record import ReallocationLine

    def frame(ranks):
        names = ["layer.0.lora.q", "layer.0.lora.v", "layer.1.lora.q", "layer.1.lora.v"]
        enabled = [n for n in names if ranks.get(n, 0) > 0]
        return alloc.rank_frame([ReallocationLine(0, {n: 1.0 for n in names}, enabled, ranks)])

    seed0 = frame({"layer.0.lora.q": 4, "layer.1.lora.q": 2, "layer.1.lora.v": 2})
    seed1 = frame({"layer.0.lora.q": 2, "layer.0.lora.v": 2, "layer.1.lora.q": 2, "layer.1.lora.v": 2})
    placement = rank_placement([seed0, seed1], n_layers=2)
    assert placement.seeds == 2
    assert placement.grid.to_dict() == {"q": {0: 3.0, 1: 2.0}, "v": {0: 1.0, 1: 2.0}}
    assert placement.by_kind.to_dict() == {"q": 62.5, "v": 37.5} and placement.by_layer.to_dict() == {0: 50.0, 1: 50.0}
    assert placement.shares_text("kind") == "q 62%, v 38%"  # rounded half to even, as Python formats
    assert placement.shares_text("layer") == "layer 0 50%, layer 1 50%"
    assert rank_placement([frame({})]) is None  # nothing enabled: no placement to show


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
    # where A's ranks went: its mean ranks over the 6 layers x (q, v), which must spend the budget
    # exactly (each rank of a 384 x 384 projection costs 384 + 384 parameters)
    lines = report.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Where A's ranks went (final allocation, mean over 1 seed"))
    assert lines[head + 3].split() == ["layer", "q", "v"]
    grid = [[float(x) for x in line.split()[1:]] for line in lines[head + 4:head + 10]]
    assert sum(map(sum, grid)) * (384 + 384) == plan.budget


# ----------------------------------------------------------------------------------------------
# Choosing each arm's learning rate on held-out training rows (study --choose-lr)
# ----------------------------------------------------------------------------------------------

def test_hold_out_trains_on_all_but_the_last_rows_and_scores_on_them():
    from heterolora_core.tasks.base import hold_out

    train, dev = list(range(10)), {"dev": ["d0", "d1"]}
    assert hold_out(train, dev, None) == (train, dev)
    assert hold_out(train, dev, 3) == ([0, 1, 2, 3, 4, 5, 6], {"heldout": [7, 8, 9]})  # dev never read
    with pytest.raises(ValueError, match=r"^heldout-rows 10 leaves no training rows \(the training split has 10\)$"):
        hold_out(train, dev, 10)


def test_a_classification_run_with_heldout_rows_scores_on_the_training_splits_tail():
    from heterolora_core.tasks.registry import task_for
    from heterolora_core.training.data import load_task, tokenize_examples
    from heterolora_core.training.models import load_tokenizer

    config = RunConfig(task="mrpc", heldout_rows=40, max_length=64)
    prepared = task_for(config).prepare(config)
    train = load_task("mrpc").train  # 3,667 rows
    tokenizer = load_tokenizer(config.model)
    assert len(train) == 3_667 and len(prepared.train_rows) == 3_627 and len(prepared.eval_dataset) == 40
    assert prepared.metric_key == "eval_accuracy"
    assert prepared.eval_dataset == tokenize_examples(train[-40:], tokenizer, 64, None)
    assert prepared.train_rows[-1] == tokenize_examples(train[3_626:3_627], tokenizer, 64, None)[0]
    with pytest.raises(ValueError, match=r"heldout-rows 3,667 leaves no training rows \(the training split has 3,667\)"):
        check_run(RunConfig(task="mrpc", heldout_rows=3_667))


def test_the_tuning_sweep_runs_every_arm_at_every_rate_on_the_first_seed_held_out():
    from heterolora_core.study import tuning_spec

    plan = study_spec({"task": "mrpc", "lora_targets": ["q", "v"]}, rank=4, seeds=[3, 4], study_id="study-t",
                      folder="results/{sweep}/{row}/seed{seed}", budget_of=lambda c: 36_864 // (2 if c.rank == 2 or
                                                                                             c.budget_params == 18_432 else 1))
    tune = tuning_spec(plan, [1e-3, 2e-4, 1e-3], heldout_rows=50)
    runs = expand(tune)
    assert tune.sweep == "tune-study-t" and len(runs) == 2 * len(ARMS)
    assert {(r.row.row, r.config.lr) for r in runs} == {(a, lr) for a in ARMS for lr in (2e-4, 1e-3)}
    assert {r.config.seed for r in runs} == {3} and {r.config.heldout_rows for r in runs} == {50}
    assert runs[0].folder == "results/tune-study-t/U/seed3-lr0.0002"
    with pytest.raises(ValueError, match="at least two distinct rates"):
        tuning_spec(plan, [5e-4, 5e-4])
    per_arm = study_spec({"task": "mrpc", "lora_targets": ["q", "v"], "lr": 5e-4}, rank=4, seeds=1, study_id="study-t",
                         budget_of=lambda c: 36_864 // (2 if c.rank == 2 or c.budget_params == 18_432 else 1),
                         arm_lrs={"A": 1e-3, "U": 2e-4})
    assert {r.row.row: r.config.lr for r in expand(per_arm.spec)} == {"U": 2e-4, "A": 1e-3, "R": 5e-4, "T": 5e-4,
                                                                      "I": 5e-4, "H": 5e-4, "UH": 5e-4}


def test_each_arm_gets_the_rate_with_the_best_held_out_score():
    from dataclasses import replace

    from heterolora_core.analysis.study import choose_learning_rates

    def at(lr, arm, score, metric="accuracy"):
        r = run(arm, 0, score, metric=metric)
        return replace(r, sweep_id="tune-x", config=replace(r.config, lr=lr, heldout_rows=40))

    held_out = {2e-4: {a: 0.80 for a in ARMS}, 1e-3: {a: 0.80 for a in ARMS}}
    held_out[1e-3].update(A=0.83, R=0.79)  # A better at 1e-3, R worse; the rest tie (the smaller rate)
    rows = [at(lr, arm, s) for lr, scores in held_out.items() for arm, s in scores.items()]
    choices = choose_learning_rates(rows, "tune-x", [2e-4, 1e-3], 4, 165_888)
    assert {c.arm: c.chosen for c in choices} == {"U": 2e-4, "A": 1e-3, "R": 2e-4, "T": 2e-4, "I": 2e-4, "H": 2e-4,
                                                  "UH": 2e-4}
    assert choices[1].scores == {2e-4: 0.80, 1e-3: 0.83}
    assert choose_learning_rates(rows[:-1], "tune-x", [2e-4, 1e-3], 4, 165_888) is None  # UH at 1e-3 missing
    assert choose_learning_rates(rows, "tune-other", [2e-4, 1e-3], 4, 165_888) is None
    perplexity = [at(lr, arm, 5.0 if lr == 2e-4 else 4.0, "perplexity") for lr in (2e-4, 1e-3) for arm in ARMS]
    assert {c.chosen for c in choose_learning_rates(perplexity, "tune-x", [2e-4, 1e-3], 4, 165_888)} == {1e-3}


@pytest.mark.slow
def test_study_choose_lr_tunes_on_held_out_rows_then_runs_the_arms_at_their_rates(tmp_path):
    """The CLI end to end with the stand-in trainer, whose accuracy peaks at lr 1e-3: 14 tuning runs
    (7 arms x 2 rates, seed 0, 40 held-out rows), then the 7 arms at 1e-3, then the verdict."""
    from conftest import FAKE_TRAIN_CMD
    from heterolora_core.records import worker as worker_mod

    home = tmp_path / "home"
    env = cli_env(home, **{worker_mod.TRAIN_CMD_ENV: FAKE_TRAIN_CMD, "HETEROLORA_FAKE_STEP_SECONDS": "0.01",
                           "HETEROLORA_FAKE_BEST_LR": "1e-3"})
    args = ("study", "--task", "mrpc", "--lora-targets", "q,v", "--rank", "4", "--seeds", "1", "--max-steps", "3",
            "--id", "study-lr", "--choose-lr", "1e-4,1e-3", "--heldout-rows", "40", "--home", str(home))
    queued = run_cli(*args, env=env, timeout=300)  # no --wait: the tuning runs are queued, nothing else
    assert queued.returncode == 0, queued.stderr[-2000:]
    assert "run this command again with --id study-lr" in queued.stdout
    runs = RunStore(home).list_runs()
    assert len(runs) == 14 and {r.sweep_id for r in runs} == {"tune-study-lr"}
    assert {r.config.heldout_rows for r in runs} == {40} and {r.config.lr for r in runs} == {1e-4, 1e-3}
    done = run_cli(*args, "--wait", env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("-> lr 1e-3") == 7, done.stdout  # every arm: its held-out accuracy peaks there
    arms = [r for r in RunStore(home).list_runs() if r.sweep_id == "study-lr"]
    assert len(arms) == 7 and all(r.status == "done" for r in arms)
    assert {r.config.lr for r in arms} == {1e-3} and {r.config.heldout_rows for r in arms} == {None}
    assert "A - U" in done.stdout and done.stdout.count("(1 seed, lr 1e-3)") == 7  # the report names each arm's rate
    refused = run_cli("study", "--task", "mrpc", "--heldout-rows", "40", "--home", str(home), env=env)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: --heldout-rows in a study goes with --choose-lr (the arms themselves are scored on dev)"]


def test_an_sft_run_with_heldout_rows_scores_on_its_training_files_tail(tmp_path):
    """Instruction data holds out the same way: the last rows of the training file, the dev file unread."""
    from heterolora_core.tasks.registry import task_for
    from tiny_decoders import save_tiny_decoder

    model = save_tiny_decoder(tmp_path / "tiny-llama", "llama")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"say {w}", "completion": f" {w}"}) + "\n"
                             for w in ("one", "two", "three", "four", "five")))
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"prompt": "say six", "completion": " six"}) + "\n")
    config = RunConfig(model=str(model), task="sft", objective="lm", train_file=str(train), dev_file=str(dev),
                       max_length=32)
    whole = task_for(config).prepare(config)
    held = task_for(config).prepare(RunConfig.from_dict({**config.to_dict(), "heldout_rows": 2}))
    assert (len(whole.train_rows), whole.dev_rows) == (5, 1)
    assert (len(held.train_rows), held.dev_rows) == (3, 2)
    assert held.train_rows == whole.train_rows[:3] and held.eval_dataset == whole.train_rows[3:]
