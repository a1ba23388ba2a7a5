"""Streamlit AppTest tests of every page's logic (no browser, no worker; the engine's own budget planner)."""
import json
import os
import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from dashboard.components.forms import SHORT_RUN
from heterolora_core.analysis import allocation as alloc
from heterolora_core.methods import registry
from heterolora_core.records.home import PROJECT_ROOT
from heterolora_core.records.store import RunStore
from heterolora_core.training.run_config import RunConfig

APP = str(PROJECT_ROOT / "dashboard" / "app.py")


@pytest.fixture(autouse=True)
def app_env(home, monkeypatch):
    """Every test: a fresh data home, no worker process, an offline hub (a model id is checked against
    the local cache only), empty Streamlit caches."""
    monkeypatch.setenv("HETEROLORA_DASHBOARD_WORKER", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_data.clear()
    st.cache_resource.clear()
    yield


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def run_dirs(home):
    runs = home / "runs"
    return sorted(p for p in runs.iterdir()) if runs.exists() else []


# -- app ------------------------------------------------------------------------------------------


def test_app_has_five_pages_and_opens_on_launch(home):
    at = open_page()
    assert at.title[0].value == "Launch"
    for page, title in [("runs", "Runs"), ("allocation", "Allocation"), ("compare", "Compare"), ("results", "Results")]:
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.message for e in at.exception]
        assert at.title[0].value == title
        # every page runs inside app.py (its sidebar), not on its own as a legacy pages/ script
        assert any(str(home) in c.value for c in at.sidebar.caption), title
    assert any(str(home) in c.value for c in at.sidebar.caption)


def test_app_sends_the_plotly_preload_hint_first():
    """The sidebar's first element preloads the Plotly chunk that Streamlit actually ships."""
    from pathlib import Path

    from dashboard.components import browser_hints

    chunk = browser_hints.plotly_chunk()
    assert chunk is not None and chunk.startswith("PlotlyChart.")
    assert (Path(st.__file__).parent / "static" / "static" / "js" / chunk).is_file()
    at = open_page()
    first = at.sidebar.markdown[0]
    assert first.value == f'<link rel="modulepreload" crossorigin href="./static/js/{chunk}">'
    assert first.allow_html


def test_app_starts_the_worker(home, monkeypatch):
    from heterolora_core.records import worker

    started = []
    monkeypatch.setenv("HETEROLORA_DASHBOARD_WORKER", "1")
    monkeypatch.setattr(worker, "ensure_worker", lambda h=None: started.append(h) or 4242)
    at = open_page()
    assert started and str(started[0]) == str(home)
    assert any("pid 4242" in c.value for c in at.sidebar.caption)


def test_the_sidebar_sets_the_workers_slots(home):
    at = open_page()
    slots = at.sidebar.number_input(key="worker_slots")
    assert (slots.value, slots.min, slots.max) == (1, 1, 64)
    assert any("only makes sense on a GPU machine or for tiny runs" in c.value for c in at.sidebar.caption)
    slots.set_value(3).run()
    assert not at.exception
    assert RunStore(home).settings()["slots"] == 3  # <home>/worker.json, read by the worker at every loop
    assert open_page("runs").sidebar.number_input(key="worker_slots").value == 3  # a new session reads it back


# -- Launch ---------------------------------------------------------------------------------------


def test_launch_shows_the_exact_budget_of_the_default_short_run():
    at = open_page()
    assert at.metric[0].value == f"{9 * 32 * 768:,}"
    assert any("uniform LoRA q,v at rank 24" in m.value for m in at.markdown)
    assert not at.error
    assert not at.button(key="launch").disabled


def test_budget_updates_as_inputs_change():
    at = open_page()
    at.number_input(key="rank").set_value(8).run()
    assert at.metric[0].value == f"{9 * 8 * 768:,}"
    at.radio(key="mode").set_value("lora").run()
    assert at.metric[0].value == f"{35 * 8 * 768:,}"
    assert at.selectbox(key="proxy").disabled


def test_every_registered_method_opens_the_form_with_its_own_settings(home):
    """Each mode renders its own options (a rank mode's budget in adapter parameters, its rule as a
    choice) and queues a config carrying them."""
    at = open_page()
    for mode in registry.names():
        at.radio(key="mode").set_value(mode).run()
        assert not at.exception, (mode, at.exception)
    at.radio(key="mode").set_value("rank_static").run()
    at.radio(key="budget").set_value("adapter parameters").run()
    at.number_input(key="budget_params").set_value(9 * 12 * 768).run()
    at.selectbox(key="rank_rule").set_value("proportional").run()
    assert at.metric[0].value == f"{9 * 12 * 768:,}" and not at.error
    at.button(key="launch").click().run()
    config = json.loads((run_dirs(home)[0] / "config.json").read_text())
    assert (config["mode"], config["budget_params"], config["rank_rule"], config["rank_init"]) == (
        "rank_static", 9 * 12 * 768, "proportional", "kaiming")


def test_a_launch_without_its_data_is_refused_on_the_form(home, monkeypatch, tmp_path):
    """No GLUE_DIR and no hub (offline, nothing cached): the form says what to do and queues nothing,
    instead of accepting a run that fails later."""
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "no-cache"))
    at = open_page()
    assert any("no data for GLUE task 'mrpc'" in e.value and "GLUE_DIR" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert at.button(key="launch").disabled
    assert run_dirs(home) == [] and RunStore().list_runs() == []


@pytest.mark.parametrize("widget, value, message", [
    ("rank", 0, "rank must be at least 1"),
    ("model", "nobody/no-such-model", "does not exist"),
    ("enable_ratio", 0.01, "enables nothing"),
])
def test_bad_input_gets_an_inline_error_and_launches_nothing(home, widget, value, message):
    at = open_page()
    element = at.text_input(key=widget) if widget == "model" else at.number_input(key=widget)
    element.set_value(value).run()
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="launch").disabled and at.button(key="launch_sweep").disabled  # AppTest refuses a click
    assert run_dirs(home) == []


