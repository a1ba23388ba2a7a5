"""heterolora_core.analysis.results (configurations over seeds, paired differences to a reference),
stats.seed_scores, units (GLUE points) and compare's run filters and experiments: hand-computed
numbers, and the committed grid records against docs/results.md."""
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from heterolora_core.analysis import compare as C
from heterolora_core.analysis import results as R
from heterolora_core.analysis import units
from heterolora_core.analysis.stats import seed_scores, t_quantile
from heterolora_core.records.home import PROJECT_ROOT
from heterolora_core.records.record import RunSummary
from heterolora_core.records.store import RunStore, StoredRun
from heterolora_core.training.run_config import RunConfig

T2 = t_quantile(2)  # 4.3027: three seeds


def run(final, seed=0, best=None, status="done", run_id=None, **config):
    """A store row of a finished run: ``config`` overrides a dynamic MRPC run's fields."""
    fields = {"task": "mrpc", "mode": "dynamic", "proxy": "grad_norm", "rank": 32, "seed": seed, **config}
    return StoredRun(
        run_id=run_id or "-".join(f"{v}" for v in fields.values()) + f"-{final}", path=Path("/x"), created_at=0.0,
        sweep_id=None, queue_seq=None, config=RunConfig.from_dict(fields),
        summary=RunSummary.from_dict({"status": status, "final_score": final, "best_score": best if best is not None else final,
                                      "metric": "accuracy", "trainable_params": 1000, "wall_seconds": 60.0}))


def test_seed_scores_average_a_repeated_seed_and_drop_missing_scores():
    assert seed_scores([(1, 0.5), (0, 0.8), (0, 0.6), (2, None), (3, float("nan")), (4, "x")]) == {0: 0.7, 1: 0.5}
    assert list(seed_scores([(2, 0.1), (0, 0.2)])) == [0, 2]  # sorted by seed


def test_units_are_glue_points():
    assert units.points(0.8125) == 81.25 and units.points(None) is None and units.points(float("inf")) is None
    assert units.points(True) is None
    assert units.format_points(0.79902) == "79.90" and units.format_points(None) == "–"
    assert units.format_points(-0.0809, signed=True) == "-8.09" and units.format_points(0.0025, signed=True) == "+0.25"
    assert units.format_points(None, missing="-") == "-"
    assert units.format_interval((0.753, 0.845)) == "[75.3, 84.5]" and units.format_interval(None) == ""
    assert units.format_interval((0.1, None), missing="–") == "–"


def test_groups_by_configuration_and_counts_each_seed_once():
    rows = [run(0.80, seed=0), run(0.78, seed=0, run_id="copy"), run(0.84, seed=1), run(0.5, seed=2, status="failed"),
            run(0.70, seed=0, proxy="snip")]
    groups = R.group_by_config(rows)
    assert len(groups) == 2  # the proxy splits; the failed run has no result
    grad = next(g for g in groups if g.config.proxy == "grad_norm")
    assert len(grad.runs) == 3 and grad.final == pytest.approx({0: 0.79, 1: 0.84})
    assert grad.metric == "accuracy"
    assert len(R.group_by_config(rows, finished_only=False)[0].runs) == 4


def test_results_table_statistics_and_paired_differences_by_hand():
    reference = [run(f, seed=s, mode="lora", best=f + 0.01) for s, f in enumerate([0.80, 0.82, 0.84])]
    worse = [run(f, seed=s) for s, f in enumerate([0.70, 0.74, 0.72])]  # differences -0.10, -0.08, -0.12
    level = [run(f, seed=s, proxy="snip") for s, f in enumerate([0.81, 0.80, 0.86])]  # +0.01, -0.02, +0.02
    single = [run(0.90, seed=0, proxy="fisher")]  # one seed: +0.10, no interval
    unpaired = [run(0.9, seed=7, proxy="synflow")]
    other = [run(0.55, seed=s, task="rte", mode="lora") for s in range(3)]
    groups = R.group_by_config(reference + worse + level + single + unpaired + other)
    ref_key = next(g.key for g in groups if g.config.mode == "lora" and g.config.task == "mrpc")
    full = R.results_table(groups, ref_key)
    assert list(full.columns[:len(R.RESULT_COLUMNS)]) == R.RESULT_COLUMNS
    table = full.set_index(full["mode"].where(full["mode"] != "dynamic", full["proxy"]))  # lora, or the proxy

    ref = table[table["verdict"] == R.REFERENCE].iloc[0]
    assert (ref["final_mean"], ref["final_std"]) == pytest.approx((0.82, 0.02))
    assert (ref["n_seeds"], list(ref["seeds"])) == (3, [0, 1, 2])
    half = T2 * 0.02 / math.sqrt(3)  # 0.04968
    assert (ref["final_low"], ref["final_high"]) == pytest.approx((0.82 - half, 0.82 + half))
    assert ref["best_mean"] == pytest.approx(0.83)

    g = table.loc["grad_norm"]
    assert g["delta_mean"] == pytest.approx(-0.10) and g["delta_seeds"] == 3
    assert (g["delta_low"], g["delta_high"]) == pytest.approx((-0.10 - half, -0.10 + half))  # sd of the differences: 0.02
    assert g["verdict"] == "worse"
    s = table.loc["snip"]
    sd = pd.Series([0.01, -0.02, 0.02]).std()
    assert s["delta_mean"] == pytest.approx(0.01 / 3)
    assert s["delta_high"] - s["delta_mean"] == pytest.approx(T2 * sd / math.sqrt(3)) and s["verdict"] == "noise"
    f = table.loc["fisher"]
    assert f["delta_mean"] == pytest.approx(0.10) and math.isnan(f["delta_low"]) and f["verdict"] == "n/a (1 seed)"
    assert table.loc["synflow", "verdict"] == R.NO_COMMON_SEED
    assert table[table["task"] == "rte"]["verdict"].tolist() == [R.OTHER_TASK]
    assert table.index.tolist().count("lora") == 2
    assert R.results_table(groups, "no such key")["verdict"].isna().all()
    # the differing config fields get columns; the task (a column of its own) does not twice
    assert {"mode", "proxy"} <= set(R.results_table(groups).columns) and list(table.columns).count("task") == 1


