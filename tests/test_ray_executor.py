"""The Ray executor (heterolora_core.records.ray_executor): the queue worker with every run a Ray task,
on a local Ray the test starts (``ray.init(num_cpus=2)``), training with the stand-in trainer.

Without Ray these tests skip and say how to install it, except under ``CI=true``, where they fail
(``.ci/run`` installs the ``ray`` extra)."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from cli_helpers import wait_for
from conftest import FAKE_TRAIN_CMD, PROJECT_ROOT
from heterolora_core.records import store as store_mod
from heterolora_core.records import worker as worker_mod
from heterolora_core.records.ray_executor import RAY_MISSING, RayLauncher, forwarded_env
from heterolora_core.records.store import RunStore
from heterolora_core.training.run_config import RunConfig

INSTALL_HINT = "Ray is not installed: pip install '.[ray]' (or pip install 'ray[default]') to run the Ray executor's tests"


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with two CPUs, started by this test module and shut down after it."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(INSTALL_HINT + " (CI=true: .ci/run installs it)")
        pytest.skip(INSTALL_HINT)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def fake_trainer(monkeypatch):
    monkeypatch.setenv(worker_mod.TRAIN_CMD_ENV, FAKE_TRAIN_CMD)
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.05")


def serve(home, **kwargs) -> worker_mod.Worker:
    """Drain the queue of ``home`` on Ray in this (the main) thread, as ``sweep --wait --executor ray`` does."""
    worker = worker_mod.Worker(home, launcher=RayLauncher(), stop_when_idle=True, idle_exit=None, poll=0.05,
                               log=lambda _: None, **kwargs)
    worker.serve()
    return worker


def in_thread(target) -> threading.Thread:
    """Run ``target`` beside the worker; its failure is re-raised by :func:`joined`."""
    errors = []

    def run():
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors
    thread.start()
    return thread


def joined(thread: threading.Thread) -> None:
    thread.join(60)
    if thread.errors:
        raise thread.errors[0]



def test_three_tiny_runs_train_as_ray_tasks(home, ray_cluster, fake_trainer):
    store = RunStore()
    records = [store.enqueue(RunConfig(max_steps=4, seed=seed)) for seed in range(3)]
    worker = serve(home)
    assert worker.slots == 2  # the cluster's 2 CPUs at 1 CPU per run
    for record in records:
        summary = record.raw_summary()
        assert summary.status == "done", summary.error
        assert summary.host == socket.gethostname() and summary.parallel_runs == 2
        assert summary.peak_rss_mb and summary.peak_rss_mb > 0  # measured by the task on its node
        assert record.metrics() and record.reallocations()  # the same record as a local run's
        assert (record.path / worker_mod.TRAIN_LOG).read_text().strip().endswith("done")
    assert {r.status for r in store.list_runs()} == {"done"}
    assert store.queued() == []


def test_a_task_killed_mid_run_leaves_its_run_failed_and_the_queue_goes_on(home, ray_cluster, fake_trainer, monkeypatch):
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.2")
    store = RunStore()
    long_run = store.enqueue(RunConfig(max_steps=300, seed=1))
    queued_run = store.enqueue(RunConfig(max_steps=3, seed=2))
    seen = {}

    def kill_the_task():
        wait_for(lambda: (long_run.raw_summary().step or 0) >= 2, 60, "the first run to train a few steps")
        trainer = psutil.Process(long_run.raw_summary().pid)
        task = trainer.parent()  # the Ray worker process running the run's task
        seen["task"], seen["trainer"] = task.name(), trainer
        assert queued_run.raw_summary().status == "queued"  # one slot: it waits for the first
        os.kill(task.pid, signal.SIGKILL)

    killer = in_thread(kill_the_task)
    serve(home, slots=1)
    joined(killer)
    assert seen["task"].startswith("ray::")
    wait_for(lambda: not seen["trainer"].is_running() or seen["trainer"].status() == psutil.STATUS_ZOMBIE, 10,
             "the training process to die with its task")
    summary = long_run.raw_summary()
    assert summary.status == "failed"
    assert "the Ray task died (WorkerCrashedError" in summary.error and "before the run finished" in summary.error
    assert queued_run.raw_summary().status == "done"  # the queue went on
    assert {r.run_id: r.status for r in store.list_runs()} == {long_run.run_id: "failed", queued_run.run_id: "done"}


def test_cancel_reaches_a_task_through_ray(home, ray_cluster, fake_trainer, monkeypatch):
    """A run on another node cannot be signalled from here: the worker's ray.cancel stops it."""
    monkeypatch.setenv("HETEROLORA_FAKE_STEP_SECONDS", "0.2")
    monkeypatch.setattr(store_mod, "runs_here", lambda summary: False)  # as if it trained on another node
    store = RunStore()
    record = store.enqueue(RunConfig(max_steps=300))
    pids = {}

    def cancel():
        wait_for(lambda: (record.raw_summary().step or 0) >= 1, 60, "the run to start")
        pids["trainer"] = psutil.Process(record.raw_summary().pid)
        assert store.cancel(record.run_id) == "cancelled"

    canceller = in_thread(cancel)
    started = time.time()
    serve(home)
    joined(canceller)
    assert time.time() - started < 30
    assert record.raw_summary().status == "cancelled"
    wait_for(lambda: not pids["trainer"].is_running() or pids["trainer"].status() == psutil.STATUS_ZOMBIE, 15,
             "the training process to stop")