def test_launch_queues_the_run(home):
    at = open_page()
    at.number_input(key="seed").set_value(5).run()
    at.button(key="launch").click().run()
    assert not at.exception
    (folder,) = run_dirs(home)
    config = json.loads((folder / "config.json").read_text())
    assert config["seed"] == 5
    assert {k: config[k] for k in SHORT_RUN if k != "seed"} == {k: v for k, v in SHORT_RUN.items() if k != "seed"}
    assert json.loads((folder / "summary.json").read_text())["status"] == "queued"
    assert any(folder.name in s.value for s in at.success)


def test_custom_run_length(home):
    at = open_page()
    at.radio(key="length").set_value("custom").run()
    at.number_input(key="max_steps").set_value(4).run()
    at.number_input(key="train_limit").set_value(32).run()
    at.button(key="launch").click().run()
    (folder,) = run_dirs(home)
    config = json.loads((folder / "config.json").read_text())
    assert (config["max_steps"], config["train_limit"]) == (4, 32)


def test_match_uniform_rank_budget(home):
    at = open_page()
    at.radio(key="budget").set_value("match uniform rank r").run()
    at.number_input(key="match_uniform_rank").set_value(8).run()
    # the engine's match-uniform budget: the parameters of uniform LoRA q,v at rank 8 (12 modules x 8 x 768),
    # spent on modules of rank 32 (3 of them)
    assert at.metric[0].value == f"{12 * 8 * 768:,}" == f"{3 * 32 * 768:,}"
    assert any("uniform LoRA q,v at rank 8" in m.value for m in at.markdown)
    at.button(key="launch").click().run()
    (folder,) = run_dirs(home)
    assert json.loads((folder / "config.json").read_text())["match_uniform_rank"] == 8


def test_proxy_sweep_queues_one_run_per_proxy_and_seed(home):
    at = open_page()
    at.multiselect(key="sweep_proxies").set_value(["grad_norm", "snip", "fisher"]).run()
    at.text_input(key="sweep_seeds").set_value("0, 13").run()
    assert "6 runs" in at.button(key="launch_sweep").label
    at.button(key="launch_sweep").click().run()
    configs = [json.loads((f / "config.json").read_text()) for f in run_dirs(home)]
    assert len(configs) == 6 and len({c["sweep_id"] for c in configs}) == 1
    assert sorted((c["proxy"], c["seed"]) for c in configs) == sorted((p, s) for p in ("grad_norm", "snip", "fisher") for s in (0, 13))
    assert {c["rank"] for c in configs} == {SHORT_RUN["rank"]}


def test_sweep_refuses_bad_seeds_and_uniform_mode(home):
    at = open_page()
    at.text_input(key="sweep_seeds").set_value("zero").run()
    assert any("seeds must be whole numbers" in e.value for e in at.error)
    assert at.button(key="launch_sweep").disabled
    at.text_input(key="sweep_seeds").set_value("0").run()
    at.radio(key="mode").set_value("lora").run()
    assert at.button(key="launch_sweep").disabled and not at.button(key="launch").disabled


def test_sweep_refuses_an_empty_proxy_list(home):
    at = open_page()
    at.multiselect(key="sweep_proxies").set_value([]).run()
    assert any("choose at least one proxy" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="launch_sweep").disabled and not at.button(key="launch").disabled
    assert run_dirs(home) == []


def test_a_sweep_defined_on_the_page_shows_its_runs_and_budgets_then_queues_resumably(home):
    at = open_page()
    at.multiselect(key="sweep_axes").set_value(["seed", "rank"]).run()
    at.text_input(key="sweep_axis_seed").set_value("0, 1").run()
    at.text_input(key="sweep_axis_rank").set_value("8, 32").run()
    at.text_input(key="sweep_id").set_value("page-sweep").run()
    assert not at.error, [e.value for e in at.error]
    assert any("**4 runs** in experiment `page-sweep`: 4 to queue" in m.value for m in at.markdown)
    budgets = at.dataframe[0].value
    # the form's budget (25% of the 35 candidates = 9 modules) at each swept rank, 2 seeds each
    assert list(zip(budgets["runs"], budgets["trainable_params"])) == [(2, 9 * 8 * 768), (2, 9 * 32 * 768)]
    assert "rank 24" in budgets["uniform_equivalent"][1]
    assert at.button(key="launch_custom_sweep").label == "Queue sweep (4 runs)"
    at.button(key="launch_custom_sweep").click().run()
    assert any("Queued 4 runs under experiment `page-sweep`" in s.value for s in at.success)
    configs = [json.loads((f / "config.json").read_text()) for f in run_dirs(home)]
    assert sorted((c["seed"], c["rank"]) for c in configs) == [(0, 8), (0, 32), (1, 8), (1, 32)]
    assert {c["sweep_id"] for c in configs} == {"page-sweep"} and {c["max_steps"] for c in configs} == {SHORT_RUN["max_steps"]}
    at.run()  # the same sweep again: nothing left to queue
    assert any("0 to queue, 4 queued or running (left alone)" in m.value for m in at.markdown)
    assert at.button(key="launch_custom_sweep").disabled
    assert len(run_dirs(home)) == 4


@pytest.mark.parametrize("axis, values, message", [
    ("rank", "0, 8", "row all (rank=0): rank must be at least 1"),
    ("proxy", "grad_norm, nope", "unknown proxy 'nope'"),
    ("seed", "0, x", "seed: 'x' is not a whole number"),
    ("lr", "", "learning rate: give one or more comma-separated values"),
])
def test_a_bad_sweep_gets_one_inline_line_and_queues_nothing(home, axis, values, message):
    at = open_page()
    at.multiselect(key="sweep_axes").set_value([axis]).run()
    at.text_input(key=f"sweep_axis_{axis}").set_value(values).run()
    errors = [e.value.replace("\\", "") for e in at.error]  # shown as text: Markdown-escaped on the page
    assert any(message in e for e in errors) and all("\n" not in e for e in errors), errors
    assert at.button(key="launch_custom_sweep").disabled
    assert not at.button(key="launch").disabled  # the single run is still fine
    assert run_dirs(home) == []


