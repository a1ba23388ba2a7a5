"""Sweep files (heterolora_core.sweeps): what a file names, hand-counted; resuming (finished runs
skipped, a failed one rerun, queued ones left alone); malformed files refused in one line with
nothing queued, through the Python API and through ``python -m heterolora_core sweep``. Anything
that trains is the stand-in trainer (``heterolora_testing.synthetic``)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import FAKE_TRAIN_CMD, PROJECT_ROOT
from heterolora_core.records import worker as worker_mod
from heterolora_core.records.record import RunRecord
from heterolora_core.records.store import RunStore
from heterolora_core.sweeps import (drain, expand, form_sweep, load_sweep, parse_sweep, prepare, proxy_sweep,
                                    queue_sweep, read_sweep, state_counts, submit)
from heterolora_core.training.run_config import RunConfig

HAND_COUNTED = """\
sweep: hand-count
folder: "results/{sweep}/{task}/{row}/lr{lr}-seed{seed}"
base: {max_steps: 3, train_limit: 32, lr: 0.0005}
axes:
  task: [mrpc, rte]
  seed: [0, 1, 2]
order: [task, row, seed]
rows:
  - {row: qv8, label: "uniform q,v r8", mode: lora, rank: 8, shortcuts: false}
  - {row: dyn, mode: dynamic, proxy: snip, rank: 32, only: {task: [mrpc]}}
  - {row: stat, mode: static, rank: 16, lr: 0.001, only: {seed: [0, 2], task: [rte]}, report: {id: "3"}}