def test_a_cluster_without_gpus_refuses_a_gpu_run_in_one_line(ray_cluster):
    with pytest.raises(ValueError, match="no GPU; --num-gpus 1 cannot be scheduled"):
        RayLauncher(num_gpus=1)
    assert ray_cluster.is_initialized()  # the test's own Ray is left alone


def test_the_driver_environment_travels_with_each_task():
    env = forwarded_env({"HETEROLORA_FAKE_STEP_SECONDS": "1", "GLUE_DIR": "/g", "HOME": "/root", "PATH": "/bin",
                         "CUDA_VISIBLE_DEVICES": "3"})
    assert env == {"HETEROLORA_FAKE_STEP_SECONDS": "1", "GLUE_DIR": "/g"}  # Ray assigns the GPUs itself


def run_cli(args, home, hide_ray=False):
    """The CLI in a subprocess; ``hide_ray`` makes ``import ray`` fail there, as if Ray were not installed."""
    code = ("import sys\n" + ("sys.modules['ray'] = None\n" if hide_ray else "")
            + "from heterolora_core.cli import main\nsys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "HETEROLORA_HOME": str(home), worker_mod.TRAIN_CMD_ENV: FAKE_TRAIN_CMD}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


SWEEP = "sweep: ray-cli\nbase: {max_steps: 3}\naxes: {seed: [0, 1, 2]}\n"


def test_without_ray_choosing_it_is_one_line_and_queues_nothing(home, tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP)
    out = run_cli(["sweep", str(sweep), "--wait", "--executor", "ray"], home, hide_ray=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {RAY_MISSING}"
    assert RunStore(home).list_runs() == []
    worker = subprocess.run([sys.executable, "-c", "import sys; sys.modules['ray'] = None\n"
                             "from heterolora_core.records.worker import main; sys.exit(main(sys.argv[1:]))",
                             "--home", str(home), "--executor", "ray"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert worker.returncode == 2 and worker.stderr.strip() == f"error: {RAY_MISSING}"


def test_ray_flags_without_the_ray_executor_are_refused(home, tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP)
    out = run_cli(["sweep", str(sweep), "--wait", "--num-gpus", "1"], home)
    assert out.returncode == 2 and out.stderr.strip() == "error: --address, --num-gpus and --num-cpus are for --executor ray"
    out = run_cli(["sweep", str(sweep), "--executor", "ray"], home)
    assert out.returncode == 2 and out.stderr.strip() == "error: --executor trains the runs: give it with --wait"
    assert RunStore(home).list_runs() == []


def test_sweep_wait_on_ray_from_the_command_line(home, tmp_path, ray_cluster):
    """``sweep FILE --wait --executor ray`` starts its own local Ray (no --address) and trains the sweep."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP)
    out = run_cli(["sweep", str(sweep), "--wait", "--executor", "ray", "--num-cpus", "1"], home)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sweep ray-cli: 3 done" in out.stdout
    runs = RunStore(home).list_runs()
    assert len(runs) == 3 and {r.status for r in runs} == {"done"} and {r.sweep_id for r in runs} == {"ray-cli"}