PASTED = """sweep: pasted-sweep
folder: "runs/pasted/{row}/seed{seed}"
base: {max_steps: 4, train_limit: 32, rank: 16}
axes: {seed: [0, 1]}
rows:
  - {row: dyn, mode: dynamic, proxy: snip}
  - {row: qv8, mode: lora, rank: 8, shortcuts: false, only: {seed: [0]}}
"""


def test_a_pasted_sweep_file_queues_what_the_cli_would(home):
    at = open_page()
    at.radio(key="sweep_source").set_value("a sweep file").run()
    assert at.button(key="launch_custom_sweep").disabled  # nothing pasted yet
    at.text_area(key="sweep_text").set_value(PASTED).run()
    assert not at.error, [e.value for e in at.error]
    assert any("**3 runs** in experiment `pasted-sweep`" in m.value for m in at.markdown)
    budgets = at.dataframe[0].value
    assert list(zip(budgets["row"], budgets["runs"], budgets["trainable_params"])) == [
        ("dyn", 2, 9 * 16 * 768), ("qv8", 1, 12 * 8 * 768)]
    at.button(key="launch_custom_sweep").click().run()
    folders = sorted(p.relative_to(home).as_posix() for p in (home / "runs" / "pasted").glob("*/*"))
    assert folders == ["runs/pasted/dyn/seed0", "runs/pasted/dyn/seed1", "runs/pasted/qv8/seed0"]
    at.text_area(key="sweep_text").set_value(PASTED.replace("rows:", "colour: blue\nrows:")).run()
    assert [e.value.replace("\\", "") for e in at.error] == ["pasted.yaml: unknown key 'colour'"]
    assert at.button(key="launch_custom_sweep").disabled


# -- Runs -----------------------------------------------------------------------------------------


def test_runs_page_without_runs_says_how_to_start():
    at = open_page("runs")
    assert "No runs yet" in at.info[0].value


def test_runs_table_lists_every_run_with_its_state(home, make_run):
    make_run("run-done", status="done")
    make_run("run-failed", status="failed")
    crashed = make_run("run-crashed", status="done")
    crashed.update_summary(status="running", pid=999_999_999, started_at=time.time())  # no such process
    at = open_page("runs")
    table = at.dataframe[0].value
    assert set(table["run_id"]) == {"run-done", "run-failed", "run-crashed"}
    status = dict(zip(table["run_id"], table["status"]))
    assert status == {"run-done": "done", "run-failed": "failed", "run-crashed": "failed"}
    assert table.loc[table["run_id"] == "run-done", "progress"].item() == 1.0


def test_running_run_shows_live_curves(home, make_run):
    record = make_run("live", status="done")
    record.update_summary(status="running", pid=os.getpid(), started_at=time.time(), progress=0.5, eta_seconds=30)
    at = open_page("runs")
    assert any(s.value == "Live curves" for s in at.subheader)
    table = at.dataframe[0].value
    assert table["eta"].item() == "30s" and table["progress"].item() == 0.5
    assert at.selectbox(key="selected_run").value == "live"
    assert not at.button(key="cancel").disabled


def test_cancel_delete_rerun(home):
    store = RunStore()
    queued = store.enqueue(RunConfig(seed=1))
    other = store.enqueue(RunConfig(seed=2))
    at = open_page("runs")
    at.selectbox(key="selected_run").set_value(queued.run_id).run()
    at.button(key="cancel").click().run()
    assert queued.raw_summary().status == "cancelled"

    at.selectbox(key="selected_run").set_value(other.run_id).run()
    at.button(key="delete").click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    at.button(key="confirm_delete_no").click().run()
    assert other.path.exists() and not at.warning
    at.button(key="delete").click().run()
    at.button(key="confirm_delete_yes").click().run()
    assert not other.path.exists()

    at.selectbox(key="selected_run").set_value(queued.run_id).run()
    at.button(key="rerun").click().run()
    runs = store.list_runs()
    assert len(runs) == 2
    new = next(r for r in runs if r.run_id != queued.run_id)
    assert new.summary.status == "queued" and new.config.seed == 1


# -- Allocation -----------------------------------------------------------------------------------


def test_allocation_opens_on_the_newest_run_with_a_selection(make_run):
    make_run("dyn-24", n_layers=24, n_reallocations=100)
    make_run("static-6", mode="static")
    RunStore().enqueue(RunConfig())  # newest, but has nothing to draw yet
    at = open_page("allocation")
    assert at.selectbox(key="allocation_run").value == "static-6"
    assert any("Static run" in c.value for c in at.caption)
    heatmaps, timeline, scores = plotly_specs(at)
    lora, shortcut = heatmaps["data"]
    assert len(lora["y"]) == 6 and len(lora["z"]) == 6 and len(shortcut["y"]) == 6
    assert lora["coloraxis"] == shortcut["coloraxis"] == "coloraxis"
    assert (heatmaps["layout"]["coloraxis"]["cmin"], heatmaps["layout"]["coloraxis"]["cmax"]) == (0, 1)
    assert {v for row in lora["z"] for v in row} <= {0, 1}  # a static run is on or off
    assert [b.proto.label for b in at.get("download_button")] == ["Download frequencies (CSV)"]


def test_allocation_opens_on_a_run_that_allocates_and_draws_uniform_runs_without_scores(make_run):
    make_run("dyn", n_reallocations=5)
    uniform = make_run("uniform", mode="lora")  # newer; a real uniform run records its one all-on line
    modules = alloc.all_modules(RunStore().get("dyn").record.reallocations())
    uniform.append_reallocation(0, dict.fromkeys(modules, 1.0), modules, uniform=True)
    at = open_page("allocation")
    assert at.selectbox(key="allocation_run").value == "dyn"
    at.selectbox(key="allocation_run").set_value("uniform").run()
    assert any("Uniform run" in c.value for c in at.caption)
    specs = plotly_specs(at)
    assert len(specs) == 2  # heatmaps and timeline: no score distribution for a run without a proxy
    assert all("score" not in t["hovertemplate"] for t in specs[1]["data"])