"""


@pytest.fixture
def fake_trainer(monkeypatch):
    monkeypatch.setenv(worker_mod.TRAIN_CMD_ENV, FAKE_TRAIN_CMD)
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.02")


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(args, home, timeout=300):
    env = {**os.environ, "HETEROLORA_HOME": str(home), worker_mod.TRAIN_CMD_ENV: FAKE_TRAIN_CMD,
           "HETEROLORA_FAKE_STEP_SECONDS": "0.02"}
    return subprocess.run([sys.executable, "-m", "heterolora_core", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def folders_under(home):
    """Every run folder of the home (the store's own files are not runs)."""
    return sorted(p.parent.relative_to(home).as_posix() for p in home.rglob("config.json"))


# -- what a sweep names ---------------------------------------------------------------------------


def test_a_sweep_file_expands_to_exactly_the_runs_it_names(tmp_path):
    runs = expand(load_sweep(write(tmp_path, HAND_COUNTED)))
    # qv8: 2 tasks x 3 seeds = 6; dyn: MRPC only x 3 seeds = 3; stat: RTE only x seeds 0 and 2 = 2
    assert len(runs) == 6 + 3 + 2
    assert [r.folder for r in runs] == [  # order: task outermost, then row, then seed
        "results/hand-count/mrpc/qv8/lr0.0005-seed0", "results/hand-count/mrpc/qv8/lr0.0005-seed1",
        "results/hand-count/mrpc/qv8/lr0.0005-seed2",
        "results/hand-count/mrpc/dyn/lr0.0005-seed0", "results/hand-count/mrpc/dyn/lr0.0005-seed1",
        "results/hand-count/mrpc/dyn/lr0.0005-seed2",
        "results/hand-count/rte/qv8/lr0.0005-seed0", "results/hand-count/rte/qv8/lr0.0005-seed1",
        "results/hand-count/rte/qv8/lr0.0005-seed2",
        "results/hand-count/rte/stat/lr0.001-seed0", "results/hand-count/rte/stat/lr0.001-seed2",  # the row's own lr
    ]
    by_row = {r.row.row: r for r in runs}
    assert by_row["qv8"].row.label == "uniform q,v r8" and by_row["stat"].row.report == {"id": "3"}
    assert (by_row["dyn"].config.mode, by_row["dyn"].config.proxy, by_row["dyn"].config.rank) == ("dynamic", "snip", 32)
    assert by_row["qv8"].config.shortcuts is False and by_row["dyn"].config.shortcuts is True  # RunConfig default
    assert {r.config.max_steps for r in runs} == {3} and {r.config.train_limit for r in runs} == {32}
    assert runs[4].values == {"task": "mrpc", "seed": 1}


def test_repeat_axis_and_default_order_and_no_rows(tmp_path):
    spec = read_sweep("sweep: rep\nfolder: 'runs/rep/{proxy}/{repeat}'\nbase: {max_steps: 2}\n"
                      "axes: {proxy: [snip, fisher], repeat: 2}\n")
    runs = expand(spec)
    assert spec.order == ("proxy", "repeat", "row")
    assert [r.folder for r in runs] == ["runs/rep/snip/0", "runs/rep/snip/1", "runs/rep/fisher/0", "runs/rep/fisher/1"]
    assert {r.row.row for r in runs} == {"all"}
    # the same sweep as JSON names the same runs
    same = read_sweep(json.dumps({"sweep": "rep", "folder": "runs/rep/{proxy}/{repeat}", "base": {"max_steps": 2},
                                  "axes": {"proxy": ["snip", "fisher"], "repeat": 2}}), "rep.json")
    assert [(r.folder, r.config) for r in expand(same)] == [(r.folder, r.config) for r in runs]


def test_a_sweep_written_back_names_the_same_runs(tmp_path):
    spec = load_sweep(write(tmp_path, HAND_COUNTED))
    again = read_sweep(spec.to_yaml())
    assert [(r.folder, r.config, r.row.label) for r in expand(again)] == [(r.folder, r.config, r.row.label) for r in expand(spec)]
    grid = load_sweep(PROJECT_ROOT / "benchmarks" / "grids" / "quality.yaml")
    assert [(r.folder, r.config) for r in expand(read_sweep(grid.to_yaml()))] == [(r.folder, r.config) for r in expand(grid)]


def test_the_launch_pages_sweeps_are_sweep_specs():
    form = form_sweep("page", RunConfig(max_steps=3, match_uniform_rank=8), {"enable_ratio": "0.25, 0.5", "seed": "0,1,0"})
    runs = expand(form)
    assert [(r.config.enable_ratio, r.config.seed) for r in runs] == [(0.25, 0), (0.25, 1), (0.5, 0), (0.5, 1)]
    assert {r.config.match_uniform_rank for r in runs} == {None}  # the swept ratio is the budget
    ranked = expand(form_sweep("page", RunConfig(mode="rank_static", rank=16, max_steps=3, budget_params=9 * 4 * 768),
                               {"match_uniform_rank": "2, 4"}))
    assert [(r.config.match_uniform_rank, r.config.budget_params) for r in ranked] == [(2, None), (4, None)]
    assert [r.config.budget().params for r in expand(form_sweep(
        "page", RunConfig(mode="rank_static", rank=16, max_steps=3, match_uniform_rank=8),
        {"budget_params": "6912, 13824"}))] == [6912, 13824]
    proxies = expand(proxy_sweep(RunConfig(max_steps=3), ["grad_norm", "snip"], [0, 13]))
    assert [(r.config.seed, r.config.proxy) for r in proxies] == [(0, "grad_norm"), (0, "snip"), (13, "grad_norm"), (13, "snip")]


# -- resuming -------------------------------------------------------------------------------------


def test_a_rerun_skips_finished_runs_and_reruns_a_failed_one(home, tmp_path, fake_trainer):
    store = RunStore()
    path = write(tmp_path, HAND_COUNTED)
    spec, planned = prepare(store, path)
    assert state_counts(planned) == {"todo": 11, "rerun": 0, "busy": 0, "done": 0}
    assert len(submit(store, planned, spec.sweep)) == 11
    _, again = prepare(store, path)  # queued, not trained yet: left alone
    assert state_counts(again) == {"todo": 0, "rerun": 0, "busy": 11, "done": 0}
    assert submit(store, again, spec.sweep) == []
    assert drain(store, spec.sweep, slots=1, log=lambda _: None) == 0
    failed = store.home / "results/hand-count/rte/stat/lr0.001-seed2"
    finished = store.home / "results/hand-count/mrpc/dyn/lr0.0005-seed1"
    stamp = (finished / "summary.json").stat().st_mtime_ns
    RunRecord(failed).update_summary(status="failed", error="lost on purpose")
    _, third = prepare(store, path)
    assert state_counts(third) == {"todo": 0, "rerun": 1, "busy": 0, "done": 10}
    (record,) = submit(store, third, spec.sweep)
    assert record.path == failed and record.raw_summary().status == "queued"  # its folder replaced
    assert drain(store, spec.sweep, slots=1, log=lambda _: None) == 0
    assert RunRecord(failed).raw_summary().status == "done"
    assert (finished / "summary.json").stat().st_mtime_ns == stamp  # a finished run is not touched
    assert len(folders_under(home)) == 11


def test_without_a_folder_template_runs_are_known_by_sweep_id_and_settings(home, fake_trainer):
    store = RunStore()
    spec = form_sweep("page-resume", RunConfig(max_steps=3), {"seed": "0, 1, 2"})
    assert len(queue_sweep(store, spec)) == 3
    assert queue_sweep(store, spec) == []  # queued: left alone
    assert drain(store, spec.sweep, slots=1, log=lambda _: None) == 0
    assert queue_sweep(store, spec) == []  # done: skipped
    wider = form_sweep("page-resume", RunConfig(max_steps=3), {"seed": "0, 1, 2, 3"})
    (new,) = queue_sweep(store, wider)  # only the new seed
    assert new.config()["seed"] == 3
    assert len(queue_sweep(store, form_sweep("another-id", RunConfig(max_steps=3), {"seed": "0"}))) == 1


def test_a_finished_run_with_other_settings_in_a_folder_is_refused(home, tmp_path, fake_trainer):
    store = RunStore()
    path = write(tmp_path, HAND_COUNTED)
    spec, planned = prepare(store, path)
    submit(store, planned, spec.sweep)
    drain(store, spec.sweep, slots=1, log=lambda _: None)
    changed = write(tmp_path, HAND_COUNTED.replace("train_limit: 32", "train_limit: 48"))
    with pytest.raises(ValueError, match="holds a finished run with other settings .*train_limit 32 -> 48"):
        prepare(store, changed)


def test_sweep_wait_from_the_command_line_resumes(home, tmp_path):
    path = write(tmp_path, HAND_COUNTED)
    out = cli(["sweep", str(path), "--home", str(home), "--wait"], home)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0] == "sweep hand-count: 11 run(s) — 11 todo"
    # columns as wide as their widest cell: rows qv8/dyn/stat, tasks mrpc/rte, modes lora/dynamic/static
    assert "  row qv8   mrpc  lora       3 run(s)       73,728 trainable" in out.stdout
    assert "  row dyn   mrpc  dynamic    3 run(s)" in out.stdout
    assert "queued 11 run(s) under experiment hand-count" in out.stdout and "sweep hand-count: 11 done" in out.stdout
    RunRecord(home / "results/hand-count/mrpc/qv8/lr0.0005-seed1").update_summary(status="cancelled")
    out = cli(["sweep", str(path), "--home", str(home), "--wait"], home)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0] == "sweep hand-count: 11 run(s) — 1 rerun, 10 done"
    assert "queued 1 run(s) under experiment hand-count" in out.stdout
    assert {r.status for r in RunStore(home).list_runs()} == {"done"}