def test_results_table_order_and_default_reference():
    groups = R.group_by_config([run(0.7, seed=0), run(0.9, seed=0, proxy="snip"), run(0.95, seed=0, task="rte"),
                                run(0.6, seed=1, proxy="fisher")])
    table = R.results_table(groups)
    assert table["task"].tolist() == ["mrpc", "mrpc", "mrpc", "rte"]
    assert table["final_mean"].tolist()[:3] == pytest.approx([0.9, 0.7, 0.6])  # best first within a task
    best_mrpc = next(g.key for g in groups if g.config.proxy == "snip" and g.config.task == "mrpc")
    assert R.default_reference(groups) == best_mrpc  # MRPC has the most runs; its best group
    assert R.default_reference([]) is None
    # more seeds win over a better single seed
    seeded = R.group_by_config([run(0.7, seed=0), run(0.72, seed=1), run(0.9, seed=0, proxy="snip")])
    assert R.default_reference(seeded) == next(g.key for g in seeded if g.config.proxy == "grad_norm")


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """The committed records in a temporary data home (the repository is never written)."""
    home = tmp_path_factory.mktemp("committed")
    shutil.copytree(PROJECT_ROOT / "data" / "results", home / "results")
    store = RunStore(home)
    return store, store.list_runs()


def _grid_table(committed, task: str, reference_row: str):
    store, rows = committed
    frame = C.runs_table(rows, store.home)
    kept = set(C.filter_runs(frame, C.RunFilter({"experiment": [f"results/gpu/lr0.0005/{task}"]}))["run_id"])
    groups = R.group_by_config([r for r in rows if r.run_id in kept])
    slug = {g.key: Path(g.runs[0].run_id).parent.name for g in groups}
    ref = next(k for k, s in slug.items() if s == reference_row)
    table = R.results_table(groups, ref)
    return table.assign(row=table["key"].map(slug)).set_index("row")


def test_the_committed_grid_reproduces_docs_results_mrpc(committed):
    """docs/results.md, "The grid: every row at lr 5e-4", MRPC: rows 4 and 6 (row 6 against row 4)."""
    table = _grid_table(committed, "mrpc", "lora-qv-r24")
    assert len(table) == 13 and set(table["n_seeds"]) == {3} and set(table["runs"]) == {3}
    row4, row6 = table.loc["lora-qv-r24"], table.loc["dynamic-combined-gradnorm-r32"]
    assert units.format_points(row4["final_mean"]) == "79.90" and units.format_points(row4["final_std"]) == "1.85"
    assert units.format_interval((row4["final_low"], row4["final_high"])) == "[75.3, 84.5]"
    assert units.format_points(row6["final_mean"]) == "71.81" and units.format_points(row6["final_std"]) == "3.19"
    assert units.format_points(row6["best_mean"]) == "72.14"
    assert units.format_points(row6["delta_mean"], signed=True) == "-8.09"
    assert units.format_interval((row6["delta_low"], row6["delta_high"])) == "[-17.8, 1.7]"
    assert row6["verdict"] == "noise"
    nine = table.loc["adalora-qv-r32to24"]  # row 9: "-9.64 [-13.8, -5.5] worse"
    assert (units.format_points(nine["delta_mean"], signed=True), nine["verdict"]) == ("-9.64", "worse")
    assert units.format_interval((nine["delta_low"], nine["delta_high"])) == "[-13.8, -5.5]"


