"""Loss and perplexity read as lower-is-better in the analysis layer: paired verdicts, the results
and compare tables' order, the default reference, and how scores are shown."""
from __future__ import annotations

from pathlib import Path

import pytest

from heterolora_core.analysis import compare as C
from heterolora_core.analysis import results as R
from heterolora_core.analysis.stats import BETTER, WORSE, paired_difference
from heterolora_core.analysis.units import format_score
from heterolora_core.records.record import RunSummary
from heterolora_core.records.store import StoredRun
from heterolora_core.training.run_config import RunConfig


def _run(score, seed, mode, metric="perplexity", task="sft"):
    fields = {"task": task, "objective": "lm", "mode": mode, "seed": seed, "train_file": "t.jsonl",
              "dev_file": "d.jsonl"}
    return StoredRun(run_id=f"{mode}-{seed}-{metric}", path=Path("/x"), created_at=0.0, sweep_id=None, queue_seq=None,
                     config=RunConfig.from_dict(fields),
                     summary=RunSummary.from_dict({"status": "done", "final_score": score, "best_score": score,
                                                   "metric": metric}))


# perplexity per seed: dynamic is lower (better) than lora on every seed, by 1.0 +- 0.1
LORA = {0: 10.0, 1: 11.0, 2: 12.0}
DYNAMIC = {0: 9.0, 1: 9.9, 2: 11.1}


def _groups(metric="perplexity"):
    rows = [_run(v, s, "lora", metric) for s, v in LORA.items()] + [_run(v, s, "dynamic", metric) for s, v in DYNAMIC.items()]
    return rows, R.group_by_config(rows)


def test_a_lower_perplexity_is_a_better_verdict():
    assert paired_difference(DYNAMIC, LORA, higher_is_better=False).verdict == BETTER
    assert paired_difference(DYNAMIC, LORA).verdict == WORSE  # the same numbers read as accuracy
    _, groups = _groups()
    lora_key = next(g.key for g in groups if g.config.mode == "lora")
    table = R.results_table(groups, reference=lora_key)
    row = table[table["key"] != lora_key].iloc[0]
    assert row["delta_mean"] == pytest.approx(-1.0) and row["verdict"] == BETTER


@pytest.mark.parametrize("metric, first", [("perplexity", "dynamic"), ("completion_loss", "dynamic"),
                                           ("accuracy", "lora")])
def test_tables_and_the_default_reference_put_the_best_first_in_the_metrics_direction(metric, first):
    rows, groups = _groups(metric)
    assert R.results_table(groups).iloc[0]["key"] == next(g.key for g in groups if g.config.mode == first)
    compared, configs = C.compare_table(rows)
    assert configs[compared.iloc[0]["key"]].mode == first
    # the default reference is plain LoRA whatever the metric; without it, the best in the metric's direction
    assert next(g for g in groups if g.key == R.default_reference(groups)).config.mode == "lora"
    no_baseline = R.group_by_config([r for r in rows if r.config.mode == "dynamic"]
                                    + [_run(v + (0.5 if first == "dynamic" else -0.5), s, "static", metric)
                                       for s, v in DYNAMIC.items()])
    # static is half a unit worse than dynamic on every seed, in the metric's direction
    assert next(g for g in no_baseline if g.key == R.default_reference(no_baseline)).config.mode == "dynamic"


def test_a_perplexity_is_shown_as_it_is_and_accuracy_in_points():
    assert format_score(5.1234, "perplexity") == "5.12"
    assert format_score(0.79902, "accuracy") == "79.90"
    assert format_score(None, "eval_completion_loss") == "–"


def test_the_dashboard_shows_a_perplexity_as_it_is_beside_accuracy_in_points():
    import pandas as pd

    from dashboard.components import formatting as F

    shown = F.score_points(pd.Series([0.8125, 5.5, None]), pd.Series(["accuracy", "eval_perplexity", "accuracy"]))
    assert shown.tolist()[:2] == [81.25, 5.5] and pd.isna(shown.iloc[2])
    assert F.score_points(pd.Series([2.25]), "completion_loss").tolist() == [2.25]
    assert F.format_score_stats(5.123, 0.25, 3, metric="perplexity") == "5.12 ± 0.25 (n=3)"
    assert F.format_score_stats(0.799, 0.0185, 3, metric="f1") == "79.90 ± 1.85 (n=3)"
    assert F.format_difference(-1.0, -1.25, -0.75, metric="perplexity") == "-1.00 [-1.2, -0.8]"
    assert F.format_score(0.5, metric="accuracy") == "50.00" and F.format_score(0.5, metric="loss") == "0.50"
    curves = F.score_curves(pd.DataFrame({"value": [6.0, 5.0]}), "perplexity")
    assert curves["value"].tolist() == [6.0, 5.0]


def test_runs_sort_and_experiments_pick_the_best_in_each_metrics_direction():
    rows = [_run(12.0, 0, "lora"), _run(9.0, 0, "dynamic"), _run(10.0, 0, "static")]
    frame = C.runs_table(rows)
    frame["experiment"] = ["e", "e", "e"]
    # descending = best first: the lowest perplexity on top
    assert C.sort_runs(frame, "final_score", descending=True)["mode"].tolist() == ["dynamic", "static", "lora"]
    assert C.sort_runs(frame, "best_score", descending=False)["mode"].tolist() == ["lora", "static", "dynamic"]
    overview = C.experiments_table(frame).set_index("experiment")
    assert overview.loc["e", "best_final"] == 9.0 and overview.loc["e", "metric"] == "perplexity"
    accuracy = C.runs_table([_run(0.7, 0, "lora", "accuracy"), _run(0.8, 0, "dynamic", "accuracy")])
    assert C.sort_runs(accuracy, "final_score")["mode"].tolist() == ["dynamic", "lora"]