def test_runs_table_shows_a_perplexity_as_it_is_and_sorts_it_lowest_first(make_run):
    make_run("run-accuracy", final_score=0.8125, best_score=0.8125)
    for run_id, ppl in (("run-ppl-high", 7.5), ("run-ppl-low", 5.25)):
        make_run(run_id, task="sst2").update_summary(metric="perplexity", final_score=ppl, best_score=ppl)
    at = open_page("runs")
    at.selectbox(key="runs_sort").set_value("final_score").run()
    table = at.dataframe[0].value
    final = dict(zip(table["run_id"], table["final"]))
    assert final == {"run-accuracy": 81.25, "run-ppl-high": 7.5, "run-ppl-low": 5.25}  # perplexity not ×100
    # best first in each run's own direction: 5.25 perplexity above 7.5
    order = table["run_id"].tolist()
    assert order.index("run-ppl-low") < order.index("run-ppl-high")


def test_runs_table_has_no_literal_none_and_counts_in_words(make_run):
    RunStore().enqueue(RunConfig(mode="lora"))  # queued: no score, no proxy, no device, no error yet
    at = open_page("runs")
    row = at.dataframe[0].value.iloc[0]
    assert row["status"] == "queued" and row["proxy"] == "" and row["error"] == "" and row["device"] == ""
    assert not any(str(v) == "None" for v in row.values)
    assert any(c.value.startswith("1 run · ") for c in at.caption), [c.value for c in at.caption]


def test_labels_of_copies_tell_them_apart_by_folder_not_by_repeating_the_seed():
    from dashboard.data import run_id_tail

    assert run_id_tail("results/gpu/lr-sweep/mrpc/lora-qv-r8/lr0.0005/seed0") == "lr0.0005/seed0"
    assert run_id_tail("20250101-000000-mrpc-lora-a1b2c3") == "a1b2c3"


def test_a_run_that_failed_before_training_does_not_blame_its_logging_interval(make_run):
    failed = make_run("nodata", status="failed", steps=10)
    failed.update_summary(step=0, error="DataError: no data for GLUE task 'mrpc'")
    (failed.path / "metrics.jsonl").write_text("")
    at = open_page("runs")
    at.selectbox(key="selected_run").set_value("nodata").run()
    captions = [c.value for c in at.caption]
    assert any("training never started" in c for c in captions), captions
    assert not any("logging interval" in c for c in captions)


def test_allocation_of_the_paper_sized_dynamic_run(make_run):
    make_run("dyn-24", n_layers=24, n_reallocations=100)
    at = open_page("allocation")
    heatmaps, timeline, scores = plotly_specs(at)
    lora, shortcut = heatmaps["data"]
    assert len(lora["y"]) == 24 and lora["x"] == ["query", "value"]
    assert shortcut["x"] == ["res_attn", "res_ffn", "cross_attn", "cross_ffn"]
    assert len(timeline["data"][0]["y"]) == 143
    assert {t["type"] for t in scores["data"]} == {"box"}
    assert any("100 reallocations" in c.value for c in at.caption)


def test_allocation_shows_how_much_a_dynamic_search_moves(make_run):
    record = make_run("dyn", n_reallocations=6)
    reallocs = record.reallocations()
    churn, drift = alloc.set_churn(reallocs), alloc.score_drift(reallocs)
    at = open_page("allocation")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {
        "Set changes": f"{churn['changes']} of 5",
        "Swapped per reallocation": f"{churn['mean_swapped']:.0%}",
        "Modules ever on": f"{churn['ever_enabled']} of {len(alloc.enable_frequency(reallocs))}",
        "Score drift on/off": f"{drift['on_over_off']:.2f}",
    }
    assert churn["changes"] > 0  # the synthetic search does move, so the numbers are not all zero


def test_allocation_of_a_static_run_has_no_churn(make_run):
    make_run("static", mode="static")
    assert not open_page("allocation").metric


def test_allocation_csv_and_png_downloads(make_run):
    make_run("dyn", n_reallocations=5)
    at = open_page("allocation")
    for chart in at.get("plotly_chart"):
        config = json.loads(chart.proto.config)
        assert config["toImageButtonOptions"]["format"] == "png"
        assert config["toImageButtonOptions"]["filename"].startswith("dyn-")


def test_allocation_without_runs():
    at = open_page("allocation")
    assert "No runs yet" in at.info[0].value


def test_allocation_of_a_queued_run_says_it_has_nothing_yet():
    RunStore().enqueue(RunConfig())
    at = open_page("allocation")
    assert "no selection yet" in at.info[0].value
    assert not at.get("plotly_chart")


# -- Compare --------------------------------------------------------------------------------------


def test_compare_opens_on_the_newest_experiment_then_a_sweep_at_configuration_level(make_run):
    make_run("sweep-a", proxy="grad_norm", sweep_id="sweep-1")
    make_run("sweep-b", proxy="snip", sweep_id="sweep-1")
    make_run("lonely", proxy="fisher")  # newer, not in the sweep: the user's own run opens first
    at = open_page("compare")
    assert at.selectbox(key="compare_experiment").value == "runs"
    assert at.multiselect(key="compare_runs").value == ["lonely"]
    at.selectbox(key="compare_experiment").set_value("sweep-1").run()
    assert sorted(at.multiselect(key="compare_runs").value) == ["sweep-a", "sweep-b"]
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["runs"]) == {1}
    assert sorted(table["config"]) == ["grad_norm", "snip"]  # named by what differs: the proxy
    specs = plotly_specs(at)
    heatmaps = [s for s in specs if any(t["type"] == "heatmap" and t.get("coloraxis") for t in s["data"])]
    assert len(heatmaps) == 2  # one figure per configuration, each with its LoRA and shortcut panels
    assert all(len(fig["data"]) == 2 for fig in heatmaps)
    assert sorted(fig["layout"]["title"]["text"] for fig in heatmaps) == ["grad_norm", "snip"]
    assert any(h.value == "Do the proxies agree?" for h in at.subheader)
    jaccard, spearman = specs[-2], specs[-1]
    assert jaccard["data"][0]["zmin"] == 0 and spearman["data"][0]["zmin"] == -1
    assert len(jaccard["data"][0]["z"]) == 2


