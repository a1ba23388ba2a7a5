"""heterolora_core.analysis: pure functions over run records (allocation, compare)."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboard.components.formatting import format_mean_std, run_label
from heterolora_core.analysis import allocation as A
from heterolora_core.analysis import compare as C
from heterolora_core.records.record import ReallocationLine, RunSummary
from heterolora_core.records.store import StoredRun
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import Group, ModuleName, module_sort_key


def lines(dicts):
    """The test's reallocation dicts as the records' :class:`ReallocationLine` list."""
    out = [ReallocationLine.from_dict(d) for d in dicts]
    assert all(line is not None for line in out)
    return out


REALLOC_DICTS = [
    {"step": 0, "scores": {"layer.0.lora.q": 1.0, "layer.0.lora.v": 3.0, "layer.1.lora.q": 2.0, "layer.1.lora.v": 4.0,
                           "layer.0.shortcut.res_attn": 0.1, "layer.1.shortcut.cross_ffn": 0.2},
     "enabled": ["layer.0.lora.v", "layer.1.lora.v"]},
    {"step": 5, "scores": {"layer.0.lora.q": 1.5, "layer.0.lora.v": 2.5, "layer.1.lora.q": 5.0, "layer.1.lora.v": 4.5,
                           "layer.0.shortcut.res_attn": 0.3, "layer.1.shortcut.cross_ffn": 0.1},
     "enabled": ["layer.1.lora.q", "layer.1.lora.v", "layer.0.shortcut.res_attn"]},
]
REALLOCS = lines(REALLOC_DICTS)


def test_parse_module_and_sort_order():
    assert ModuleName.parse("layer.12.lora.ffn_in") == ModuleName(12, Group.LORA, "ffn_in")
    parsed = ModuleName.parse("layer.3.shortcut.cross_attn")
    assert (parsed.layer, parsed.group, parsed.kind) == (3, "shortcut", "cross_attn")
    assert ModuleName.parse("classifier.dense") is None
    names = ["layer.1.lora.q", "layer.0.shortcut.res_ffn", "layer.0.lora.v", "layer.0.lora.q", "layer.10.lora.q"]
    assert sorted(names, key=module_sort_key) == [
        "layer.0.lora.q", "layer.0.lora.v", "layer.0.shortcut.res_ffn", "layer.1.lora.q", "layer.10.lora.q"]


def test_enable_frequency_counts_each_reallocation():
    freq = A.enable_frequency(REALLOCS).set_index("module")
    assert freq.loc["layer.1.lora.v", "frequency"] == 1.0
    assert freq.loc["layer.0.lora.v", "frequency"] == 0.5
    assert freq.loc["layer.0.lora.q", "frequency"] == 0.0
    assert freq.loc["layer.0.shortcut.res_attn", "n_enabled"] == 1
    assert set(freq["n_reallocations"]) == {2}
    assert list(freq.columns) == ["layer", "group", "kind", "n_enabled", "n_reallocations", "frequency"]


def test_slot_shares_weight_modules_by_their_enable_frequency():
    # on-frequencies: layer.0.lora.v 0.5, layer.1.lora.v 1.0, layer.1.lora.q 0.5, layer.0.shortcut.res_attn 0.5
    shares = A.slot_shares(REALLOCS)
    assert shares["layer"] == pytest.approx({0: 1.0 / 2.5, 1: 1.5 / 2.5})
    assert shares["group"] == pytest.approx({"lora": 2.0 / 2.5, "shortcut": 0.5 / 2.5})
    assert A.slot_shares([]) == {"layer": {}, "group": {}}


def test_enable_frequency_without_reallocations_is_empty():
    assert A.enable_frequency([]).empty


def test_frequency_grid_has_one_row_per_layer_and_nan_for_missing_candidates():
    freq = A.enable_frequency(REALLOCS)
    lora = A.frequency_grid(freq, "lora", n_layers=4)
    assert list(lora.index) == [0, 1, 2, 3]
    assert list(lora.columns) == ["q", "v"]
    assert lora.loc[1, "q"] == 0.5 and lora.loc[0, "v"] == 0.5
    assert lora.loc[3].isna().all()
    shortcut = A.frequency_grid(freq, "shortcut")
    assert list(shortcut.index) == [0, 1]
    assert list(shortcut.columns) == ["res_attn", "cross_ffn"]  # canonical kind order
    assert math.isnan(shortcut.loc[0, "cross_ffn"])  # no cross_ffn in layer 0
    values = lora.stack().dropna()
    assert ((values >= 0) & (values <= 1)).all()


def test_n_layers_from_names_or_config():
    assert A.n_layers_of(["layer.0.lora.q", "layer.23.shortcut.res_ffn"]) == 24
    assert A.n_layers_of([], 6) == 6  # the record's n_layers
    assert A.n_layers_of(["layer.2.lora.q"], 12) == 12


def test_timeline_matrices():
    tl = A.timeline(REALLOCS)
    assert tl.steps == [0, 5]
    assert tl.enabled.shape == (6, 2)
    assert tl.enabled.loc["layer.1.lora.q"].tolist() == [0, 1]
    assert tl.scores.loc["layer.1.lora.q"].tolist() == [2.0, 5.0]
    assert list(tl.enabled.index) == sorted(tl.enabled.index, key=module_sort_key)


def test_score_distribution_long_format():
    dist = A.score_distribution(REALLOCS)
    assert len(dist) == 12
    assert set(dist["group"]) == {"lora", "shortcut"}
    row = dist[(dist["module"] == "layer.1.lora.q") & (dist["reallocation"] == 1)].iloc[0]
    assert row["score"] == 5.0 and bool(row["enabled"]) and row["step"] == 5 and row["kind"] == "q"
    assert A.score_distribution([]).empty


def test_set_churn_by_hand():
    reallocs = lines([{"enabled": ["a", "b", "c", "d"]}, {"enabled": ["a", "b", "c", "d"]},
                      {"enabled": ["a", "b", "e", "f"]}, {"enabled": ["a", "g", "e", "f"]}])
    churn = A.set_churn(reallocs)
    # pairs: unchanged (0/4), c,d off (2/4), b off (1/4)
    assert churn == {"reallocations": 4, "changes": 2, "mean_swapped": pytest.approx(0.25),
                     "ever_enabled": 7, "set_size": 4}
    assert A.set_churn([]) == {"reallocations": 0, "changes": 0, "mean_swapped": 0.0, "ever_enabled": 0, "set_size": 0}


def test_score_drift_by_hand():
    reallocs = lines([
        {"enabled": ["a"], "scores": {"a": 2.0, "b": 1.0, "c": 0.0}},
        {"enabled": ["b"], "scores": {"a": 1.0, "b": 3.0, "c": 5.0}},  # a (on) 1/2; b (off) 3; c skipped (was 0)
        {"enabled": ["b"], "scores": {"a": 4.0, "b": 1.5, "c": 10.0}},  # b (on) 1/2; a (off) 4; c (off) 2
    ])
    drift = A.score_drift(reallocs)
    assert drift["pairs_on"] == 2 and drift["pairs_off"] == 3
    assert drift["on_median"] == pytest.approx(0.5)
    assert drift["off_median"] == pytest.approx(3.0)  # median of 3, 4, 2
    assert drift["on_over_off"] == pytest.approx(0.5 / 3.0)
    assert A.score_drift(reallocs[:1]) == {"on_median": None, "off_median": None, "on_over_off": None,
                                           "pairs_on": 0, "pairs_off": 0}


def test_enabled_sets_and_jaccard():
    assert A.enabled_set(REALLOCS) == {"layer.1.lora.q", "layer.1.lora.v", "layer.0.shortcut.res_attn"}
    assert A.enabled_set(REALLOCS, "majority") == {"layer.0.lora.v", "layer.1.lora.v", "layer.1.lora.q", "layer.0.shortcut.res_attn"}
    assert A.enabled_set([]) == frozenset()
    with pytest.raises(ValueError):
        A.enabled_set(REALLOCS, "best")
    assert C.jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert math.isnan(C.jaccard(set(), set()))
    matrix = C.jaccard_matrix({"x": {"a", "b"}, "y": {"b", "c"}, "z": {"a", "b"}})
    assert matrix.loc["x", "z"] == 1.0 and matrix.loc["x", "y"] == pytest.approx(1 / 3)
    assert (np.diag(matrix) == 1).all() and (matrix == matrix.T).all().all()


def test_spearman_matrix_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    modules = [f"layer.{i}.lora.v" for i in range(20)]
    a = pd.Series(rng.normal(size=20), index=modules)
    b = pd.Series(a.to_numpy() + rng.normal(scale=0.5, size=20), index=modules)
    b.iloc[3] = b.iloc[4]  # a tie
    c = pd.Series(1.0, index=modules)  # a constant proxy: no ranking at all
    matrix = C.spearman_matrix({"a": a, "b": b, "c": c, "short": a.iloc[:2]})
    assert matrix.loc["a", "b"] == pytest.approx(spearmanr(a, b).statistic)
    assert matrix.loc["a", "a"] == pytest.approx(1.0)
    assert math.isnan(matrix.loc["a", "c"])
    assert math.isnan(matrix.loc["a", "short"])  # fewer than 3 common modules


def test_spearman_uses_only_common_modules():
    a = pd.Series({"m1": 1.0, "m2": 2.0, "m3": 3.0, "m4": 4.0})
    b = pd.Series({"m2": 20.0, "m3": 30.0, "m4": 40.0, "m9": -1.0})
    assert C.spearman_matrix({"a": a, "b": b}).loc["a", "b"] == pytest.approx(1.0)


def test_mean_scores():
    means = A.mean_scores(REALLOCS)
    assert means["layer.1.lora.q"] == pytest.approx(3.5)


def test_metrics_frame_and_metric_column():
    lines = [{"step": 10, "epoch": 0.5, "loss": 0.6}, {"step": 20, "epoch": 1.0, "eval_accuracy": 0.8, "eval_loss": 0.5,
             "eval_runtime": 1.2}, {"step": 5, "loss": 0.7}]
    frame = C.metrics_frame(lines)
    assert frame["step"].tolist() == [5, 10, 20]
    assert C.metric_column(frame, "accuracy") == "eval_accuracy"
    assert C.metric_column(frame, None) == "eval_accuracy"  # not a loss, not a timing
    mnli = C.metrics_frame([{"step": 1, "eval_matched_accuracy": 0.7}])
    assert C.metric_column(mnli, "accuracy") == "eval_matched_accuracy"
    assert C.metrics_frame([]).empty


def test_curves_frame_overlays_runs():
    runs = {"r1": ([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5, "eval_f1": 0.7}], "f1"),
            "r2": ([{"step": 1, "loss": 0.9}], "f1")}
    loss = C.curves_frame(runs, "loss")
    assert loss.groupby("run").size().to_dict() == {"r1": 2, "r2": 1}
    metric = C.curves_frame(runs, "metric")
    assert metric.to_dict("records") == [{"run": "r1", "step": 2, "value": 0.7}]
    assert list(C.curves_frame({}, "loss").columns) == ["run", "step", "value"]


def _row(mode="dynamic", proxy="grad_norm", seed=0, best=0.8, config=None, **summary):
    """A store row as :meth:`RunStore.list_runs` gives it (the config read with ``RunConfig.from_dict``,
    as the store reads ``config.json``)."""
    config = config or {"mode": mode, "proxy": proxy, "seed": seed, "rank": 32, "enable_ratio": 0.25, "task": "mrpc"}
    return StoredRun(
        run_id=f"{mode}-{proxy}-{seed}", path=Path("/x"), created_at=100.0 + seed, sweep_id=None, queue_seq=None,
        config=RunConfig.from_dict(config),
        summary=RunSummary.from_dict({"status": "done", "best_score": best, "trainable_params": 1000,
                                      "wall_seconds": 60.0, "search_seconds": 2.0, "created_at": 100.0 + seed,
                                      **summary}))


def _label(configs, key):
    """The Compare page's ``config`` column: the configuration's label without the seed."""
    return run_label(configs[key], include_seed=False)


def test_compare_table_groups_seeds():
    rows = [_row(seed=0, best=0.80), _row(seed=1, best=0.84), _row(proxy="snip", best=0.79), _row(mode="lora", best=0.9)]
    table, configs = C.compare_table(rows)
    assert list(table.columns) == C.COMPARE_COLUMNS + ["mode", "proxy"]  # the differing settings get columns
    assert _label(configs, table["key"].tolist()[0]) == "mrpc · lora · q,v + shortcuts · r32 · lr 5e-4"  # best first
    labels = table["key"].map(lambda k: _label(configs, k))
    grad = table[labels.str.contains("grad_norm")]
    assert len(grad) == 1
    grad = grad.iloc[0]
    assert grad["runs"] == 2 and grad["seeds"] == [0, 1] and grad["n_seeds"] == 2
    assert grad["best_mean"] == pytest.approx(0.82)
    assert format_mean_std(grad["best_mean"], grad["best_std"], grad["n_seeds"]).startswith("0.8200 ± 0.0283")
    assert grad["search_seconds"] == 2.0


def test_compare_table_keeps_different_configs_apart_even_with_equal_labels():
    base = {"mode": "dynamic", "proxy": "grad_norm", "rank": 32, "enable_ratio": 0.25, "task": "mrpc"}
    short = _row(seed=0, best=0.7, config={**base, "seed": 0, "max_steps": 2})
    # environment keys written by the CLI (python, versions) do not split groups
    long_ = _row(seed=1, best=0.8, config={**base, "seed": 1, "max_steps": 4, "python": "3.11"})
    long_2 = _row(seed=2, best=0.9, config={**base, "seed": 2, "max_steps": 4})
    table, configs = C.compare_table([short, long_, long_2])
    assert len(table) == 2
    # the labels say the run length; the differing setting is also a column of its own
    assert {_label(configs, k) for k in table["key"]} == {
        f"mrpc · dynamic · q,v + shortcuts · grad_norm · r32 · 25% · lr 5e-4 · {n} steps" for n in (2, 4)}
    assert list(table.columns) == C.COMPARE_COLUMNS + ["max_steps"]
    assert sorted(table["max_steps"]) == [2, 4]
    assert table.set_index("max_steps")["runs"].to_dict() == {4: 2, 2: 1}
    assert table.set_index("max_steps")["seeds"].to_dict() == {4: [1, 2], 2: [0]}


def test_runs_table_newest_first_with_progress():
    rows = [_row(seed=0), _row(seed=5, status="running", progress=0.4, eta_seconds=30), _row(seed=2, status="failed", error="boom")]
    table = C.runs_table(rows)
    assert table["seed"].tolist() == [5, 2, 0]
    assert table.loc[0, "progress"] == 0.4 and table.loc[0, "eta_seconds"] == 30
    assert table.loc[2, "progress"] == 1.0  # done
    assert table.loc[1, "error"] == "boom"
    assert str(table["trainable_params"].dtype) == "Int64"


def test_synthetic_record_has_the_paper_search_space(make_run):
    record = make_run("opt", n_layers=24, n_reallocations=100)
    reallocs = record.reallocations()
    freq = A.enable_frequency(reallocs)
    assert len(freq) == 143 and len(reallocs) == 100
    assert A.frequency_grid(freq, "lora").shape == (24, 2)
    assert A.frequency_grid(freq, "shortcut").shape == (24, 4)
    # value projections win over query, as in the paper's Figure 4
    lora = A.frequency_grid(freq, "lora")
    assert lora["v"].mean() > lora["q"].mean()


def test_score_summary_matches_numpy_box_statistics():
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.normal(1.0, 0.1, 200), [5.0]])  # one outlier
    dist = pd.DataFrame({"group": "lora", "kind": "v", "score": scores})
    dist = pd.concat([dist, pd.DataFrame({"group": "lora", "kind": "q", "score": [1.0, 2.0, 3.0]})])
    summary = A.score_summary(dist).set_index("kind")
    assert list(summary.index) == ["q", "v"]  # canonical order
    v = summary.loc["v"]
    q1, med, q3 = np.quantile(scores, [0.25, 0.5, 0.75])
    assert (v["q1"], v["median"], v["q3"]) == pytest.approx((q1, med, q3))
    assert v["upperfence"] < 5.0 and v["max"] == 5.0 and v["n"] == 201  # the outlier is beyond the fence
    assert summary.loc["q", "lowerfence"] == 1.0 and summary.loc["q", "upperfence"] == 3.0
    assert A.score_summary(A.score_distribution([])).empty


# -- ranks: methods that give each module its own rank --------------------------------------------

RANKED = lines([
    {"step": 10, "scores": {"layer.0.lora.q": 1.0, "layer.0.lora.v": 2.0, "layer.1.lora.q": 3.0, "layer.1.lora.v": 4.0},
     "enabled": ["layer.0.lora.q", "layer.0.lora.v", "layer.1.lora.q", "layer.1.lora.v"],
     "ranks": {"layer.0.lora.q": 8, "layer.0.lora.v": 6, "layer.1.lora.q": 4, "layer.1.lora.v": 2}},
    # layer.1.lora.v is switched off: rank 0 whatever its stated rank; layer.0.lora.v has no stated rank: 0
    {"step": 20, "scores": {"layer.0.lora.q": 1.0, "layer.0.lora.v": 2.0, "layer.1.lora.q": 3.0, "layer.1.lora.v": 4.0},
     "enabled": ["layer.0.lora.q", "layer.0.lora.v", "layer.1.lora.q"],
     "ranks": {"layer.0.lora.q": 5, "layer.1.lora.q": 7, "layer.1.lora.v": 3}},
])


def test_rank_frame_and_grid_by_hand():
    assert A.has_ranks(RANKED) and not A.has_ranks(REALLOCS)
    final = A.rank_frame(RANKED).set_index("module")["rank"].to_dict()
    assert final == {"layer.0.lora.q": 5, "layer.0.lora.v": 0, "layer.1.lora.q": 7, "layer.1.lora.v": 0}
    first = A.rank_frame(RANKED, at=0)
    assert first["rank"].tolist() == [8, 6, 4, 2] and str(first["rank"].dtype) == "int64"
    grid = A.rank_grid(A.rank_frame(RANKED), "lora", n_layers=3)
    assert grid.loc[0].tolist() == [5, 0] and grid.loc[1].tolist() == [7, 0] and grid.loc[2].isna().all()
    assert A.rank_grid(A.rank_frame(RANKED), "shortcut").shape[1] == 0
    assert A.rank_frame([]).empty and list(A.rank_frame([]).columns) == ["module", "layer", "group", "kind", "rank"]
    # a line without ranks (a dynamic run's) gives every module rank 0
    assert A.rank_frame(REALLOCS)["rank"].sum() == 0 and A.line_ranks(REALLOCS[0]) == {}


def test_rank_timeline_by_hand():
    rt = A.rank_timeline(RANKED)
    assert rt.steps == [10, 20]
    assert rt.ranks.loc["layer.0.lora.q"].tolist() == [8, 5]
    assert rt.ranks.loc["layer.0.lora.v"].tolist() == [6, 0]
    assert rt.ranks.loc["layer.1.lora.v"].tolist() == [2, 0]
    assert rt.ranks.sum().tolist() == [20, 12]


def test_the_committed_adalora_record_keeps_its_target_budget():
    """An AdaLoRA record under data/results: 12 q,v modules, ranks from init_r 32 down to a total of
    24 x 12 = 288 after the final allocation (docs/results.md, row 9)."""
    from heterolora_core.records.record import RunRecord

    record = RunRecord(Path(__file__).resolve().parents[1] / "data" / "results" / "gpu" / "lr0.0005" / "mrpc"
                       / "adalora-qv-r32to24" / "seed0")
    reallocs = record.reallocations()
    final = A.rank_frame(reallocs)
    assert len(final) == 12 and final["rank"].sum() == 288 and final["rank"].max() <= 32
    assert A.rank_timeline(reallocs).ranks.sum().tolist()[-1] == 288
    assert A.rank_grid(final, "lora").shape == (6, 2)


def test_compare_table_counts_the_seeds_that_have_a_score():
    """A seed run twice counts once (with its mean), a run without a score counts no seed."""
    rows = [_row(seed=0, best=0.80), _row(seed=0, best=0.84), _row(seed=1, best=0.90),
            _row(seed=2, best=None, status="running")]
    table, _ = C.compare_table(rows)
    row = table.iloc[0]
    assert row["runs"] == 4 and row["n_seeds"] == 2 and row["seeds"] == [0, 1]
    assert row["best_mean"] == pytest.approx((0.82 + 0.90) / 2)
    assert row["best_std"] == pytest.approx(math.sqrt(2) * 0.04)  # sd of (0.82, 0.90)


def test_allocation_opens_on_a_real_allocation_before_a_control_or_uniform_lora():
    from heterolora_core.analysis.allocation import default_run_index

    newest_first = [("lora", True), ("rank_random", True), ("dynamic", False), ("rank_static", True), ("static", True)]
    assert default_run_index(newest_first) == 3
    assert default_run_index([("lora", True), ("rank_random", True)]) == 1
    assert default_run_index([("lora", False), ("lora", True)]) == 1
    assert default_run_index([("dynamic", False)]) == 0
