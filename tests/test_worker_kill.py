"""The queue worker: runs are real and nothing is lost, even when the worker is killed with SIGKILL."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cli_helpers import wait_for
from conftest import FAKE_TRAIN_CMD, PROJECT_ROOT
from heterolora_core.records import worker as worker_mod
from heterolora_core.records.processes import process_alive
from heterolora_core.records.store import RunStore
from heterolora_core.training.run_config import RunConfig


@pytest.fixture
def fake_trainer(home, monkeypatch):
    """The worker runs the stand-in trainer (``heterolora_testing.synthetic``) instead of the engine's CLI."""
    monkeypatch.setenv(worker_mod.TRAIN_CMD_ENV, FAKE_TRAIN_CMD)
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.05")
    yield
    worker_mod.stop_worker(home)



def test_train_command_default_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv(worker_mod.TRAIN_CMD_ENV, raising=False)
    assert worker_mod.train_command(tmp_path) == [sys.executable, "-m", "heterolora_core", "train", "--config",
                                                  str(tmp_path / "config.json"), "--out", str(tmp_path),
                                                  "--no-progress"]
    monkeypatch.setenv(worker_mod.TRAIN_CMD_ENV, "python -m fake 'a b'")
    assert worker_mod.train_command(tmp_path)[:4] == ["python", "-m", "fake", "a b"]


def test_worker_runs_the_queue_in_order(home, fake_trainer):
    store = RunStore()
    first = store.enqueue(RunConfig(max_steps=3, seed=1))
    second = store.enqueue(RunConfig(max_steps=3, seed=2))
    worker = worker_mod.Worker(home, poll=0.05)
    # what the worker's loop does: claim the oldest queued run for itself, then train it
    assert worker.run_one(store.claim_next(os.getpid())) == "done"
    assert first.raw_summary().status == "done" and second.raw_summary().status == "queued"
    assert worker.run_one(store.claim_next(os.getpid())) == "done"
    assert first.raw_summary().started_at < second.raw_summary().started_at
    assert (first.path / worker_mod.TRAIN_LOG).read_text().strip().endswith("done")
    assert len(first.reallocations()) >= 1 and first.metrics()


def test_a_crashing_trainer_leaves_a_failed_run_with_the_reason(home, fake_trainer, monkeypatch):
    monkeypatch.setenv("HETEROLORA_FAKE_CRASH_AT", "1")
    store = RunStore()
    record = store.enqueue(RunConfig(max_steps=5))
    assert worker_mod.Worker(home, poll=0.05).run_one(store.claim_next(os.getpid())) == "failed"
    error = record.raw_summary().error
    assert "exited with code 1" in error and "RuntimeError: fake crash at step 1" in error


def test_a_trainer_that_never_claims_the_run_does_not_loop_forever(home, monkeypatch):
    monkeypatch.setenv(worker_mod.TRAIN_CMD_ENV, f"{sys.executable} -c 'import sys; sys.exit(\"bad flag\")'")
    store = RunStore()
    record = store.enqueue(RunConfig())
    assert worker_mod.Worker(home, poll=0.05).run_one(store.claim_next(os.getpid())) == "failed"
    assert "bad flag" in record.raw_summary().error
    assert store.claim_next(os.getpid()) is None
    assert store.queued() == []  # not only passed over as this worker's claim: it left the queue


def test_cancel_while_running(home, fake_trainer, monkeypatch):
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.2")
    store = RunStore()
    record = store.enqueue(RunConfig(max_steps=200))
    canceller = threading.Thread(target=lambda: (
        wait_for(lambda: record.raw_summary().status == "running", 30, "the run to start"),
        store.cancel(record.run_id)))
    canceller.start()
    started = time.time()
    assert worker_mod.Worker(home, poll=0.05).run_one(store.claim_next(os.getpid())) == "cancelled"
    canceller.join()
    assert time.time() - started < 20
    assert record.raw_summary().status == "cancelled"


def test_one_worker_per_home(home, fake_trainer):
    pid = worker_mod.ensure_worker(home)
    wait_for(lambda: worker_mod.worker_pid(home) == pid, 30, "the worker to take its lock")
    assert worker_mod.ensure_worker(home) == pid
    assert os.getsid(pid) == pid  # its own session: closing the app's terminal or browser leaves it alone
    second = subprocess.run([sys.executable, "-m", "heterolora_core.records.worker", "--home", str(home)], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "another worker holds the lock" in second.stdout
    assert worker_mod.stop_worker(home)
    assert worker_mod.worker_pid(home) is None


def test_sigkill_worker_mid_run_then_restart(home, fake_trainer, monkeypatch):
    """The issue's kill test: SIGKILL the worker mid-run, restart, the run reads failed with the
    reason and the queued run still completes."""
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.2")
    store = RunStore()
    long_run = store.enqueue(RunConfig(max_steps=300, seed=1))
    queued_run = store.enqueue(RunConfig(max_steps=4, seed=2))
    worker_pid = worker_mod.ensure_worker(home)
    wait_for(lambda: (long_run.raw_summary().step or 0) >= 2, 60, "the first run to train a few steps")
    trainer_pid = long_run.raw_summary().pid
    assert process_alive(trainer_pid)

    os.kill(worker_pid, signal.SIGKILL)
    # the training process dies with its worker (PR_SET_PDEATHSIG), it is not orphaned
    wait_for(lambda: not process_alive(trainer_pid), 10, "the training process to die with the worker")
    assert worker_mod.worker_pid(home) is None
    assert queued_run.raw_summary().status == "queued"

    # "restart": the app's next page load calls ensure_worker
    rows = {r.run_id: r for r in store.list_runs()}
    assert rows[long_run.run_id].summary.status == "failed"
    error = long_run.raw_summary().error
    assert long_run.raw_summary().status == "failed" and f"worker (pid {worker_pid}) was killed" in error
    new_pid = worker_mod.ensure_worker(home)
    assert new_pid != worker_pid
    wait_for(lambda: queued_run.raw_summary().status == "done", 60, "the queued run to complete")
    assert long_run.raw_summary().status == "failed"  # the new worker did not retry or resurrect it


def test_a_paused_queue_starts_nothing_until_resumed(home, monkeypatch):
    """``"paused": true`` in worker.json: the worker starts no run (a sweep's worker returns); once
    the setting is cleared, the queued run trains."""
    from heterolora_core.records.store import RunStore
    from heterolora_core.records.worker import TRAIN_CMD_ENV, Worker

    monkeypatch.setenv(TRAIN_CMD_ENV, FAKE_TRAIN_CMD)
    store = RunStore(home)
    record = store.enqueue({"task": "mrpc", "mode": "lora", "max_steps": 2})
    store.write_setting("paused", True)
    Worker(home, poll=0.05, stop_when_idle=True, idle_exit=None, log=lambda _: None).serve()
    assert record.raw_summary().status == "queued"
    store.write_setting("paused", False)
    Worker(home, poll=0.05, stop_when_idle=True, idle_exit=None, log=lambda _: None).serve()
    assert record.raw_summary().status == "done"