def test_compare_says_why_a_constant_proxy_has_no_rank_correlation(make_run):
    for proxy in ("grad_norm", "snip", "constant"):
        make_run(f"p-{proxy}", proxy=proxy, sweep_id="proxies")
    at = open_page("compare")
    spearman = plotly_specs(at)[-1]
    assert spearman["data"][0]["zmin"] == -1 and len(spearman["data"][0]["z"]) == 2  # no blank row for constant
    assert any(c.value.startswith("Left out: constant: every module scores the same") for c in at.caption)


def test_compare_folds_seeds_into_configurations(make_run):
    make_run("old", proxy="snip")
    make_run("s0", proxy="grad_norm", seed=0, best_score=0.80)
    make_run("s1", proxy="grad_norm", seed=1, best_score=0.84)
    at = open_page("compare")
    assert sorted(at.multiselect(key="compare_runs").value) == ["old", "s0", "s1"]
    table = at.dataframe[0].value.set_index("config")
    assert len(table) == 2 and table.loc["grad_norm", "runs"] == 2
    assert table.loc["grad_norm", "best_score"].startswith("82.00 ± 2.83")  # GLUE points (×100)
    # the enable frequencies of a configuration are the mean over its seeds' runs
    fig = next(s for s in plotly_specs(at) if s["layout"].get("title", {}).get("text") == "grad_norm")
    assert all(0.0 <= v <= 1.0 for t in fig["data"] for row in t["z"] for v in row if v is not None)


def test_compare_switches_experiments(make_run):
    make_run("a1", sweep_id="sweep-old")
    make_run("a2", proxy="snip", sweep_id="sweep-old")
    make_run("b1", sweep_id="sweep-new")
    make_run("b2", proxy="snip", sweep_id="sweep-new")
    at = open_page("compare")
    assert sorted(at.multiselect(key="compare_runs").value) == ["b1", "b2"]
    at.selectbox(key="compare_experiment").set_value("sweep-old").run()
    assert sorted(at.multiselect(key="compare_runs").value) == ["a1", "a2"]


def test_compare_without_runs():
    at = open_page("compare")
    assert "No runs yet" in at.info[0].value


# -- the committed benchmark records ----------------------------------------------------------------


def test_every_page_opens_the_committed_records(tmp_path, monkeypatch):
    """The 173 records under data/results (old summaries, GPU records without weights) open on every
    page: each run on Runs and Allocation, a sweep's worth on Compare."""
    import shutil

    home = tmp_path / "committed"
    shutil.copytree(PROJECT_ROOT / "data" / "results", home / "results")
    monkeypatch.setenv("HETEROLORA_HOME", str(home))
    rows = RunStore(home).list_runs()
    assert len(rows) >= 170 and not [r.problem for r in rows if r.problem]
    at = open_page("runs")
    assert len(at.dataframe[0].value) == len(rows)
    for run in rows[::17]:  # a spread of them: every kind of row and task
        at.selectbox(key="selected_run").set_value(run.run_id).run()
        assert not at.exception, (run.run_id, [e.message for e in at.exception])
    at = open_page("allocation")
    for run in rows[::17]:
        at.selectbox(key="allocation_run").set_value(run.run_id).run()
        assert not at.exception, (run.run_id, [e.message for e in at.exception])
    at = open_page("compare")
    at.multiselect(key="compare_runs").set_value([r.run_id for r in rows[:12]]).run()
    assert not at.exception and len(at.dataframe[0].value) >= 1


# -- Runs at research scale: filters, search, grouping, sorting --------------------------------------


def test_runs_page_filters_searches_groups_and_sorts(home, make_run):
    make_run("mrpc-a", task="mrpc", seed=0, final_score=0.81, best_score=0.82)
    make_run("mrpc-b", task="mrpc", seed=1, proxy="snip", lr=1e-3, final_score=0.75, best_score=0.76)
    make_run("rte-a", task="rte", seed=0, mode="lora", final_score=0.55, best_score=0.56)
    at = open_page("runs")
    table = at.dataframe[0].value
    assert len(table) == 3
    # scores in GLUE points; the label names task and learning rate; the id is its own column
    assert table.set_index("run_id").loc["mrpc-a", "final"] == pytest.approx(81.0)
    assert table.set_index("run_id").loc["mrpc-b", "run"] == "mrpc · dynamic · snip · lr 1e-3 · seed 1"  # what differs
    assert table.set_index("run_id").loc["mrpc-b", "description"] == \
        "mrpc · dynamic · q,v + shortcuts · snip · r32 · 25% · lr 1e-3 · 100 steps · seed 1"
    assert set(table["lr"]) == {"5e-4", "1e-3"}

    at.multiselect(key="runs_task").set_value(["mrpc"]).run()
    assert sorted(at.dataframe[0].value["run_id"]) == ["mrpc-a", "mrpc-b"]
    assert any(c.value.startswith("2 of 3 runs") for c in at.caption)
    at.multiselect(key="runs_lr").set_value([1e-3]).run()
    assert at.dataframe[0].value["run_id"].tolist() == ["mrpc-b"]
    assert at.selectbox(key="selected_run").options == [f"{at.dataframe[0].value['run'].item()} — mrpc-b"]
    at.multiselect(key="runs_lr").set_value([]).run()
    at.multiselect(key="runs_task").set_value([]).run()
    at.text_input(key="runs_search").set_value("SNIP").run()
    assert at.dataframe[0].value["run_id"].tolist() == ["mrpc-b"]
    at.text_input(key="runs_search").set_value("no run is called this").run()
    assert at.dataframe[0].value.empty and any("No run matches" in i.value for i in at.info)
    assert not at.exception
    at.text_input(key="runs_search").set_value("").run()

    at.selectbox(key="runs_sort").set_value("final_score").run()
    assert at.dataframe[0].value["run_id"].tolist() == ["mrpc-a", "mrpc-b", "rte-a"]
    at.toggle(key="runs_descending").set_value(False).run()
    assert at.dataframe[0].value["run_id"].tolist() == ["rte-a", "mrpc-b", "mrpc-a"]
    at.toggle(key="runs_group").set_value(True).run()
    experiments, runs = at.dataframe[0].value, at.dataframe[1].value
    assert experiments["experiment"].tolist() == ["runs"] and experiments["runs"].tolist() == [3]
    assert experiments["best_final"].item() == pytest.approx(81.0)
    assert len(runs) == 3


