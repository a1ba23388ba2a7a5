"""dashboard.components.formatting (labels, durations, mean ± std) and the numbers it formats
(heterolora_core.analysis.stats.describe)."""
from dashboard.components.formatting import format_duration, format_mean_std, run_label
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


def test_run_label():
    assert run_label(RunConfig(mode="dynamic", proxy="snip", rank=32, enable_ratio=0.25, seed=3)) == "dynamic · snip · r32 · 25% · seed 3"
    assert run_label(RunConfig(mode="static", proxy="snip", rank=32, match_uniform_rank=8, ranking="separated"),
                     include_seed=False) == "static · snip · separated · r32 · ≈r8"
    assert run_label(RunConfig(mode="lora", rank=8, seed=0)) == "lora · r8 · seed 0"


def test_format_duration():
    assert format_duration(95) == "1m 35s"
    assert format_duration(3700) == "1h 01m"
    assert format_duration(None) == "" and format_duration(float("nan")) == ""
