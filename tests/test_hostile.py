"""Hostile input, one test (or group) per finding of the reliability and security review: nothing
outside the data home is touched, no launched run is lost, no bad record takes anything down, only
the project's own processes are signalled, run sizes are bounded, numbers must be numbers."""
from __future__ import annotations

import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from cli_helpers import REPO, cli_env, needs_glue, run_cli
from heterolora_core.records.processes import process_alive, process_started_at
from heterolora_core.records.record import ReallocationLine, RunRecord, RunSummary
from heterolora_core.records.store import RunStore, StoreError
from heterolora_core.records.worker import TRAIN_CMD_ENV, Worker
from heterolora_core.search.reallocator import ReallocationSchedule
from heterolora_core.training.run_config import RunConfig

APP = str(REPO / "dashboard" / "app.py")
FAKE_TRAIN = f"{sys.executable} -m heterolora_testing.synthetic train"


@pytest.fixture
def app_env(home, monkeypatch):
    monkeypatch.setenv("HETEROLORA_DASHBOARD_WORKER", "0")
    st.cache_data.clear()
    st.cache_resource.clear()
    return home


def open_page(page: str | None = None, run_select: tuple[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90).run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    if run_select:
        at.selectbox(key=run_select[0]).set_value(run_select[1]).run()
    return at


def assert_pages_work(home: Path, run_id: str) -> None:
    """Every page opens (the damaged run selected where a page selects runs) without an exception."""
    for page, select in (("runs", ("selected_run", run_id)), ("allocation", ("allocation_run", run_id)),
                         ("compare", None), ("launch", None)):
        at = open_page(page, select)
        assert not at.exception, (page, [e.message for e in at.exception])
    at = open_page("compare")
    at.multiselect(key="compare_runs").set_value([run_id]).run()
    assert not at.exception, [e.message for e in at.exception]


# -- 1. nothing outside the data home is deleted ----------------------------------------------------

def test_delete_never_leaves_the_data_home(home, make_run, tmp_path):
    outside = tmp_path / "precious"
    RunRecord.create(outside, {"task": "mrpc", "mode": "lora"}, status="done")
    (outside / "keep.txt").write_text("mine")
    (home / "runs").mkdir(exist_ok=True)
    (home / "runs" / "evil").symlink_to(outside, target_is_directory=True)
    make_run("ordinary")
    store = RunStore()
    rows = {r.run_id: r for r in store.list_runs()}
    assert rows["evil"].is_link and not rows["ordinary"].is_link  # listed, as what it is
    with pytest.raises(StoreError, match="symbolic link"):
        store.delete("evil")
    for hostile in ("../../precious", str(outside), "/", "..", "runs/../../precious"):
        store.delete(hostile)  # not an indexed run id: nothing to do
    assert (outside / "keep.txt").read_text() == "mine" and (outside / "config.json").is_file()
    store.delete("ordinary")
    assert not (home / "runs" / "ordinary").exists()


def test_a_symlinked_run_cannot_be_deleted_from_the_runs_page(app_env, make_run, tmp_path):
    outside = tmp_path / "elsewhere"
    RunRecord.create(outside, {"task": "mrpc", "mode": "lora"}, status="done")
    (app_env / "runs").mkdir(exist_ok=True)
    (app_env / "runs" / "evil").symlink_to(outside, target_is_directory=True)
    at = open_page("runs", ("selected_run", "evil"))
    assert at.button(key="delete").disabled
    assert outside.is_dir()


# -- 2. no launched run drops out of the queue ------------------------------------------------------

ENQUEUER = """
import sys
from heterolora_core.records.store import RunStore
store = RunStore(sys.argv[1])
for i in range(int(sys.argv[2])):
    store.enqueue({"task": "mrpc", "mode": "lora", "seed": i, "max_steps": 1, "train_limit": 16})
"""
SYNCER = """
import sys, time
from heterolora_core.records.store import RunStore
store = RunStore(sys.argv[1])
deadline = time.time() + float(sys.argv[2])
while time.time() < deadline:
    store.sync()
"""


@pytest.mark.slow
def test_concurrent_enqueue_and_sync_train_every_run_exactly_once(home, monkeypatch):
    """Before the fix, a sync between another process's folder write and its index insert dropped
    the run for ever (4 of 40 here). Now 4 enqueuers x 10 runs beside 2 busy syncers: all 40 train,
    each exactly once."""
    syncers = [subprocess.Popen([sys.executable, "-c", SYNCER, str(home), "12"]) for _ in range(2)]
    enqueuers = [subprocess.Popen([sys.executable, "-c", ENQUEUER, str(home), "10"]) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in enqueuers + syncers)
    store = RunStore()
    assert len(store.queued()) == 40
    monkeypatch.setenv(TRAIN_CMD_ENV, FAKE_TRAIN)
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.01")
    Worker(home, slots=2, poll=0.05, stop_when_idle=True, idle_exit=None, log=lambda _: None).serve()
    runs = store.list_runs()
    assert len(runs) == 40 and {r.status for r in runs} == {"done"}
    for run in runs:  # the stand-in trainer prints one line per start
        assert (run.path / "train.log").read_text().count("fake training") == 1, run.run_id
    assert store.queued() == []


# -- 3. and 4. a corrupt record takes nothing down -------------------------------------------------

def _corrupt(path: Path, how: str, rng: random.Random) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: max(1, len(data) // 2)])
    elif how == "random bytes":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(400)))
    elif how == "missing":
        path.unlink()
    elif how == "wrong types":
        if path.suffix == ".jsonl":
            path.write_text(json.dumps({"step": "x", "scores": [1, 2], "enabled": 5, "loss": "y"}) + "\n" +
                            json.dumps({"step": -3, "scores": {"layer.0.lora.q": "high"}, "enabled": [1]}) + "\n")
        else:
            path.write_text(json.dumps({key: {"not": "this"} for key in json.loads(path.read_text())}))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["config.json", "summary.json", "metrics.jsonl", "reallocations.jsonl"])
