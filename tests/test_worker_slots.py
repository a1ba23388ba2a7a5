"""The worker's slots: several runs at once on one machine, each its own training process (the
stand-in trainer), one slot's death leaving the others alone."""
import os
import signal
import threading

import psutil
import pytest

from cli_helpers import wait_for
from conftest import FAKE_TRAIN_CMD
from heterolora_core.records import worker as worker_mod
from heterolora_core.records.store import RunStore
from heterolora_core.training.run_config import RunConfig


@pytest.fixture
def fake_trainer(monkeypatch):
    monkeypatch.setenv(worker_mod.TRAIN_CMD_ENV, FAKE_TRAIN_CMD)
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.1")



def drain(home, **kwargs) -> None:
    worker_mod.Worker(home, stop_when_idle=True, idle_exit=None, poll=0.05, log=lambda _: None, **kwargs).serve()


def test_the_slots_setting_is_bounded(home):
    store = RunStore()
    assert worker_mod.read_slots(store) == 1  # unset
    for bad in (0, 65, -1, True, 2.0, "2"):
        with pytest.raises(ValueError, match="slots must be a whole number from 1 to 64"):
            worker_mod.write_slots(store, bad)
    assert worker_mod.write_slots(store, 64) == 64 and worker_mod.read_slots(store) == 64
    store.write_setting("slots", 1000)  # a hand-edited worker.json is bounded too
    assert worker_mod.read_slots(store) == 64
    store.write_setting("slots", "many")
    assert worker_mod.read_slots(store) == 1


def test_two_slots_train_two_runs_at_the_same_time(home, fake_trainer):
    store = RunStore()
    worker_mod.write_slots(store, 2)  # what the dashboard's setting writes; the worker reads it as it runs
    first, second = (store.enqueue(RunConfig(max_steps=10, seed=seed)) for seed in (1, 2))
    drain(home)
    a, b = first.raw_summary(), second.raw_summary()
    assert a.status == b.status == "done"
    assert max(a.started_at, b.started_at) < min(a.finished_at, b.finished_at)  # the running intervals overlap
    assert a.pid is None and a.parallel_runs == b.parallel_runs == 2


def test_a_killed_slot_fails_alone_and_the_queue_goes_on(home, fake_trainer):
    store = RunStore()
    victim = store.enqueue(RunConfig(max_steps=300, seed=1))
    survivor = store.enqueue(RunConfig(max_steps=40, seed=2))
    queued = store.enqueue(RunConfig(max_steps=3, seed=3))
    seen = {}

    def kill_one():
        wait_for(lambda: all((r.raw_summary().step or 0) >= 2 for r in (victim, survivor)), 60,
                 "both slots to train")
        victim_pid, survivor_pid = victim.raw_summary().pid, survivor.raw_summary().pid
        os.kill(victim_pid, signal.SIGKILL)  # the worker's own child: a training process of the project
        wait_for(lambda: victim.raw_summary().status == "failed", 30, "the killed run to be marked failed")
        seen["survivor"] = (survivor.raw_summary().status, psutil.pid_exists(survivor_pid),
                            psutil.Process(survivor_pid).status() != psutil.STATUS_ZOMBIE)
        seen["queued"] = queued.raw_summary().status

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    drain(home, slots=2)
    killer.join(60)
    assert seen["survivor"] == ("running", True, True)  # still training after the other slot died
    assert seen["queued"] in ("queued", "running")  # the freed slot takes the next run
    error = victim.raw_summary().error
    assert victim.raw_summary().status == "failed"
    assert error.startswith("training process exited with code -9 without finishing the run")
    assert survivor.raw_summary().status == "done" and queued.raw_summary().status == "done"
    assert survivor.raw_summary().step == 40
