"""Hostile input, round 3 (issue 21): no sweep or record can delete, exhaust or take down what
others rely on. One test (or group) per finding: a run folder is one run's own leaf; a sweep is
counted before it is built and its YAML checked before it is constructed; one bad run queues
none; a corrupt or locked run index is survived; a data home is a folder this tool made; a full
disk leaves no temporary file and says so. Memory-heavy regressions run in a subprocess under
``resource.setrlimit``, so a regression fails instead of swapping."""
from __future__ import annotations

import errno
import json
import re
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from cli_helpers import REPO
from conftest import FAKE_TRAIN_CMD
from heterolora_core.records import home as home_mod
from heterolora_core.records import record as record_mod
from heterolora_core.records.record import RunRecord, atomic_write_json
from heterolora_core.records.store import RunStore, StoreError
from heterolora_core.records.worker import TRAIN_CMD_ENV, Worker
from heterolora_core.sweeps import expand, prepare, read_sweep, submit

APP = str(REPO / "dashboard" / "app.py")
MARKER = ".heterolora-home"
BASE = "base: {task: mrpc, mode: lora, max_steps: 2, train_limit: 16}\n"


def shown(markdown: str) -> str:
    """The text a person reads of a message the page escaped for Markdown (record and file text is
    shown as text: :func:`heterolora_core.analysis.text.markdown_text`)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def cli(args, home, timeout=120, memory_gb: float | None = None, **env):
    """``python -m heterolora_core ARGS``; with ``memory_gb``, under an address-space limit (a
    regression that builds a huge object fails with MemoryError instead of swapping)."""
    code = "import sys\nfrom heterolora_core.cli import main\nsys.exit(main(sys.argv[1:]))"
    if memory_gb:
        limit = int(memory_gb * 2**30)
        code = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n" + code
    full_env = {**os.environ, "HETEROLORA_HOME": str(home), TRAIN_CMD_ENV: FAKE_TRAIN_CMD,
                "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(out) -> str:
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (out.returncode, out.stderr[-2000:])
    return lines[0]


def record_folders(home: Path) -> list[str]:
    return sorted(p.parent.relative_to(home).as_posix() for p in home.rglob("config.json"))


def sweep_file(tmp_path, text, name="sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- 1. a run folder is one run's own leaf ------------------------------------------------------------

@pytest.mark.parametrize("folder, message", [
    ("runs", "the data home's own runs/, which holds other runs"),
    ("results", "the data home's own results/"),
    (".", "must be a relative path inside the data home"),
    ("exp/../exp2", "'..' or hidden"),
    ("runs/keeper/adapters", "lies inside the run record runs/keeper"),
    ("results/mrpc/row/seed0/adapters", "lies inside the run record results/mrpc/row/seed0"),
    ("results/mrpc", "holds another run record (results/mrpc/row/seed0)"),
    ("runs.sqlite", "the data home's own runs.sqlite"),
])
def test_a_sweep_folder_that_is_a_root_or_another_runs_is_refused(home, make_run, tmp_path, folder, message):
    make_run("keeper", status="done")
    make_run("other", status="done")
    kept = RunRecord.create(home / "results" / "mrpc" / "row" / "seed0", {"task": "mrpc", "mode": "lora"}, status="done")
    (kept.path / "adapters").mkdir()
    before = record_folders(home)
    store = RunStore()
    with pytest.raises(ValueError) as info:
        prepare(store, sweep_file(tmp_path, f"sweep: s\nfolder: {json.dumps(folder)}\n{BASE}axes: {{seed: [0]}}\n"))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert record_folders(home) == before and store.queued() == []


def test_queueing_a_cancelled_sweep_again_never_replaces_another_record(home, tmp_path):
    """A re-queue replaces the folder of its own failed or cancelled run only: when that folder
    has come to hold another record, nothing is replaced."""
    path = sweep_file(tmp_path, f"sweep: s\nfolder: exp/{{seed}}\n{BASE}axes: {{seed: [0]}}\n")
    store = RunStore()
    [record] = submit(store, prepare(store, path)[1], "s")
    store.cancel(store.run_id_of(record.path))
    inner = RunRecord.create(home / "exp" / "0" / "inner", {"task": "mrpc", "mode": "lora"}, status="done")
    with pytest.raises(ValueError, match="holds another run record"):
        prepare(store, path)
    assert inner.summary().status == "done" and record.summary().status == "cancelled"


def test_a_record_at_the_runs_root_is_not_a_run_and_delete_keeps_every_run(home, make_run):
    """Before: a config.json at <home>/runs made the store list the runs root as run 'runs' (and
    no other run); deleting it removed every run of the home."""
    for name in ("a", "b"):
        make_run(name, status="done")
    (home / "runs" / "config.json").write_text(json.dumps({"task": "mrpc", "mode": "lora"}))
    store = RunStore()
    assert sorted(r.run_id for r in store.list_runs()) == ["a", "b"]
    store.delete("runs")  # not a run: nothing happens
    assert record_folders(home) == ["runs", "runs/a", "runs/b"]  # "runs": the planted file, left alone


def test_delete_refuses_a_record_that_holds_other_records(home):
    """A record file planted in a folder above other records makes it look like one run; deleting
    it would remove them all: refused, nothing removed."""
    for seed in (0, 1):
        RunRecord.create(home / "results" / "mrpc" / "row" / f"seed{seed}", {"task": "mrpc"}, status="done")
    (home / "results" / "mrpc" / "summary.json").write_text(json.dumps({"status": "done"}))
    store = RunStore()
    assert [r.run_id for r in store.list_runs()] == ["results/mrpc"]
    with pytest.raises(StoreError, match="holds another run record"):
        store.delete("results/mrpc")
    assert record_folders(home) == ["results/mrpc/row/seed0", "results/mrpc/row/seed1"]


def test_the_store_queues_only_into_a_free_leaf(home, make_run):
    make_run("keeper", status="done")
    store = RunStore()
    (home / "notes").mkdir()
    (home / "notes" / "mine.txt").write_text("mine")
    for folder, message in [("runs", "own runs/"), ("runs/keeper", "already exists"), ("notes", "already exists"),
                            ("runs/keeper/x", "inside the run record runs/keeper"), ("../out", "'..'"),
                            ("a\0b", "control"),
                            ("/etc", "not inside the data home")]:
        with pytest.raises(StoreError, match=message):
            store.enqueue({"task": "mrpc", "mode": "lora"}, folder=folder)
    assert record_folders(home) == ["runs/keeper"] and (home / "notes" / "mine.txt").read_text() == "mine"
    assert store.queued() == []


# -- 3. a sweep is counted before it is built; its YAML checked before it is constructed ----------

HUGE_AXES = "sweep: huge\nbase: {task: mrpc, mode: lora}\naxes:\n" + "".join(
    f"  {name}: [{', '.join(str(v) for v in values)}]\n"
    for name, values in (("seed", range(100)), ("rank", range(1, 101)), ("train_limit", range(1, 101)),
                         ("max_steps", range(1, 101))))
ALIAS_BOMB = "sweep: bomb\nbase: {task: mrpc}\naxes:\n  seed: [0]\nx0: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"x{i}: &x{i} [*x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}, *x{i - 1}]\n"
    for i in range(1, 9)) + "description: *x8\n"
MERGE_BOMB = "sweep: bomb\naxes: {seed: [0]}\nm0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}\n" + "".join(
    f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}]}}\n"
    for i in range(1, 9)) + "base: *m8\n"


def test_a_sweep_of_a_hundred_million_runs_is_refused_by_count_in_bounded_memory(home, tmp_path):
    assert len(HUGE_AXES) < 1700
    with pytest.raises(ValueError, match="names 100,000,000 runs; a sweep may name at most 10,000"):
        read_sweep(HUGE_AXES)
    path = sweep_file(tmp_path, HUGE_AXES)
    for extra in ([], ["--dry-run"]):
        line = one_error_line(cli(["sweep", path, *extra], home, timeout=60, memory_gb=1.5))
        assert "names 100,000,000 runs" in line
    assert record_folders(home) == []


@pytest.mark.parametrize("bomb", [ALIAS_BOMB, MERGE_BOMB], ids=["aliases", "merge-keys"])
def test_a_yaml_alias_bomb_is_refused_fast_in_bounded_memory_with_a_short_message(home, tmp_path, bomb):
    """Only ever read under a memory limit: built, it is 10^9 values (aliases) or 10^8 keys (merges)."""
    assert len(bomb) < 1000
    for extra in ([], ["--dry-run"]):
        line = one_error_line(cli(["sweep", sweep_file(tmp_path, bomb), *extra], home, timeout=60, memory_gb=1.5))
        assert "aliases expand to more than" in line and len(line) < 300
    assert record_folders(home) == []


PASTE_ON_LAUNCH_PAGE = """
import json, resource, sys
limit = int(float(sys.argv[2]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=60).run()
at.radio(key="sweep_source").set_value("a sweep file").run()
at.text_area(key="sweep_text").set_value(sys.stdin.read()).run()
print(json.dumps({"errors": [e.value for e in at.error], "exceptions": [e.message for e in at.exception],
                  "disabled": at.button(key="launch_custom_sweep").disabled}))
"""


@pytest.mark.parametrize("bomb", [ALIAS_BOMB, MERGE_BOMB], ids=["aliases", "merge-keys"])
def test_an_alias_bomb_pasted_on_the_launch_page_is_one_line_in_bounded_memory(home, bomb):
    """The page in a subprocess under a 2 GiB address-space limit (the app itself needs ~1)."""
    env = {**os.environ, "HETEROLORA_HOME": str(home), "HETEROLORA_DASHBOARD_WORKER": "0", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PASTE_ON_LAUNCH_PAGE, APP, "2"], input=bomb, capture_output=True,
                         text=True, env=env, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["exceptions"] == [] and seen["disabled"]
    assert [shown(e).split(" (line")[0] for e in seen["errors"]] == ["pasted.yaml: its aliases expand to more than 100,000 values"]
    assert record_folders(home) == []


def test_a_recursive_alias_is_refused():
    with pytest.raises(ValueError, match="an alias refers to the value that holds it"):
        read_sweep("sweep: loop\naxes: {seed: [0]}\ndescription: &a [1, *a]\n")


def test_error_messages_quote_a_short_excerpt_of_a_huge_value(tmp_path):
    huge = "x" * 200_000
    for text in (f"sweep: s\n{huge}: 1\n", f"sweep: {huge}\n", f"sweep: s\naxes: {{seed: [0]}}\nfolder: '{huge}{{seed}}/'\n",
                 f"sweep: s\nbase: {{proxy: {huge}, mode: dynamic}}\naxes: {{seed: [0]}}\n"):
        with pytest.raises(ValueError) as info:
            expand(read_sweep(text))
        assert len(str(info.value)) < 600, len(str(info.value))


@pytest.mark.parametrize("text, name, message", [
    ("sweep: s\nbase: {rank: 8}\naxes: {seed: [0]}\nbase: {rank: 16}\n", "sweep.yaml", "key 'base' appears twice"),
    ("sweep: s\nbase: {rank: 8, rank: 16}\naxes: {seed: [0]}\n", "sweep.yaml", "key 'rank' appears twice"),
    ('{"sweep": "s", "axes": {"seed": [0]}, "base": {"lr": 0.1, "lr": 0.2}}', "sweep.json", "key 'lr' appears twice"),
    ("sweep: s\nfolder: 'exp/{seed.__class__}'\naxes: {seed: [0]}\n", "sweep.yaml", "{seed.__class__} is not a variable"),
    ("sweep: s\nfolder: 'exp/{seed[0]}'\naxes: {seed: [0]}\n", "sweep.yaml", "{seed[0]} is not a variable"),
    ("sweep: s\nfolder: 'exp/{seed!r}'\naxes: {seed: [0]}\n", "sweep.yaml", "{seed} is not a variable"),
])
def test_duplicate_keys_and_attribute_access_in_a_template_are_refused(text, name, message):
    with pytest.raises(ValueError) as info:
        read_sweep(text, name)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_launch_page_refuses_a_pasted_oversized_sweep_in_one_line(home, monkeypatch):
    """27,000 runs pasted (three axes of 30): the page says the count and the cap, builds none."""
    monkeypatch.setenv("HETEROLORA_DASHBOARD_WORKER", "0")
    st.cache_data.clear()
    st.cache_resource.clear()
    text = ("sweep: big\nbase: {task: mrpc, mode: lora, max_steps: 2}\naxes:\n  seed: " + json.dumps(list(range(30)))
            + "\n  rank: " + json.dumps(list(range(1, 31))) + "\n  lr: " + json.dumps([1e-4 * i for i in range(1, 31)]) + "\n")
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.radio(key="sweep_source").set_value("a sweep file").run()
    at.text_area(key="sweep_text").set_value(text).run()
    assert not at.exception, [e.message for e in at.exception]
    errors = [shown(e.value) for e in at.error]
    assert any("names 27,000 runs; a sweep may name at most 10,000" in e for e in errors), errors
    assert at.button(key="launch_custom_sweep").disabled


# -- 4. one bad run queues none ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["../outside", "exp/a\u0000b", "runs"], ids=["dotdot", "nul", "runs-root"])
def test_a_bad_second_row_queues_nothing_and_dry_run_fails_too(home, tmp_path, bad):
    text = json.dumps({"sweep": "s", "base": {"task": "mrpc", "mode": "lora", "max_steps": 2},
                       "axes": {"seed": [0]}, "rows": [{"row": "good", "folder": "exp/good/{seed}"},
                                                       {"row": "bad", "rank": 4, "folder": bad}]})
    path = sweep_file(tmp_path, text, "sweep.json")
    for extra in (["--dry-run"], []):
        line = one_error_line(cli(["sweep", path, *extra], home))
        assert line.startswith("error: row bad (seed=0): run folder "), line
    assert record_folders(home) == [] and not (tmp_path / "outside").exists()
    assert RunStore(home).queued() == []


def test_two_runs_of_a_sweep_cannot_nest(home, tmp_path):
    text = (f"sweep: s\n{BASE}axes: {{seed: [0]}}\nrows:\n  - {{row: outer, folder: exp}}\n"
            f"  - {{row: inner, rank: 4, folder: exp/in}}\n")
    with pytest.raises(ValueError, match="lies inside another run's folder"):
        prepare(RunStore(), sweep_file(tmp_path, text))
    assert record_folders(home) == []


# -- 5. the run index is a cache of the disk --------------------------------------------------------

def test_a_corrupt_index_is_set_aside_and_rebuilt_saying_so_once(home, make_run):
    make_run("kept", status="done")
    RunStore().enqueue({"task": "mrpc", "mode": "lora"}, folder="runs/waiting")
    garbage = os.urandom(8192)
    (home / "runs.sqlite").write_bytes(garbage)
    for name in ("runs.sqlite-wal", "runs.sqlite-shm"):
        (home / name).unlink(missing_ok=True)
    first = cli(["runs"], home)
    assert first.returncode == 0, first.stderr
    assert "kept" in first.stdout and "waiting" in first.stdout
    notes = first.stderr.splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: the run index") and "set it aside as" in notes[0]
    [aside] = [p for p in home.iterdir() if p.name.startswith("runs.sqlite.corrupt-") and not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == garbage
    second = cli(["runs"], home)
    assert second.returncode == 0 and second.stderr == ""
    assert [r["run_id"] for r in RunStore(home).queued()] == ["waiting"]


def test_a_corrupt_index_takes_no_page_and_no_worker_down(home, make_run, monkeypatch):
    make_run("kept", status="done")
    store = RunStore()
    store.enqueue({"task": "mrpc", "mode": "lora", "max_steps": 2}, folder="runs/waiting")
    (home / "runs.sqlite").write_bytes(os.urandom(4096))
    for name in ("runs.sqlite-wal", "runs.sqlite-shm"):
        (home / name).unlink(missing_ok=True)
    monkeypatch.setenv("HETEROLORA_DASHBOARD_WORKER", "0")
    st.cache_data.clear()
    st.cache_resource.clear()
    said = []
    for page in ("runs", "launch", "runs"):
        at = AppTest.from_file(APP, default_timeout=90).run()
        said += [w.value for w in at.warning if "set it aside" in w.value]
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, [e.message for e in at.exception])
    assert len(said) == 1, said  # once, to the first page that opened the rebuilt index
    assert [r["run_id"] for r in RunStore(home).queued()] == ["waiting"]  # rebuilt from the folders
    (home / "runs.sqlite").write_bytes(os.urandom(4096))  # again, under the worker
    for name in ("runs.sqlite-wal", "runs.sqlite-shm"):
        (home / name).unlink(missing_ok=True)
    monkeypatch.setenv(TRAIN_CMD_ENV, FAKE_TRAIN_CMD)
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.01")
    assert Worker(home, stop_when_idle=True, poll=0.05, idle_exit=None, log=lambda m: None).serve() == 0
    assert RunRecord(home / "runs" / "waiting").summary().status == "done"


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def hold_index_lock(home: Path, seconds: float) -> subprocess.Popen:
    RunStore(home)  # the index exists
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(home / "runs.sqlite"), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_long_held_index_lock_fails_the_sweep_in_one_line_with_nothing_queued(home, tmp_path):
    path = sweep_file(tmp_path, f"sweep: s\nfolder: exp/{{seed}}\n{BASE}axes: {{seed: [0, 1]}}\n")
    # held far longer than the CLI can take to reach the index on a loaded machine, and released
    # (the holder stopped: this test started it) as soon as the CLI has answered
    holder = hold_index_lock(home, 120)
    try:
        line = one_error_line(cli(["sweep", path], home, HETEROLORA_INDEX_WAIT="1"))
    finally:
        holder.terminate()
        holder.wait(timeout=30)
    assert "stayed locked by another process for 1 s; nothing was changed" in line
    assert record_folders(home) == [] and RunStore(home).queued() == []


def test_the_worker_waits_out_a_held_index_lock_without_dying(home, monkeypatch):
    RunStore(home).enqueue({"task": "mrpc", "mode": "lora", "max_steps": 2}, folder="runs/waiting")
    monkeypatch.setenv(TRAIN_CMD_ENV, FAKE_TRAIN_CMD)
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.01")
    worker = Worker(home, stop_when_idle=True, poll=0.05, idle_exit=None, log=(lines := []).append)
    worker.store.index_wait = 0.3
    holder = hold_index_lock(home, 2)
    try:
        assert worker.serve() == 0
    finally:
        holder.wait(timeout=30)
    assert any("stayed locked by another process" in line and line.endswith("retrying") for line in lines), lines
    assert RunRecord(home / "runs" / "waiting").summary().status == "done"


# -- 7. a data home is a folder this tool made ------------------------------------------------------

def test_a_folder_of_foreign_files_is_refused_as_a_home_and_nothing_in_it_changes(tmp_path):
    foreign = tmp_path / "someone-elses"
    RunRecord.create(foreign / "project" / "job", {"task": "theirs"}, status="running", pid=999_999_999)
    (foreign / "notes.txt").write_text("mine")
    summary_before = (foreign / "project" / "job" / "summary.json").read_bytes()
    for args in (["runs"], ["runs", "--home", foreign]):
        line = one_error_line(cli(args, foreign))
        assert "is not a data home made by this tool" in line and ".heterolora-home" in line
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt", "project"]
    assert (foreign / "project" / "job" / "summary.json").read_bytes() == summary_before
    with pytest.raises(StoreError, match="is not a data home"):
        home_mod.checked_home("/")


def test_homes_this_tool_made_are_accepted(tmp_path):
    earlier = tmp_path / "earlier"  # a home of an earlier version: runs/, the index, the worker's files
    RunRecord.create(earlier / "runs" / "old", {"task": "mrpc", "mode": "lora"}, status="done")
    (earlier / "results").mkdir()
    (earlier / "worker.log").write_text("")
    sqlite3.connect(earlier / "runs.sqlite").close()
    assert [r.run_id for r in RunStore(earlier).list_runs()] == ["old"]
    assert (earlier / MARKER).is_file()
    (earlier / "my-notes.txt").write_text("added later: the marker keeps the home a home")
    assert [r.run_id for r in RunStore(earlier).list_runs()] == ["old"]
    for fresh in (tmp_path / "missing", tmp_path / "empty"):
        assert RunStore(fresh).list_runs() == [] and (fresh / MARKER).is_file()
    tracked = subprocess.run(["git", "ls-files", "data/" + MARKER], cwd=REPO, capture_output=True, text=True)
    assert tracked.stdout.strip() == "data/" + MARKER  # the project's own data/ is marked


# -- 9. a full disk ---------------------------------------------------------------------------------

def test_a_full_disk_leaves_no_temporary_file_and_says_so(tmp_path, monkeypatch):
    RunRecord.create(tmp_path / "run", {"task": "mrpc"}, status="running")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_mod.os, "fsync", no_space)
    with pytest.raises(OSError, match="no space left on the disk holding"):
        atomic_write_json(tmp_path / "run" / "summary.json", {"status": "done"})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "summary.json"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "running"


def test_a_run_that_failed_on_a_full_disk_says_the_disk_is_full(tmp_path, monkeypatch):
    from heterolora_core.records.launchers import Ended
    from heterolora_core.records.worker import failure_reason

    record = RunRecord.create(tmp_path / "run", {"task": "mrpc"}, status="running")
    (record.path / "train.log").write_text("")  # the traceback could not be written either
    assert "full" not in failure_reason(record, Ended(1))
    monkeypatch.setattr(record_mod.shutil, "disk_usage", lambda path: type("U", (), {"free": 4096})())
    assert failure_reason(record, Ended(1)) == ("training process exited with code 1 without finishing the run: "
                                                f"the disk holding {record.path} is full (4,096 bytes free)")


def test_the_count_before_expanding_is_the_number_of_runs_expand_builds():
    from heterolora_core.sweeps import count_runs, load_sweep

    for path in sorted((REPO / "benchmarks" / "grids").glob("*.yaml")):
        spec = load_sweep(path)
        assert count_runs(spec) == len(expand(spec)), path.name