@pytest.mark.parametrize("how", ["truncated", "random bytes", "missing", "wrong types"])
def test_any_corruption_of_any_record_file(app_env, make_run, name, how):
    make_run("healthy", n_reallocations=3)
    damaged = make_run("damaged", n_reallocations=3)
    _corrupt(damaged.path / name, how, random.Random(f"{name}/{how}"))
    store = RunStore()
    rows = {r.run_id: r for r in store.list_runs()}
    assert set(rows) == {"healthy", "damaged"} and rows["healthy"].problem is None
    if name in ("config.json", "summary.json"):
        assert rows["damaged"].problem or rows["damaged"].status == "failed"
    listed = run_cli("runs", "--home", str(app_env), env=cli_env(app_env), timeout=120)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert_pages_work(app_env, "damaged")


def test_every_summary_field_of_the_wrong_type_is_dropped_and_named(home, make_run):
    record = make_run("typed")
    for field_name in RunSummary.field_names():
        data = json.loads((record.path / "summary.json").read_text())
        data[field_name] = [["wrong"]]  # no field takes a list of lists
        (record.path / "summary.json").write_text(json.dumps(data))
        summary = record.raw_summary()
        assert any(field_name in p for p in summary.problems), field_name
        assert summary.status in ("done", "failed")
        RunStore().list_runs()  # the store lists it


def test_a_yesterday_created_at_takes_nothing_down(app_env, make_run, monkeypatch):
    """The review's case: one wrong-typed field in one summary broke every page, ``runs`` and the
    worker, so no queued run ever trained."""
    bad = make_run("bad")
    data = json.loads((bad.path / "summary.json").read_text())
    data["created_at"] = "yesterday"
    (bad.path / "summary.json").write_text(json.dumps(data))
    store = RunStore()
    queued = store.enqueue({"task": "mrpc", "mode": "lora", "max_steps": 2})
    assert "created_at" in {r.run_id: r for r in store.list_runs()}["bad"].problem
    assert run_cli("runs", "--home", str(app_env), env=cli_env(app_env), timeout=120).returncode == 0
    monkeypatch.setenv(TRAIN_CMD_ENV, FAKE_TRAIN)
    Worker(app_env, poll=0.05, stop_when_idle=True, idle_exit=None, log=lambda _: None).serve()
    assert queued.summary().status == "done"
    assert_pages_work(app_env, "bad")


def test_reallocation_lines_of_the_wrong_shape_are_skipped():
    assert ReallocationLine.from_dict({"step": "x", "scores": [1, 2], "enabled": 5}) is None
    line = ReallocationLine.from_dict({"step": 3, "scores": {"a": 1.0, "b": "high", "c": float("nan")}, "enabled": ["a"]})
    assert line.scores == {"a": 1.0} and line.enabled == ["a"]


# -- 5. only the project's own processes are signalled ---------------------------------------------

def test_cancel_never_signals_a_process_the_record_merely_names(home, make_run):
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        record = make_run("forged", status="done")
        record.update_summary(status="running", pid=foreign.pid, started_at=time.time() + 3600,
                              pid_started_at=process_started_at(foreign.pid))
        store = RunStore()
        assert store.cancel("forged") == "cancelled"
        time.sleep(0.5)
        assert foreign.poll() is None and process_alive(foreign.pid)  # a foreign command line: left alone
        # a project process whose start time does not match the record is left alone too
        ours = subprocess.Popen([sys.executable, "-m", "heterolora_testing.idle", "60"], start_new_session=True)
        try:
            again = make_run("forged-ours", status="done")
            again.update_summary(status="running", pid=ours.pid, started_at=time.time(),
                                 pid_started_at=process_started_at(ours.pid) - 100)
            store.cancel("forged-ours")
            time.sleep(0.5)
            assert ours.poll() is None
        finally:
            ours.kill()
    finally:
        foreign.kill()