def test_runs_page_filters_by_experiment_folder(home):
    from heterolora_testing.synthetic import write_many_runs

    write_many_runs(home, 30, experiments=3)
    at = open_page("runs")
    assert len(at.dataframe[0].value) == 30
    options = at.multiselect(key="runs_experiment").options
    assert {"results", "results/exp0", "results/exp1", "results/exp2"} <= set(options)
    at.multiselect(key="runs_experiment").set_value(["results/exp1"]).run()
    table = at.dataframe[0].value
    assert len(table) == 10 and set(table["experiment"]) == {"results/exp1"}
    at.multiselect(key="runs_experiment").set_value(["results"]).run()  # a folder keeps everything below it
    assert len(at.dataframe[0].value) == 30


def test_a_stale_filter_never_breaks_the_runs_page(home, make_run):
    make_run("keep", task="rte")
    gone = make_run("gone", task="mrpc")
    at = open_page("runs")
    at.multiselect(key="runs_task").set_value(["mrpc"]).run()
    assert at.dataframe[0].value["run_id"].tolist() == ["gone"]
    import shutil

    shutil.rmtree(gone.path)  # the only MRPC run disappears while the filter names MRPC
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.multiselect(key="runs_task").value == [] and at.dataframe[0].value["run_id"].tolist() == ["keep"]


# -- Results: configurations over seeds, a reference, paired differences ----------------------------


def _results_records(make_run):
    """Hand-made records: a reference (uniform LoRA, 80 / 82 / 84), a row 10 points worse on every
    seed (70 / 74 / 72), a row level with it (81 / 80 / 86), a single seed (90) and an RTE run."""
    for seed, final in enumerate([0.80, 0.82, 0.84]):
        make_run(f"ref-{seed}", mode="lora", rank=8, seed=seed, final_score=final, best_score=final + 0.01)
    for seed, final in enumerate([0.70, 0.74, 0.72]):
        make_run(f"worse-{seed}", seed=seed, final_score=final, best_score=final)
    for seed, final in enumerate([0.81, 0.80, 0.86]):
        make_run(f"level-{seed}", proxy="snip", seed=seed, final_score=final, best_score=final)
    make_run("single-0", proxy="fisher", seed=0, final_score=0.90, best_score=0.90)
    make_run("rte-0", task="rte", mode="lora", rank=8, seed=0, final_score=0.55, best_score=0.55)
    make_run("failed-0", proxy="synflow", seed=0, status="failed")


def _group_key(label_part: str) -> str:
    from heterolora_core.analysis import results
    from heterolora_core.analysis.labels import describe_config

    groups = results.group_by_config(RunStore().list_runs())
    return next(g.key for g in groups if label_part in describe_config(g.config, include_seed=False))


def test_results_groups_seeds_and_gives_verdicts_against_the_reference(home, make_run):
    _results_records(make_run)
    at = open_page("results")
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="results_reference").value == _group_key("mrpc · lora")  # plain LoRA by default
    table = at.dataframe[0].value.set_index("configuration")
    # best first; named by what differs among them (the task and device are the reference's)
    assert list(table.index) == ["dynamic · fisher · r32", "dynamic · snip · r32", "lora · r8", "dynamic · grad_norm · r32"]
    ref = table.loc["lora · r8"]
    assert (ref["final"], ref["ci"], ref["n_seeds"], ref["seeds"]) == ("82.00 ± 2.00", "[77.0, 87.0]", 3, "0, 1, 2")
    assert ref["best"] == pytest.approx(83.0) and ref["verdict"] == "reference" and ref["delta"] == "–"
    assert ref["description"] == "mrpc · lora · q,v + shortcuts · r8 · lr 5e-4 · 100 steps · CPU"
    worse = table.loc["dynamic · grad_norm · r32"]
    assert (worse["delta"], worse["verdict"]) == ("-10.00 [-15.0, -5.0]", "worse")
    level = table.loc["dynamic · snip · r32"]
    assert (level["delta"], level["verdict"]) == ("+0.33 [-4.8, 5.5]", "noise")
    single = table.loc["dynamic · fisher · r32"]
    assert (single["final"], single["delta"], single["verdict"]) == ("90.00", "+10.00", "n/a (1 seed)")

    # the forest plot holds every paired difference of the reference's task, in points
    (forest,) = plotly_specs(at)
    points = {y: x for trace in forest["data"] for x, y in zip(trace["x"], trace["y"])}
    assert points == pytest.approx({"dynamic · grad_norm · r32": -10.0, "dynamic · snip · r32": 0.01 / 3 * 100,
                                    "dynamic · fisher · r32": 10.0})
    verdicts = {t["name"] for t in forest["data"]}
    assert verdicts == {"worse", "noise", "n/a (1 seed)"}

    # one configuration against the reference, as metrics
    at.selectbox(key="results_focus").set_value(_group_key("grad_norm")).run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Final-epoch score"] == "72.00 ± 2.00 (n=3)" and metrics["Reference"] == "82.00 ± 2.00 (n=3)"
    assert metrics["Δ vs reference (95% interval)"] == "-10.00 [-15.0, -5.0]"
    assert any(c.value == "Verdict: **worse**" for c in at.caption)

    # every configuration, the other task's included, when asked
    at.toggle(key="results_comparable").set_value(False).run()
    table = at.dataframe[0].value.set_index("configuration")
    assert table.loc["rte · lora · r8", "verdict"] == "other task" and len(table) == 5


