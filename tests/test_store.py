"""heterolora_core.records.store: the SQLite index of run folders, the queue, cancel / delete / rerun;
heterolora_core.records.processes: which processes may be signalled. (The dashboard's launch-form
tests are in tests/test_launch_forms.py.)"""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

from heterolora_core.records.processes import process_started_at, signal_process
from heterolora_core.records.store import RunStore
from heterolora_core.training.run_config import RunConfig


def _ids(rows):
    """Run ids of ``list_runs()`` (StoredRun) or ``queued()`` (dict) rows, in order."""
    return [r["run_id"] if isinstance(r, dict) else r.run_id for r in rows]


def _indexed_status(store, run_id):
    """The status the index caches for ``run_id`` (not the folder's)."""
    with sqlite3.connect(store.db_path) as db:
        return db.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()[0]


def _start_project_process():
    """A project process that only sleeps, in its own session, and its create time; returned once
    its command line is the project's (before exec it is still this interpreter's)."""
    proc = subprocess.Popen([sys.executable, "-m", "heterolora_testing.idle", "60"], start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if "heterolora_testing.idle" in " ".join(psutil.Process(proc.pid).cmdline()):
                return proc, process_started_at(proc.pid)
        except psutil.Error:
            pass
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("the idle project process never started")


def test_database_in_the_data_home_uses_wal(home):
    store = RunStore()
    assert store.db_path == home / "runs.sqlite" and store.db_path.exists()
    with sqlite3.connect(store.db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_enqueue_creates_queued_folders_in_order(home):
    store = RunStore()
    first = store.enqueue(RunConfig(proxy="snip"))
    second = store.enqueue({**RunConfig().to_dict(), "seed": 3})
    assert first.path.parent == home / "runs"
    assert first.raw_summary().status == "queued"
    assert first.config()["proxy"] == "snip"
    assert _ids(store.queued()) == [first.run_id, second.run_id]
    assert store.claim_next(os.getpid()).run_id == first.run_id  # what the worker takes next
    first.update_summary(status="running", pid=os.getpid(), started_at=time.time())
    assert store.claim_next(os.getpid()).run_id == second.run_id  # a claimed run leaves the queue
    assert _ids(store.queued()) == [second.run_id]


def test_sync_indexes_cli_runs_and_forgets_deleted_folders(home, make_run):
    store = RunStore()
    make_run("cli-run-a")
    make_run("nested/cli-run-b")
    rows = store.list_runs()
    assert set(_ids(rows)) == {"cli-run-a", "cli-run-b"}
    assert _ids(rows)[0] == "cli-run-b"  # newest first
    # an adapter's own config.json inside a run folder is not a run
    (home / "runs" / "cli-run-a" / "adapters").mkdir()
    (home / "runs" / "cli-run-a" / "adapters" / "config.json").write_text("{}")
    assert len(store.list_runs()) == 2
    import shutil

    shutil.rmtree(home / "runs" / "cli-run-a")
    assert _ids(store.list_runs()) == ["cli-run-b"]
    assert store.queued() == []  # CLI runs never enter the store's queue


def test_a_second_store_on_the_same_home_sees_the_same_runs(home):
    one, two = RunStore(), RunStore(home)
    record = one.enqueue(RunConfig())
    assert _ids(two.list_runs()) == [record.run_id]


def test_running_run_with_dead_process_is_persisted_failed(home, make_run):
    record = make_run("crashed", status="done")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record.update_summary(status="running", pid=dead.pid, started_at=time.time() - 5)
    store = RunStore()
    row = store.list_runs()[0]
    assert row.summary.status == "failed" and _indexed_status(store, row.run_id) == "failed"
    assert row.status == "failed"
    assert record.raw_summary().status == "failed"  # persisted, not just displayed
    assert "ended without finishing" in record.raw_summary().error


def test_reconcile_names_a_killed_worker(home):
    store = RunStore()
    record = store.enqueue(RunConfig())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store.set_worker(record.run_id, gone.pid)
    record.update_summary(status="running", pid=gone.pid, started_at=time.time())
    store.sync()
    summary = record.raw_summary()
    assert summary.status == "failed"
    assert f"worker (pid {gone.pid}) was killed" in summary.error


def test_a_run_on_another_machine_is_judged_by_its_worker(home):
    """A run training on another node (a Ray task) names a pid of that node: its liveness is not
    judged from here; it reads failed only when the worker that started it (on this machine) is gone."""
    store = RunStore()
    record = store.enqueue(RunConfig())
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.set_worker(record.run_id, worker.pid)
        record.update_summary(status="running", pid=2**22 + 17, started_at=time.time(), host="gpu-node-7")
        assert store.list_runs()[0].status == "running"  # pid 4194321 is not alive here, and need not be
        assert record.summary().status == "running"
        assert store.cancel(record.run_id) == "cancelled"  # no signal is sent here: its worker stops it
        record.update_summary(status="running", error=None, finished_at=None)  # (as if it had not been)
    finally:
        worker.kill()
        worker.wait()
    store.sync()
    summary = record.raw_summary()
    assert summary.status == "failed"
    assert summary.error == (f"the worker (pid {worker.pid}) that ran it on gpu-node-7 is gone, "
                             f"and its task (process {2**22 + 17} there) with it")


def test_cancel_queued_run(home):
    store = RunStore()
    record = store.enqueue(RunConfig())
    assert store.cancel(record.run_id) == "cancelled"
    assert record.raw_summary().status == "cancelled"
    assert store.claim_next(os.getpid()) is None
    assert store.cancel(record.run_id) == "cancelled"  # idempotent


def test_cancel_running_run_terminates_its_process_group(home):
    store = RunStore()
    record = store.enqueue(RunConfig())
    proc, started = _start_project_process()
    try:
        record.update_summary(status="running", pid=proc.pid, pid_started_at=started, started_at=time.time())
        assert store.cancel(record.run_id) == "cancelled"
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert record.raw_summary().status == "cancelled"
        assert store.cancel_requested(record.run_id)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_signal_process_only_signals_the_group_of_a_process_that_leads_it():
    assert signal_process(None) is False
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # shares our group
    try:
        assert signal_process(child.pid) is True  # the pid alone, not our own group
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()


def test_delete_removes_folder_and_row(home):
    store = RunStore()
    record = store.enqueue(RunConfig())
    store.delete(record.run_id)
    assert not record.path.exists()
    assert store.list_runs() == []
    store.delete("no-such-run")  # nothing to do


def test_delete_a_running_run_stops_it_first(home):
    store = RunStore()
    record = store.enqueue(RunConfig())
    proc, started = _start_project_process()
    try:
        record.update_summary(status="running", pid=proc.pid, pid_started_at=started, started_at=time.time())
        store.delete(record.run_id)
        assert proc.poll() == -signal.SIGTERM  # reaped by the wait: dead before the folder went
        assert not record.path.exists() and store.list_runs() == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_rerun_copies_the_config_but_not_the_sweep(home):
    store = RunStore()
    sweep_id = "sweep-rerun"
    records = store.enqueue_many([RunConfig(rank=16, proxy="grad_norm", seed=7)], sweep_id=sweep_id)
    assert records[0].config()["sweep_id"] == sweep_id
    again = store.rerun(records[0].run_id)
    assert again.run_id != records[0].run_id
    config = again.config()
    assert config["rank"] == 16 and config["seed"] == 7 and "sweep_id" not in config
    assert RunConfig.from_dict(config) == RunConfig.from_dict(records[0].config())
    with pytest.raises(KeyError):
        store.rerun("missing")


def test_sweep_queues_one_run_per_proxy_and_seed(home):
    store = RunStore()
    sweep_id = "sweep-proxies-seeds"
    # one config per (seed, proxy), the runs of the first seed first
    records = store.enqueue_many([RunConfig(seed=seed, proxy=proxy) for seed in (0, 13) for proxy in ("grad_norm", "snip")],
                                 sweep_id=sweep_id)
    configs = [r.config() for r in records]
    assert [(c["seed"], c["proxy"]) for c in configs] == [(0, "grad_norm"), (0, "snip"), (13, "grad_norm"), (13, "snip")]
    assert {c["sweep_id"] for c in configs} == {sweep_id}
    sweeps = store.sweeps()
    assert sweeps[0].sweep_id == sweep_id and sweeps[0].run_ids == [r.run_id for r in records]
    # the sweep survives a rebuilt index (it is in config.json too)
    store.db_path.unlink()
    for suffix in ("-wal", "-shm"):
        (home / f"runs.sqlite{suffix}").unlink(missing_ok=True)
    rebuilt = RunStore()
    rebuilt.sync()
    assert set(rebuilt.sweeps()[0].run_ids) == {r.run_id for r in records}
    # (an empty proxy list is refused by the launch form: see tests/test_launch_forms.py)


def test_record_written_by_another_process_while_indexed(home):
    """The worker and the app both write: concurrent enqueues from two processes keep a total order."""
    code = ("from heterolora_core.records.store import RunStore\n"
            "from heterolora_core.training.run_config import RunConfig\n"
            "s = RunStore(%r)\n"
            "for i in range(10): s.enqueue(RunConfig(seed=i))\n") % str(home)
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    queued = RunStore().queued()
    assert len(queued) == 20
    assert len({q["queue_seq"] for q in queued}) == 20


def test_benchmark_records_under_results_are_indexed(tmp_path):
    """quality_grid.py writes records under <home>/results/<task>/<row>/seed<k>: Compare must see them."""
    from heterolora_core.records.record import RunRecord

    folders = [tmp_path / "results" / "mrpc" / row / "seed0" for row in ("lora-qv-r8", "dynamic-r32")]
    for folder in folders:
        RunRecord.create(folder, {"task": "mrpc", "mode": "lora"}, status="done")
    store = RunStore(tmp_path)
    rows = {r.run_id: r for r in store.list_runs()}
    assert set(rows) == {"results/mrpc/lora-qv-r8/seed0", "results/mrpc/dynamic-r32/seed0"}  # unique ids
    assert {r.path for r in rows.values()} == {f.resolve() for f in folders}
    assert store.get("results/mrpc/lora-qv-r8/seed0").path == folders[0].resolve()