# -- 6. run size is bounded; the schedule is never materialised --------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"max_steps": 10**9}, "max-steps must be at most"),
    ({"epochs": 3e5}, "epochs must be in"),
    ({"batch_size": 100_000}, "batch-size must be at most"),
    ({"max_length": 10**6}, "max-length must be at most"),
    ({"score_window": 10**9}, "score-window must be at most"),
])
def test_run_size_is_bounded(change, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**change).validate()


def test_max_length_is_checked_against_the_model():
    from heterolora_core.planning import check_run

    with pytest.raises(ValueError, match="exceeds the 512 positions"):
        check_run(RunConfig(max_length=100_000))


def test_a_long_schedule_costs_nothing():
    started = time.perf_counter()
    schedule = ReallocationSchedule(steps_per_epoch=229, total_steps=10_000_000, fraction=0.2)
    # offsets round(j * 0.2 * 229) = 0, 46, 92, 137, 183; 43,668 whole epochs, then the partial epoch's
    # offset 0 (step 9,999,972), minus step 0 itself
    assert schedule.offsets == (0, 46, 92, 137, 183)
    assert len(schedule) == 43_668 * 5 + 1 - 1
    assert 43_667 * 229 + 46 in schedule and 43_667 * 229 + 47 not in schedule and 43_668 * 229 in schedule
    assert time.perf_counter() - started < 1.0


def test_the_launch_page_refuses_a_huge_run(app_env):
    at = open_page()
    at.radio(key="length").set_value("custom").run()
    at.number_input(key="max_steps").set_value(10**9).run()
    assert any("max-steps must be at most" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="launch").disabled


# -- 7. (browser) a polling page replaces a dead worker: tests/test_browser.py ---------------------

# -- 8. (browser) loopback whatever the working directory: tests/test_browser.py -------------------

# -- 9. numbers that are not numbers; bad data files ------------------------------------------------

@pytest.mark.parametrize("field_name, value", [("lr", math.nan), ("epochs", math.nan), ("epochs", math.inf),
                                               ("lr", math.inf), ("alpha", math.nan), ("enable_ratio", math.nan),
                                               ("realloc_every", math.inf)])
def test_non_finite_numbers_are_refused(field_name, value):
    with pytest.raises(ValueError, match="finite"):
        RunConfig(**{field_name: value}).validate()


@needs_glue
@pytest.mark.slow
@pytest.mark.parametrize("args, fragment", [
    (["--lr", "nan"], "lr must be a finite number"),
    (["--epochs", "inf"], "epochs must be a finite number"),
    (["--alpha", "nan"], "alpha must be a finite number"),
    (["--train-file", "{tmp}/bad.jsonl", "--dev-file", "{tmp}/good.jsonl"], "bad.jsonl:2:"),
    (["--train-file", "{tmp}/binary.csv", "--dev-file", "{tmp}/good.csv"], "binary.csv is not UTF-8"),
    (["--out", "{tmp}/readonly/run"], "cannot create the run folder"),
    (["--out", "{tmp}/a-file/run"], "cannot create the run folder"),  # root too: a file in the way
])
def test_bad_numbers_and_files_are_one_line_and_leave_no_record(tmp_path, args, fragment):
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{"text": broken\n')
    (tmp_path / "good.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 10)
    (tmp_path / "good.csv").write_text("text,label\nhi,1\nho,0\n")
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "readonly").mkdir()
    os.chmod(tmp_path / "readonly", 0o500)
    if os.geteuid() == 0 and "readonly" in " ".join(args):
        pytest.skip("root writes into a read-only folder")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
    result = run_cli("train", *args, *out, "--max-steps", "1", "--no-progress", env=cli_env(tmp_path / "home"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "home" / "runs").exists()


# -- 10. a record without config.json; shell-quoted commands ----------------------------------------

def test_a_record_without_config_is_listed_as_unreadable_and_never_rerun(app_env, make_run):
    record = make_run("no-config")
    (record.path / "config.json").unlink()
    store = RunStore()
    row = {r.run_id: r for r in store.list_runs()}["no-config"]
    assert row.config is None and "config.json is missing" in row.problem
    with pytest.raises(StoreError, match="cannot be rerun"):
        store.rerun("no-config")
    listed = run_cli("runs", "--home", str(app_env), env=cli_env(app_env), timeout=120)
    assert "no-config" in listed.stdout and "config.json is missing" in listed.stdout
    at = open_page("runs", ("selected_run", "no-config"))
    assert at.button(key="rerun").disabled
    assert any("unreadable record" in str(v) for v in at.dataframe[0].value["run"])


def test_command_lines_are_shell_quoted():
    from dashboard.components.formatting import command_line

    config = RunConfig(model="embedded; touch pwned #", train_file="my data.csv", dev_file="$(rm -rf ~).csv")
    line = command_line(config, "data/runs/<id>")
    args = shlex.split(line)
    assert args[args.index("--model") + 1] == "embedded; touch pwned #"
    assert args[args.index("--dev-file") + 1] == "$(rm -rf ~).csv"
    assert args[-2:] == ["--out", "data/runs/<id>"]