def test_results_against_another_reference_and_its_csv(home, make_run):
    from dashboard.components.formatting import results_csv_frame
    from heterolora_core.analysis import results
    from heterolora_core.analysis.labels import short_labels

    _results_records(make_run)
    at = open_page("results")
    at.selectbox(key="results_reference").set_value(_group_key("grad_norm")).run()
    table = at.dataframe[0].value.set_index("configuration")
    assert table.loc["lora · r8", ["delta", "verdict"]].tolist() == ["+10.00 [5.0, 15.0]", "better"]
    assert "Download results (CSV)" in [b.proto.label for b in at.get("download_button")]
    # what the button downloads: the engine's table in GLUE points, one row per configuration
    groups = results.group_by_config(RunStore().list_runs())
    labels = {k: v.short for k, v in short_labels({g.key: g.config for g in groups}, include_seed=False).items()}
    csv = results_csv_frame(results.results_table(groups, _group_key("grad_norm")), labels).set_index("configuration")
    row = csv.loc["mrpc · lora · r8"]
    assert row["final_mean"] == pytest.approx(82.0) and row["delta_mean"] == pytest.approx(10.0)
    assert row["seeds"] == "0,1,2" and row["verdict"] == "better" and row["runs"] == 3
    assert csv.columns[-1] == "key"


