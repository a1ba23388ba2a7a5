"""The run queue worker: a long-lived process that trains the queued runs one at a time.

The dashboard never trains in its own process. It queues runs in the store
(:class:`heterolora_core.store.RunStore`) and calls :func:`ensure_worker`, which starts this worker
when none is alive for the data home. The worker:

1. holds an exclusive ``flock`` on ``<home>/worker.lock`` for its whole life (so a second app, or a
   Streamlit rerun, never starts a second worker) and writes its pid to ``<home>/worker.pid``;
2. takes the oldest queued run, starts the training command (:func:`train_command`) in a new
   session, with its output in ``<run>/train.log``, and waits for it, watching the run's cancel flag;
3. after the process ends, makes sure the summary tells the truth: ``cancelled`` if the user
   cancelled it, ``failed`` with the exit code and the log's last line if the process ended without
   finishing the run;
4. repeats; it exits after ``idle_exit`` seconds with nothing queued (the app starts a new one on its
   next page load) or when the data home disappears.

Runs are real and nothing is lost: the worker runs in its own session (``start_new_session``), so
closing the browser or stopping Streamlit does not stop it. If the worker itself is killed (even by
SIGKILL), its training process dies with it (``PR_SET_PDEATHSIG`` on Linux), the next reconcile of
the store marks the run ``failed`` with the reason, and a fresh worker takes the queued runs.

Run it by hand with ``python -m heterolora_core.worker [--home DIR]``.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from heterolora_core.runs import PROJECT_ROOT, RunRecord, data_home, process_alive
from heterolora_core.store import RunStore, terminate_process_group

LOCK_NAME = "worker.lock"
PID_NAME = "worker.pid"
LOG_NAME = "worker.log"
SPAWN_STAMP = "worker.spawn"
#: A shell-style command that replaces ``python -m heterolora_core train`` (tests, demos); the worker
#: appends ``--config <run>/config.json --out <run>``.
TRAIN_CMD_ENV = "HETEROLORA_TRAIN_CMD"
TRAIN_LOG = "train.log"
POLL_SECONDS = 0.5
CANCEL_GRACE_SECONDS = 10.0
DEFAULT_IDLE_EXIT = 15 * 60

_PR_SET_PDEATHSIG = 1


def train_command(run_dir: Path) -> list[str]:
    """The command that trains the run in ``run_dir`` (a folder the store created)."""
    run_dir = Path(run_dir)
    override = os.environ.get(TRAIN_CMD_ENV)
    if override:
        return [*shlex.split(override), "--config", str(run_dir / RunRecord.CONFIG), "--out", str(run_dir)]
    # --no-progress: train.log is read by people and its last line becomes a failed run's reason
    return [sys.executable, "-m", "heterolora_core", "train", "--config", str(run_dir / RunRecord.CONFIG),
            "--out", str(run_dir), "--no-progress"]


def _spawn_detached(command: list[str], log_path: Path, **popen_kwargs) -> subprocess.Popen:
    """Start ``command`` from the project root in its own session (a Streamlit rerun or a closed
    browser does not signal it), output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, cwd=str(PROJECT_ROOT), env=_child_env(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen_kwargs)


def _child_env() -> dict[str, str]:
    """The worker's environment, with the project importable from anywhere."""
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _die_with_parent(parent_pid: int):
    """A ``preexec_fn`` that makes the child get SIGKILL when the worker dies (Linux only)."""

    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # not Linux: the run is still reconciled as failed
            pass
        if os.getppid() != parent_pid:  # the worker died before prctl took effect
            os._exit(1)

    return preexec


# ---------------------------------------------------------------------------------------------
# Finding and starting the worker
# ---------------------------------------------------------------------------------------------


def _home(home: str | os.PathLike | None) -> Path:
    return Path(home).expanduser().resolve() if home else data_home()


def worker_pid(home: str | os.PathLike | None = None) -> int | None:
    """The pid of the live worker of ``home``, or None when no process holds the worker lock."""
    home = _home(home)
    lock_path = home / LOCK_NAME
    if not lock_path.exists():
        return None
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int((home / PID_NAME).read_text().strip())
            except (OSError, ValueError):
                return -1  # alive but its pid file is not written yet
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


def ensure_worker(home: str | os.PathLike | None = None) -> int | None:
    """Start a worker for ``home`` unless one is alive; return the live or new worker's pid.

    Cheap enough for every page load: one non-blocking ``flock`` try. A start within the last few
    seconds is not repeated (the new worker may not hold the lock yet); if two apps still start two,
    the second worker finds the lock taken and exits at once.
    """
    home = _home(home)
    pid = worker_pid(home)
    if pid is not None:
        return pid
    home.mkdir(parents=True, exist_ok=True)
    stamp = home / SPAWN_STAMP
    try:
        last_pid, last_time = stamp.read_text().split()
        if time.time() - float(last_time) < 5.0 and process_alive(int(last_pid)):
            return int(last_pid)
    except (OSError, ValueError):
        pass
    proc = _spawn_detached([sys.executable, "-m", "heterolora_core.worker", "--home", str(home)], home / LOG_NAME)
    stamp.write_text(f"{proc.pid} {time.time()}")
    # Reap it when it exits so the app leaves no zombie behind.
    threading.Thread(target=proc.wait, name="heterolora-worker-reaper", daemon=True).start()
    return proc.pid


