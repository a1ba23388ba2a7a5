"""dashboard.components.formatting (labels, durations, mean ± std) and the numbers it formats
(heterolora_core.analysis.stats.describe)."""
import pandas as pd

from dashboard.components.formatting import (field_label, format_difference, format_duration, format_field, format_lr,
                                             format_mean_std, format_score, format_score_stats, plural,
                                             readable_fields, run_label, score_points)
from heterolora_core.analysis.stats import describe
from heterolora_core.training.run_config import RunConfig


def test_mean_std_and_format():
    stats = describe([0.8, 0.82, None, float("nan"), 0.84])
    assert (round(stats.mean, 4), round(stats.std, 4), stats.n) == (0.82, 0.02, 3)
    assert format_mean_std(stats.mean, stats.std, stats.n) == "0.8200 ± 0.0200 (n=3)"
    one = describe([0.8])
    assert format_mean_std(one.mean, one.std, one.n) == "0.8000"
    none = describe([])
    assert format_mean_std(none.mean, none.std, none.n) == "–"


def test_run_label_is_the_full_description_and_always_states_the_search_space():
    assert run_label(RunConfig(mode="dynamic", proxy="snip", rank=32, enable_ratio=0.25, seed=3)) == \
        "mrpc · dynamic · q,v + shortcuts · snip · r32 · 25% · lr 5e-4 · seed 3"
    assert run_label(RunConfig(mode="static", proxy="snip", rank=32, match_uniform_rank=8, ranking="separated"),
                     include_seed=False) == "mrpc · static · q,v + shortcuts · snip · separated · r32 · ≈r8 · lr 5e-4"
    # uniform LoRA over all 35 modules never reads like uniform LoRA over q and v alone
    assert run_label(RunConfig(mode="lora", rank=8, seed=0)) == "mrpc · lora · q,v + shortcuts · r8 · lr 5e-4 · seed 0"
    assert run_label(RunConfig(mode="lora", rank=8, shortcuts=False, seed=0)) == "mrpc · lora · q,v · r8 · lr 5e-4 · seed 0"


def test_run_label_tells_runs_apart_by_task_lr_space_method_options_and_run_length():
    base = dict(mode="dynamic", proxy="grad_norm", rank=32, seed=0)
    labels = {run_label(RunConfig(**base, lr=lr, task=task)) for lr in (2e-4, 5e-4, 1e-3) for task in ("mrpc", "rte")}
    assert len(labels) == 6 and "rte · dynamic · q,v + shortcuts · grad_norm · r32 · 25% · lr 1e-3 · seed 0" in labels
    assert run_label(RunConfig(mode="lora", rank=8, lora_targets=["q", "k", "v", "o"]), include_seed=False) == \
        "mrpc · lora · q,k,v,o + shortcuts · r8 · lr 5e-4"
    # AdaLoRA cannot use shortcuts: none is not news; its own ranks are
    assert run_label(RunConfig(mode="adalora", rank=8, shortcuts=False, adalora_init_r=32, adalora_target_r=24)) == \
        "mrpc · adalora · q,v · r8 · init_r 32 · target_r 24 · lr 5e-4 · seed 0"
    assert run_label(RunConfig(mode="lora", max_steps=32, train_limit=256, dev_limit=200), include_seed=False) == \
        "mrpc · lora · q,v + shortcuts · r8 · lr 5e-4 · 32 steps · 256 training rows · 200 dev rows"
    assert run_label(None) == "unreadable record"


def test_learning_rates_and_config_fields_read_as_people_write_them():
    assert [format_lr(x) for x in (5e-4, 1e-3, 2e-4, 1.25e-3, 0.01, 0.1, 0)] == ["5e-4", "1e-3", "2e-4", "1.25e-3", "0.01", "0.1", "0"]
    assert field_label("max_steps") == "max steps" and field_label("lr") == "learning rate"
    assert field_label("some_new_field") == "some new field"
    assert format_field("lora_targets", ["q", "v"]) == "q,v" and format_field("shortcuts", False) == "off"
    assert format_field("enable_ratio", 0.25) == "25%" and format_field("lr", 0.001) == "1e-3"
    assert format_field("max_steps", None) == "–" and format_field("realloc_every", 0.2) == "0.2"
    frame = pd.DataFrame({"max_steps": [2, None], "lr": [5e-4, 1e-3], "runs": [1, 2]})
    shown = readable_fields(frame, ["max_steps", "lr"])
    assert list(shown.columns) == ["max steps", "learning rate", "runs"]
    assert shown["learning rate"].tolist() == ["5e-4", "1e-3"] and shown["max steps"].tolist() == ["2", "–"]


def test_plural():
    assert (plural(1, "run"), plural(11, "run"), plural(0, "run")) == ("1 run", "11 runs", "0 runs")
    assert plural(2, "configuration") == "2 configurations" and plural(1200, "run") == "1,200 runs"


def test_scores_are_shown_in_glue_points():
    assert format_score(0.7990196) == "79.90" and format_score(None) == "–" and format_score(0.685, 1) == "68.5"
    assert format_score_stats(0.799, 0.0185, 3) == "79.90 ± 1.85 (n=3)"
    assert format_score_stats(0.799, 0.0185, 3, with_n=False) == "79.90 ± 1.85"
    assert format_score_stats(0.799, None, 1) == "79.90"
    assert format_difference(-0.0809, -0.178, 0.017) == "-8.09 [-17.8, 1.7]"
    assert format_difference(0.0025) == "+0.25" and format_difference(None) == "–"
    assert score_points(pd.Series([0.8125, None])).tolist()[0] == 81.25


def test_format_duration():
    assert format_duration(95) == "1m 35s"
    assert format_duration(3700) == "1h 01m"
    assert format_duration(None) == "" and format_duration(float("nan")) == ""


def test_search_fields_of_a_method_that_does_not_search_read_as_missing():
    frame = pd.DataFrame({"proxy": ["grad_norm", "snip"], "rank": [8, 32]})
    shown = readable_fields(frame, ["proxy", "rank"], modes=["lora", "dynamic"])
    assert shown["proxy"].tolist() == ["–", "snip"] and shown["rank"].tolist() == ["8", "32"]
    assert readable_fields(frame, ["proxy"], modes=["no-such-mode", "lora"])["proxy"].tolist() == ["grad_norm", "–"]