def test_results_keep_short_runs_out_and_devices_apart_unless_asked(home, make_run):
    for seed, final in enumerate([0.80, 0.82, 0.84]):
        make_run(f"cpu-{seed}", mode="lora", rank=8, seed=seed, final_score=final)
        make_run(f"gpu-{seed}", mode="lora", rank=8, seed=seed, final_score=final - 0.02, device="cuda")
    make_run("gpu-extra", mode="lora", rank=8, seed=3, final_score=0.8, device="cuda")
    make_run("short", seed=0, final_score=0.685, short_run=True)  # the Launch page's short run
    at = open_page("results")
    assert any("1 short run left out" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert table["n_seeds"].tolist() == [4] and table["description"].item().endswith("· GPU")  # the most runs
    assert not at.warning
    at.toggle(key="results_comparable").set_value(False).run()
    table = at.dataframe[0].value.set_index("configuration")
    cpu = table.loc["mrpc · lora · q,v + shortcuts · r8 · CPU"]
    assert cpu["verdict"] == "other device" and cpu["final"] == "82.00 ± 2.00"
    at.toggle(key="results_short").set_value(True).run()
    assert "dynamic · r32 · 200 dev rows · CPU · short run" in set(at.dataframe[0].value["configuration"])
    at.toggle(key="results_short").set_value(False).run()
    at.toggle(key="results_pool").set_value(True).run()
    pooled = at.dataframe[0].value
    assert len(pooled) == 1 and pooled["runs"].item() == 7 and pooled["n_seeds"].item() == 4
    assert any("1 configuration pool runs measured on different devices" in w.value for w in at.warning)


# -- Launch: honest run lengths ----------------------------------------------------------------------


def test_launch_estimates_the_run_time_from_finished_records(home, make_run):
    from dashboard.components.formatting import format_duration
    from heterolora_core.analysis.estimate import DEFAULT_SECONDS_PER_STEP, DEFAULT_STARTUP_SECONDS
    from heterolora_core.training.environment import resolve_device

    device = resolve_device("auto")
    at = open_page()  # no record yet: the stated default
    default = DEFAULT_STARTUP_SECONDS + 32 * DEFAULT_SECONDS_PER_STEP[device]
    assert {m.label: m.value for m in at.metric}["Estimated run time"] == f"≈ {format_duration(default)}"
    assert any(f"no finished {device} run in the store" in c.value for c in at.caption)
    # a finished dynamic run of the embedded model: 40 steps in 60-65 s (write_synthetic_run), no startup stated
    record = make_run("measured", steps=40)
    record.update_summary(device=device)
    wall = record.raw_summary().wall_seconds
    st.cache_data.clear()
    at = open_page()
    expected = DEFAULT_STARTUP_SECONDS + 32 * wall / 40  # same model, method and batch as the short run
    caption = next(c.value for c in at.caption if "steps ×" in c.value)
    assert f"32 steps × {wall / 40:.2f} s" in caption and "measured by 1 finished" in caption
    assert {m.label: m.value for m in at.metric}["Estimated run time"] == f"≈ {format_duration(expected)}"


def test_the_short_run_says_its_score_means_nothing(home):
    import os

    at = open_page()
    if not os.environ.get("GLUE_DIR"):
        pytest.skip("GLUE_DIR is not set: the majority rate needs the task's data")
    (info,) = [i.value for i in at.info if "short run" in i.value]
    assert "where the budget goes" in info and "majority-class rate of the 200 dev rows" in info
    assert "(68.5%; 68.4% over the whole dev split)" in info
    at.radio(key="length").set_value("full run (the grid's)").run()
    assert not [i for i in at.info if "short run" in i.value]
    assert any("690 steps ×" in c.value for c in at.caption)  # 3 epochs of MRPC's 3,667 rows at batch 16


def test_the_full_run_preset_is_the_grids_settings(home):
    from benchmarks.grid.rows import SPEC, Settings

    at = open_page()
    at.radio(key="length").set_value("full run (the grid's)").run()
    at.button(key="launch").click().run()
    (folder,) = run_dirs(home)
    config = json.loads((folder / "config.json").read_text())
    grid = {**SPEC.base, **Settings().to_dict()}
    for key in ("epochs", "lr", "batch_size", "max_length", "train_limit", "dev_limit", "max_steps"):
        assert config[key] == grid[key], key
    assert config["realloc_every"] == 0.2


def test_custom_run_length_sets_the_learning_rate(home):
    at = open_page()
    at.radio(key="length").set_value("custom").run()
    at.number_input(key="lr").set_value(1e-3).run()
    at.button(key="launch").click().run()
    (folder,) = run_dirs(home)
    assert json.loads((folder / "config.json").read_text())["lr"] == 1e-3


# -- ranks: a rank-allocating method's records ------------------------------------------------------


def test_allocation_shows_ranks_per_layer_and_over_reallocations(make_run):
    record = make_run("ranked", n_reallocations=4, rank=16, ranks=True)
    final = alloc.rank_frame(record.reallocations())
    at = open_page("allocation")
    assert not at.exception, [e.message for e in at.exception]
    assert any(s.value == "Rank per layer (final allocation)" for s in at.subheader)
    heatmaps, timeline, _ = plotly_specs(at)
    lora, shortcut = heatmaps["data"]
    axis = heatmaps["layout"]["coloraxis"]
    assert (axis["cmin"], axis["cmax"]) == (0, final["rank"].max())
    grid = alloc.rank_grid(final, "lora", 6)
    assert lora["z"] == [[None if v != v else v for v in row] for row in grid.to_numpy().tolist()]
    assert len(timeline["data"]) == 1 and len(timeline["data"][0]["y"]) == len(final)
    assert "Download ranks (CSV)" in [b.proto.label for b in at.get("download_button")]


def test_compare_puts_rank_maps_side_by_side_with_readable_columns(make_run):
    make_run("r1", n_reallocations=3, rank=16, ranks=True, sweep_id="ranks")
    make_run("r2", n_reallocations=3, rank=8, ranks=True, seed=1, sweep_id="ranks")
    at = open_page("compare")
    table = at.dataframe[0].value
    assert "rank" in table.columns and "n_seeds" in table.columns
    assert any(s.value == "Rank per layer (final allocation, mean over seeds)" for s in at.subheader)
    ranks = [s for s in plotly_specs(at)
             if s["layout"].get("coloraxis", {}).get("colorbar", {}).get("title", {}).get("text", "").startswith("rank")]
    assert len(ranks) == 2 and all(len(fig["data"]) == 2 for fig in ranks)  # 2 configurations x (LoRA, shortcut)
    assert {fig["layout"]["coloraxis"]["cmin"] for fig in ranks} == {0}
    assert len({fig["layout"]["coloraxis"]["cmax"] for fig in ranks}) == 1  # one scale for both


def test_compare_names_the_differing_fields_readably(make_run):
    make_run("a", lr=5e-4, sweep_id="lr")
    make_run("b", lr=1e-3, sweep_id="lr")
    at = open_page("compare")
    table = at.dataframe[0].value
    assert "learning rate" in table.columns and sorted(table["learning rate"]) == ["1e-3", "5e-4"]
    assert set(table["n_seeds"]) == {1}


def _plotly_values(array):
    """A Plotly spec's array (a list, or the typed-array encoding of a numpy array)."""
    import base64

    import numpy as np

    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def test_metric_curves_are_in_glue_points(make_run):
    record = make_run("curves", status="done")
    evals = [m["eval_accuracy"] for m in record.metrics() if "eval_accuracy" in m]
    at = open_page("runs")
    loss, metric = plotly_specs(at)
    assert _plotly_values(metric["data"][0]["y"]) == pytest.approx([100 * a for a in evals])
    assert metric["layout"]["yaxis"]["title"]["text"] == "accuracy (×100)"
    assert max(_plotly_values(loss["data"][0]["y"])) < 1.5  # the loss is not a score


def test_the_launch_page_queues_the_allocation_study(home):
    at = open_page()
    at.multiselect(key="lora_targets").set_value(["q", "k", "v", "o", "ffn_in", "ffn_out"]).run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.button(key="launch_study").label == "Queue the study (35 runs)"
    assert any("budget **165,888**" in m.value for m in at.markdown), [m.value for m in at.markdown]
    at.number_input(key="study_rank").set_value(3).run()
    assert any("even uniform rank" in w.value for w in at.warning) and at.button(key="launch_study").disabled
    at.number_input(key="study_rank").set_value(4).run()
    at.number_input(key="study_seeds").set_value(2).run()
    at.button(key="launch_study").click().run()
    runs = RunStore().list_runs()
    assert len(runs) == 14 and {r.sweep_id for r in runs} == {runs[0].sweep_id}
    assert runs[0].sweep_id.startswith("study-mrpc-")
    assert sorted({r.config.mode for r in runs}) == ["lora", "rank_inverted", "rank_layers", "rank_random", "rank_static"]


def test_results_show_a_studys_verdict(home):
    from heterolora_testing.synthetic import write_synthetic_run

    finals = {"U": [0.80, 0.82, 0.84], "A": [0.75, 0.78, 0.78], "R": [0.76, 0.77, 0.79]}
    modes = {"U": ("lora", 4, None), "A": ("rank_static", 32, 999), "R": ("rank_random", 32, 999)}
    for arm, scores in finals.items():
        for seed, final in enumerate(scores):
            mode, rank, budget = modes[arm]
            record = write_synthetic_run(home / "results" / "study" / arm / f"seed{seed}", mode=mode, rank=rank, seed=seed,
                                         final_score=final, sweep_id="study-mrpc-test", ranks=mode != "lora",
                                         shortcuts=False, n_reallocations=1)
            config = json.loads((record.path / "config.json").read_text())
            config["budget_params"] = budget
            (record.path / "config.json").write_text(json.dumps(config))
            record.update_summary(trainable_params=999)
    at = open_page("results")
    assert not at.exception, [e.message for e in at.exception]
    assert any(h.value == "Does allocation pay here?" for h in at.subheader)
    assert at.error[0].value.startswith("On this model and task, the allocation lost to uniform LoRA by -5.00 points")
    comparisons = next(d.value for d in at.dataframe if "comparison" in d.value.columns)
    # the numbers and the verdict come before the prose, so a narrow window still shows them
    assert list(comparisons.columns) == ["comparison", "Δ (95% interval)", "verdict", "seeds", "what"]
    comparisons = comparisons.set_index("comparison")
    assert comparisons.loc["A − U", "verdict"] == "worse" and comparisons.loc["A − T", "verdict"] == "not run"
    # where A's ranks went: the mean over A's three seeds (and only A's: R's random ranks differ)
    from heterolora_core.analysis import allocation as alloc
    from heterolora_core.analysis.study import rank_placement
    from heterolora_core.records.record import read_reallocations

    frames = [alloc.rank_frame(read_reallocations(home / "results" / "study" / "A" / f"seed{s}" / "reallocations.jsonl").lines)
              for s in range(3)]
    expected = rank_placement(frames)
    share = next(c.value for c in at.caption if c.value.startswith("Share of A's rank by kind: "))
    assert share.startswith(f"Share of A's rank by kind: {expected.shares_text('kind')} (uniform LoRA: ")
    assert abs(sum(expected.by_kind) - 100) < 1e-9 and expected.seeds == 3