def test_the_committed_grid_reproduces_docs_results_rte(committed):
    """docs/results.md, RTE at lr 5e-4: row 4 54.15 ± 2.01, row 6 52.59 ± 4.57, vs 4: -1.56 [-8.4, 5.2] noise."""
    table = _grid_table(committed, "rte", "lora-qv-r24")
    row4, row6 = table.loc["lora-qv-r24"], table.loc["dynamic-combined-gradnorm-r32"]
    assert (units.format_points(row4["final_mean"]), units.format_points(row4["final_std"])) == ("54.15", "2.01")
    assert (units.format_points(row6["final_mean"]), units.format_points(row6["final_std"])) == ("52.59", "4.57")
    assert units.format_points(row6["delta_mean"], signed=True) == "-1.56"
    assert units.format_interval((row6["delta_low"], row6["delta_high"])) == "[-8.4, 5.2]" and row6["verdict"] == "noise"
    one = _grid_table(committed, "rte", "lora-qv-r8").loc["static-gradnorm-r32-p25"]  # row 2 vs 1: +0.24 [-9.3, 9.7]
    assert units.format_points(one["delta_mean"], signed=True) == "+0.24"
    assert units.format_interval((one["delta_low"], one["delta_high"])) == "[-9.3, 9.7]"


# -- the Runs explorer's filters (compare.filter_runs, experiments) ----------------------------------


def _frame():
    rows = [run(0.8, seed=0, run_id="a"), run(0.7, seed=1, run_id="b", proxy="snip", lr=1e-3),
            run(0.6, seed=0, run_id="c", mode="lora", status="failed")]
    frame = C.runs_table(rows)
    frame["experiment"] = ["results/gpu/lr0.0005/mrpc/x", "results/gpu/lr0.001/mrpc/x", "sweep-1"]
    frame["label"] = ["alpha run", "Beta run", "gamma"]
    return frame


def test_filter_runs_by_values_experiment_folders_and_text():
    frame = _frame()
    keep = lambda **kw: C.filter_runs(frame, C.RunFilter(kw.pop("values", {}), **kw))["run_id"].tolist()
    assert keep() == ["a", "b", "c"]
    assert sorted(keep(values={"proxy": ["snip", "grad_norm"]})) == ["a", "b"]  # lora has no proxy
    assert keep(values={"lr": [1e-3]}) == ["b"]
    assert keep(values={"status": ["failed"], "mode": ["lora"]}) == ["c"]
    assert sorted(keep(values={"experiment": ["results/gpu"]})) == ["a", "b"]  # a folder keeps what lies below it
    assert keep(values={"experiment": ["results/gpu/lr0.001/mrpc/x"]}) == ["b"]
    assert keep(values={"experiment": ["results/gp"]}) == []  # a prefix of a name is not a folder
    assert keep(text="BETA") == ["b"] and keep(text="sweep") == ["c"] and keep(text="[(*") == []
    assert keep(values={"rank": [999], "nonsense": ["x"]}) == []  # a stale value keeps nothing, never raises
    assert not C.RunFilter().active and C.RunFilter({"task": ["rte"]}).active and C.RunFilter(text=" x ").active


def test_experiment_options_and_table():
    frame = _frame()
    assert C.experiment_options(frame["experiment"]) == [
        "results", "results/gpu", "results/gpu/lr0.0005", "results/gpu/lr0.0005/mrpc", "results/gpu/lr0.0005/mrpc/x",
        "results/gpu/lr0.001", "results/gpu/lr0.001/mrpc", "results/gpu/lr0.001/mrpc/x", "sweep-1"]
    table = C.experiments_table(frame.assign(experiment=["e1", "e1", "e2"])).set_index("experiment")
    assert table.loc["e1", ["runs", "done", "failed"]].tolist() == [2, 2, 0]
    assert table.loc["e1", "best_final"] == pytest.approx(0.8) and table.loc["e1", "tasks"] == "mrpc"
    assert table.loc["e2", ["runs", "done", "failed"]].tolist() == [1, 0, 1] and math.isnan(table.loc["e2", "best_final"])
    assert C.experiments_table(frame.iloc[:0]).empty


def test_sort_runs():
    frame = _frame()
    assert C.sort_runs(frame, "final_score", descending=False)["run_id"].tolist() == ["c", "b", "a"]
    frame["experiment"] = ["e2", "e1", "e2"]
    assert C.sort_runs(frame, "final_score", by_experiment=True)["run_id"].tolist() == ["b", "a", "c"]
    assert C.sort_runs(frame, "no such column")["run_id"].tolist() == C.sort_runs(frame)["run_id"].tolist()