def stop_worker(home: str | os.PathLike | None = None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Signal the worker of ``home`` (SIGTERM: it stops its training run, marks it failed and exits)
    and wait up to ``timeout`` seconds for it to release the lock. Returns True if one was running."""
    home = _home(home)
    pid = worker_pid(home)
    if not pid or pid < 0:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.time() + timeout
    while time.time() < deadline and worker_pid(home) is not None:
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------------------------------------
# The worker itself
# ---------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised in the worker's main thread by SIGTERM / SIGINT."""


class Worker:
    """The queue loop of one data home. Use :meth:`serve` (takes the lock) in the worker process."""

    def __init__(self, home: str | os.PathLike | None = None, poll: float = POLL_SECONDS, idle_exit: float | None = DEFAULT_IDLE_EXIT):
        self.home = _home(home)
        self.poll = poll
        self.idle_exit = idle_exit
        self.store = RunStore(self.home)
        self.current: tuple[RunRecord, subprocess.Popen] | None = None

    def log(self, message: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker {os.getpid()}: {message}", flush=True)

    def serve(self) -> int:
        """Hold the lock and process the queue until idle or stopped. Returns the exit code."""
        lock = open(self.home / LOCK_NAME, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log("another worker holds the lock; exiting")
            return 0
        (self.home / PID_NAME).write_text(str(os.getpid()))

        def on_signal(signum, _frame):
            raise _Stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.log(f"serving {self.home}")
        try:
            self.loop()
        except _Stop as stop:
            self.log(f"stopped by {stop}")
            self._abandon_current(f"the worker was stopped ({stop}) while this run was training")
        finally:
            try:
                if (self.home / PID_NAME).read_text().strip() == str(os.getpid()):
                    (self.home / PID_NAME).unlink()
            except OSError:
                pass
            lock.close()
        return 0

    def loop(self) -> None:
        idle_since = time.time()
        last_sync = 0.0
        while self.home.exists():
            if time.time() - last_sync > 10.0:
                self.store.sync()  # also reconciles runs that died while no worker watched
                last_sync = time.time()
            record = self.store.next_queued()
            if record is None:
                if self.idle_exit is not None and time.time() - idle_since > self.idle_exit:
                    self.log("idle; exiting")
                    return
                time.sleep(self.poll)
                continue
            self.run_one(record)
            idle_since = time.time()
        self.log("data home is gone; exiting")

    def run_one(self, record: RunRecord) -> str:
        """Train one queued run to its end; returns its final status."""
        run_id = record.run_id
        self.log(f"starting {run_id}")
        self.store.set_worker(run_id, os.getpid())
        proc = _spawn_detached(train_command(record.path), record.path / TRAIN_LOG,
                               preexec_fn=_die_with_parent(os.getpid()))
        self.current = (record, proc)
        cancel_sent_at: float | None = None
        while proc.poll() is None:
            time.sleep(self.poll)
            if not self.home.exists() or not record.path.exists():
                terminate_process_group(proc.pid, signal.SIGKILL)
                break
            if cancel_sent_at is None and self.store.cancel_requested(run_id):
                terminate_process_group(proc.pid, signal.SIGTERM)
                cancel_sent_at = time.time()
            elif cancel_sent_at is not None and time.time() - cancel_sent_at > CANCEL_GRACE_SECONDS:
                terminate_process_group(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
        self.current = None
        status = self._finish(record, returncode)
        self.log(f"{run_id} ended with code {returncode}: {status}")
        return status

    def _finish(self, record: RunRecord, returncode: int) -> str:
        """Make the summary tell the truth after the training process ended."""
        if not record.path.exists():
            return "deleted"
        run_id = record.run_id
        raw = record.raw_summary()
        if self.store.cancel_requested(run_id):
            record.update_summary(status="cancelled", error="cancelled by the user", pid=None, eta_seconds=None,
                                  finished_at=raw.get("finished_at") or time.time())
        elif raw.get("status") in ("queued", "running"):
            reason = f"training process exited with code {returncode} without finishing the run"
            last = _last_line(record.path / TRAIN_LOG)
            if last:
                reason += f": {last}"
            record.update_summary(status="failed", error=reason, pid=None, eta_seconds=None, finished_at=time.time())
        status = record.summary().get("status", "failed")
        self.store.set_status(run_id, status)
        return status

    def _abandon_current(self, reason: str) -> None:
        if self.current is None:
            return
        record, proc = self.current
        terminate_process_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=CANCEL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            terminate_process_group(proc.pid, signal.SIGKILL)
            proc.wait()
        if record.path.exists() and record.raw_summary().get("status") in ("queued", "running"):
            record.update_summary(status="failed", error=reason, pid=None, eta_seconds=None, finished_at=time.time())
        self.store.set_status(record.run_id, record.summary().get("status", "failed"))
        self.current = None


def _last_line(path: Path, max_bytes: int = 4096) -> str:
    """The last non-empty line of a log file (a traceback's final line names the error)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heterolora_core.worker", description="Train the queued runs of a data home, one at a time.")
    parser.add_argument("--home", help="data home (default: $HETEROLORA_HOME or the project's data/)")
    parser.add_argument("--idle-exit", type=float, default=DEFAULT_IDLE_EXIT, help="exit after this many idle seconds (0: never)")
    parser.add_argument("--poll", type=float, default=POLL_SECONDS)
    args = parser.parse_args(argv)
    worker = Worker(args.home, poll=args.poll, idle_exit=args.idle_exit or None)
    return worker.serve()


if __name__ == "__main__":
    sys.exit(main())
