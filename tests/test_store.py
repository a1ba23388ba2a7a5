"""heterolora_core.store: the SQLite index of run folders, the queue, cancel / delete / rerun, launch checks."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from heterolora_core.runs import RunConfig
from heterolora_core.store import (
    SHORT_RUN,
    LaunchError,
    RunStore,
    check_launch,
    launch_config,
    parse_seeds,
    terminate_process_group,
)


def _ids(rows):
    return [r["run_id"] for r in rows]


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
    assert first.raw_summary()["status"] == "queued"
    assert first.config()["proxy"] == "snip"
    assert _ids(store.queued()) == [first.run_id, second.run_id]
    assert store.next_queued().run_id == first.run_id
    first.update_summary(status="running", pid=os.getpid(), started_at=time.time())
    assert store.next_queued().run_id == second.run_id  # a claimed run leaves the queue


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
    assert row["summary"]["status"] == "failed" and row["status"] == "failed"
    assert record.raw_summary()["status"] == "failed"  # persisted, not just displayed
    assert "ended without finishing" in record.raw_summary()["error"]


def test_reconcile_names_a_killed_worker(home):
    store = RunStore()
    record = store.enqueue(RunConfig())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store.set_worker(record.run_id, gone.pid)
    record.update_summary(status="running", pid=gone.pid, started_at=time.time())
    store.sync()
    summary = record.raw_summary()
    assert summary["status"] == "failed"
    assert f"worker (pid {gone.pid}) was killed" in summary["error"]


def test_cancel_queued_run(home):
    store = RunStore()
    record = store.enqueue(RunConfig())
    assert store.cancel(record.run_id) == "cancelled"
    assert record.raw_summary()["status"] == "cancelled"
    assert store.next_queued() is None
    assert store.cancel(record.run_id) == "cancelled"  # idempotent


def test_cancel_running_run_terminates_its_process_group(home):
    store = RunStore()
    record = store.enqueue(RunConfig())
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        record.update_summary(status="running", pid=proc.pid, started_at=time.time())
        assert store.cancel(record.run_id) == "cancelled"
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert record.raw_summary()["status"] == "cancelled"
        assert store.cancel_requested(record.run_id)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_terminate_only_signals_a_process_that_leads_its_group():
    assert terminate_process_group(None) is False
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # shares our group
    try:
        assert terminate_process_group(child.pid) is True  # the pid alone, not our own group
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
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        record.update_summary(status="running", pid=proc.pid, started_at=time.time())
        store.delete(record.run_id)
        assert proc.poll() == -signal.SIGTERM  # reaped by the wait: dead before the folder went
        assert not record.path.exists() and store.list_runs() == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_rerun_copies_the_config_but_not_the_sweep(home):
    store = RunStore()
    sweep_id, records = store.enqueue_sweep(RunConfig(rank=16), ["grad_norm"], [7])
    again = store.rerun(records[0].run_id)
    assert again.run_id != records[0].run_id
    config = again.config()
    assert config["rank"] == 16 and config["seed"] == 7 and "sweep_id" not in config
    assert RunConfig.from_dict(config) == RunConfig.from_dict(records[0].config())
    with pytest.raises(KeyError):
        store.rerun("missing")


def test_sweep_queues_one_run_per_proxy_and_seed(home):
    store = RunStore()
    sweep_id, records = store.enqueue_sweep(RunConfig(), ["grad_norm", "snip"], [0, 13])
    configs = [r.config() for r in records]
    assert [(c["seed"], c["proxy"]) for c in configs] == [(0, "grad_norm"), (0, "snip"), (13, "grad_norm"), (13, "snip")]
    assert {c["sweep_id"] for c in configs} == {sweep_id}
    sweeps = store.sweeps()
    assert sweeps[0]["sweep_id"] == sweep_id and sweeps[0]["run_ids"] == [r.run_id for r in records]
    # the sweep survives a rebuilt index (it is in config.json too)
    store.db_path.unlink()
    for suffix in ("-wal", "-shm"):
        (home / f"runs.sqlite{suffix}").unlink(missing_ok=True)
    rebuilt = RunStore()
    rebuilt.sync()
    assert set(rebuilt.sweeps()[0]["run_ids"]) == {r.run_id for r in records}
    with pytest.raises(LaunchError):
        store.enqueue_sweep(RunConfig(), [], [0])


def test_short_run_is_a_valid_config():
    config = launch_config(SHORT_RUN)
    assert RunConfig.from_dict(config).to_cli_args()  # every value is CLI-expressible
    assert config["mode"] == "dynamic" and config["model"] == "embedded"
    with pytest.raises(LaunchError, match="unknown run settings"):
        launch_config({"rnak": 3})


@pytest.mark.parametrize("change, message", [
    ({"rank": 0}, "rank must be at least 1"),
    ({"enable_ratio": 0.0}, "enable ratio must be in"),
    ({"enable_ratio": 1.5}, "enable ratio must be in"),
    ({"lora_targets": [], "shortcuts": False}, "search space is empty"),
    ({"model": "  "}, "choose a model"),
    ({"model": "nobody/no-such-model"}, "does not exist"),
    ({"enable_ratio": 0.01}, "enables nothing"),
    ({"task": "nosuchtask"}, "unknown task"),
])
def test_check_launch_refuses_bad_input_with_one_line(fake_budget, change, message):
    with pytest.raises(LaunchError, match=message) as info:
        check_launch(launch_config({**SHORT_RUN, **change}))
    assert "\n" not in str(info.value)


def test_check_launch_returns_the_plan(fake_budget):
    plan = check_launch(launch_config(SHORT_RUN))
    assert plan.n_enabled == 9 and plan.trainable_params == 9 * 32 * 768
    lora = check_launch(launch_config({**SHORT_RUN, "mode": "lora", "rank": 8, "enable_ratio": 0.0}))
    assert lora.n_enabled == 35  # the enable ratio does not apply to uniform LoRA


def test_check_launch_with_the_engine_budget_planner():
    """The real plan_budget (imports torch): the default short run on the embedded model."""
    plan = check_launch(launch_config(SHORT_RUN))
    assert (plan.n_lora, plan.n_shortcut, plan.n_enabled) == (12, 23, 9)
    assert plan.trainable_params == 9 * 32 * 768
    assert "rank 24" in plan.uniform_equivalent
    with pytest.raises(LaunchError, match="enables nothing"):
        check_launch(launch_config({**SHORT_RUN, "enable_ratio": 0.01}))


def test_parse_seeds():
    assert parse_seeds("0, 13 42,13") == [0, 13, 42]
    for bad in ("", "a", "1.5", "-1"):
        with pytest.raises(LaunchError):
            parse_seeds(bad)


def test_record_written_by_another_process_while_indexed(home):
    """The worker and the app both write: concurrent enqueues from two processes keep a total order."""
    from conftest import PROJECT_ROOT

    code = ("import sys; sys.path.insert(0, %r)\n"
            "from heterolora_core.store import RunStore; from heterolora_core.runs import RunConfig\n"
            "s = RunStore(%r)\n"
            "for i in range(10): s.enqueue(RunConfig(seed=i))\n") % (str(PROJECT_ROOT), str(home))
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    queued = RunStore().queued()
    assert len(queued) == 20
    assert len({q["queue_seq"] for q in queued}) == 20


def test_benchmark_records_under_results_are_indexed(tmp_path):
    """quality_grid.py writes records under <home>/results/<task>/<row>/seed<k>: Compare must see them."""
    from heterolora_core.runs import RunRecord
    from heterolora_core.store import RunStore

    folders = [tmp_path / "results" / "mrpc" / row / "seed0" for row in ("lora-qv-r8", "dynamic-r32")]
    for folder in folders:
        RunRecord.create(folder, {"task": "mrpc", "mode": "lora"}, status="done")
    store = RunStore(tmp_path)
    rows = {r["run_id"]: r for r in store.list_runs()}
    assert set(rows) == {"results/mrpc/lora-qv-r8/seed0", "results/mrpc/dynamic-r32/seed0"}  # unique ids
    assert {r["path"] for r in rows.values()} == {f.resolve() for f in folders}
    assert store.get("results/mrpc/lora-qv-r8/seed0").path == folders[0].resolve()