def test_sigterm_stops_sweep_wait_and_starts_no_other_worker(home, tmp_path):
    """SIGTERM to ``sweep --wait`` stops its worker (the running run fails, saying why), exits 143
    and leaves the rest queued: it neither waits on nor starts another worker."""
    import signal
    import time

    from cli_helpers import wait_for

    path = write(tmp_path, HAND_COUNTED)
    env = {**os.environ, "HETEROLORA_HOME": str(home), worker_mod.TRAIN_CMD_ENV: FAKE_TRAIN_CMD,
           "HETEROLORA_FAKE_STEP_SECONDS": "2.0"}
    proc = subprocess.Popen([sys.executable, "-m", "heterolora_core", "sweep", str(path), "--wait"], cwd=PROJECT_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        store = RunStore(home)
        wait_for(lambda: any(r.status == "running" for r in store.list_runs()), 60, "a running run")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in out and "sweep hand-count: stopped; its queued runs stay queued" in out
    time.sleep(1.0)  # a worker started by mistake would have claimed a run by now
    assert worker_mod.worker_pid(home) is None
    statuses = sorted(r.status for r in RunStore(home).list_runs())
    assert statuses == ["failed"] + ["queued"] * 10, statuses
    failed = next(r for r in RunStore(home).list_runs() if r.status == "failed")
    assert "the worker was stopped (SIGTERM)" in (failed.summary.error or "")


# -- malformed sweep files --------------------------------------------------------------------------

MALFORMED = [
    ("unknown-top-key", HAND_COUNTED + "colour: blue\n", "sweep.yaml: unknown key 'colour'"),
    ("unknown-base-field", HAND_COUNTED.replace("lr: 0.0005}", "lr: 0.0005, rnak: 3}"),
     "sweep.yaml: base: not a run setting 'rnak'"),
    ("unknown-row-field", HAND_COUNTED.replace("shortcuts: false}", "shortcut: false}"),
     "sweep.yaml: row 1: not a run setting 'shortcut'"),
    ("empty-axis", HAND_COUNTED.replace("seed: [0, 1, 2]", "seed: []"),
     "sweep.yaml: axis 'seed' must be a non-empty list of values"),
    ("rank-0", HAND_COUNTED.replace("rank: 16", "rank: 0"),
     "row stat (task=rte, seed=0): rank must be at least 1 (got 0)"),
    ("unknown-proxy", HAND_COUNTED.replace("proxy: snip", "proxy: snipp"),
     "row dyn (task=mrpc, seed=0): unknown proxy 'snipp'; choose from"),
    ("duplicate-value", HAND_COUNTED.replace("seed: [0, 1, 2]", "seed: [0, 1, 1]"),
     "sweep.yaml: axis 'seed' lists 1 twice"),
    ("only-unknown-axis", HAND_COUNTED.replace("only: {task: [mrpc]}", "only: {model: [x]}"),
     "sweep.yaml: row dyn: 'only' restricts an axis to a non-empty list; 'model' is not one"),
    ("folder-variable", HAND_COUNTED.replace("seed{seed}", "seed{sede}"),
     "folder template 'results/{sweep}/{task}/{row}/lr{lr}-seed{sede}': unknown variable 'sede'"),
    ("folder-collision", HAND_COUNTED.replace("-seed{seed}", ""),
     "the folder template gives two runs the same folder"),
    ("not-yaml", "sweep: [unclosed\n", "sweep.yaml is not valid YAML:"),
    ("not-a-mapping", "- just\n- a list\n", "sweep.yaml: a sweep file holds a mapping"),
]


@pytest.mark.parametrize("case, text, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_sweep_file_is_one_line_and_queues_nothing(home, tmp_path, case, text, message):
    store = RunStore()
    with pytest.raises(ValueError) as info:
        prepare(store, write(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert store.list_runs() == [] and folders_under(home) == []


@pytest.mark.parametrize("case", ["unknown-top-key", "empty-axis", "rank-0", "unknown-proxy"])
def test_a_malformed_sweep_file_on_the_command_line_exits_2_with_one_error_line(home, tmp_path, case):
    text, message = next((t, m) for c, t, m in MALFORMED if c == case)
    out = cli(["sweep", str(write(tmp_path, text)), "--home", str(home), "--wait"], home)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert RunStore(home).list_runs() == [] and folders_under(home) == []


def test_a_run_the_launch_checks_refuse_is_one_line_before_anything_is_queued(home, tmp_path):
    """Past the file's own checks, every run goes through the launch checks (the model, the budget)
    before the first is queued: a budget that enables nothing in one row queues no row."""
    text = HAND_COUNTED.replace("rank: 16,", "rank: 16, enable_ratio: 0.01,")
    out = cli(["sweep", str(write(tmp_path, text)), "--home", str(home)], home)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("error: row stat (task=rte, seed=0): ") and "enables nothing" in out.stderr
    assert RunStore(home).list_runs() == [] and folders_under(home) == []


def test_the_page_sweeps_refuse_bad_axes_in_one_line():
    for axes, message in [({}, "choose at least one setting to sweep"),
                          ({"seed": " , "}, "seed: give one or more comma-separated values"),
                          ({"rank": "8, 1.5"}, "rank r: '1.5' is not a whole number"),
                          ({"lr": "inf"}, "learning rate: 'inf' is not a finite number"),
                          ({"colour": "red"}, "'colour' cannot be swept here"),
                          ({"enable_ratio": "0.1", "match_uniform_rank": "8"}, "sweep one budget"),
                          ({"budget_params": "6912", "enable_ratio": "0.5"}, "sweep one budget")]:
        with pytest.raises(ValueError, match=message):
            form_sweep("page", RunConfig(), axes)
    with pytest.raises(ValueError, match="uniform LoRA uses no proxy or budget: sweeping proxy"):
        form_sweep("page", RunConfig(mode="lora"), {"proxy": "snip, fisher"})
    with pytest.raises(ValueError, match="'sweep' must be an id"):
        form_sweep("no spaces please", RunConfig(), {"seed": "0"})
    with pytest.raises(ValueError, match="row all names the same run twice"):
        expand(parse_sweep({"sweep": "dup", "axes": {"device": ["cpu", "auto"]}}))
