"""The run queue worker: a long-lived process that trains the queued runs of a data home, up to
``slots`` at a time.

The dashboard never trains in its own process. It queues runs in the store
(:class:`heterolora_core.records.store.RunStore`) and calls :func:`ensure_worker`, which starts this
worker when none is alive for the data home. The worker:

1. holds an exclusive ``flock`` on ``<home>/worker.lock`` for its whole life (so a second app, or a
   Streamlit rerun, never starts a second worker) and writes its pid and start time to
   ``<home>/worker.pid``;
2. fills its free slots with the oldest queued runs (claimed in the store, so none starts twice),
   each a training command (:func:`train_command`) in a new session with its output in
   ``<run>/train.log``, its device assigned by ``CUDA_VISIBLE_DEVICES`` when GPUs are given (one
   per run, or several runs sharing one), and watches every run's cancel flag;
3. after a process ends, reads its peak resident memory from the kernel (``os.wait4``) and makes
   sure the summary tells the truth: ``cancelled`` if the user cancelled it, ``failed`` with the
   exit code and the log's last line if the process ended without finishing the run;
4. repeats; it exits after ``idle_exit`` seconds with nothing to do (the app starts a new one on its
   next page load), when the data home disappears, or (``stop_when_idle``: sweeps and the grid)
   once the queue is empty, a ``deadline`` has passed or a ``pause_file`` exists.

The number of slots, and whether the queue is paused (``"paused": true``: no new run starts, the
running ones finish), are read from ``<home>/worker.json`` (written by the dashboard) at every
loop; slots can also be fixed on the command line. Runs are real and nothing is lost: the worker runs in its own
session, so closing the browser or stopping Streamlit does not stop it. If the worker itself is
killed (even by SIGKILL), its training processes die with it (``PR_SET_PDEATHSIG`` on Linux), the
next reconcile of the store marks those runs ``failed`` with the reason, and a fresh worker takes
the queued runs. One slot's process dying leaves the other slots running.

Run it by hand with ``python -m heterolora_core.records.worker [--home DIR] [--slots N] [--gpus 0,1]``.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from heterolora_core.records.home import PROJECT_ROOT, data_home
from heterolora_core.records.processes import is_project_process, process_alive, process_started_at, signal_process
from heterolora_core.records.record import ACTIVE_STATUSES, RunRecord, Status
from heterolora_core.records.store import RunStore

LOCK_NAME = "worker.lock"
PID_NAME = "worker.pid"
LOG_NAME = "worker.log"
SPAWN_STAMP = "worker.spawn"
#: A shell-style command that replaces ``python -m heterolora_core train`` (tests, demos); the worker
#: appends ``--config <run>/config.json --out <run>``.
TRAIN_CMD_ENV = "HETEROLORA_TRAIN_CMD"
TRAIN_LOG = "train.log"
POLL_SECONDS = 0.5
SYNC_SECONDS = 10.0
CANCEL_GRACE_SECONDS = 10.0
DEFAULT_IDLE_EXIT = 15 * 60
MAX_SLOTS = 64

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


def spawn_detached(command: list[str], log_path: Path, env: dict[str, str] | None = None, **popen_kwargs) -> subprocess.Popen:
    """Start ``command`` from the project root in its own session (a Streamlit rerun or a closed
    browser does not signal it), output appended to ``log_path``."""
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, cwd=str(PROJECT_ROOT), env=child_env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen_kwargs)


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


def _pid_file(home: Path) -> tuple[int, float | None] | None:
    try:
        parts = (home / PID_NAME).read_text().split()
        return int(parts[0]), (float(parts[1]) if len(parts) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None


def worker_pid(home: str | os.PathLike | None = None) -> int | None:
    """The pid of the live worker of ``home``, or None when no process holds the worker lock
    (-1: one holds it but has not written its pid yet)."""
    home = _home(home)
    lock_path = home / LOCK_NAME
    if not lock_path.exists():
        return None
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            found = _pid_file(home)
            return found[0] if found else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


def ensure_worker(home: str | os.PathLike | None = None) -> int | None:
    """Start a worker for ``home`` unless one is alive; return the live or new worker's pid.

    Cheap enough for every page load and every poll: one non-blocking ``flock`` try. A start
    within the last few seconds is not repeated (the new worker may not hold the lock yet); if two
    apps still start two, the second worker finds the lock taken and exits at once.
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
    proc = spawn_detached([sys.executable, "-m", "heterolora_core.records.worker", "--home", str(home)],
                          home / LOG_NAME)
    stamp.write_text(f"{proc.pid} {time.time()}")
    # Reap it when it exits so the app leaves no zombie behind.
    threading.Thread(target=proc.wait, name="heterolora-worker-reaper", daemon=True).start()
    return proc.pid


def stop_worker(home: str | os.PathLike | None = None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Signal the worker of ``home`` (SIGTERM: it stops its training runs, marks them failed and
    exits) and wait up to ``timeout`` seconds for it to release the lock. Only a process that holds
    the lock, with the start time its pid file records, is signalled. True if one was running."""
    home = _home(home)
    pid = worker_pid(home)
    found = _pid_file(home)
    if not pid or pid < 0 or found is None or found[0] != pid or not is_project_process(pid, found[1]):
        return False
    os.kill(pid, sig)
    deadline = time.time() + timeout
    while time.time() < deadline and worker_pid(home) is not None:
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------------------------------------
# The worker itself
# ---------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised in the worker's main thread by SIGTERM / SIGINT."""


@dataclass
class Slot:
    """One training process of the worker."""

    index: int
    record: RunRecord
    proc: subprocess.Popen
    started: float
    device: str | None = None
    cancel_sent_at: float | None = None
    peak_kb: int = 0  # the highest VmHWM seen while polling (the exec'd program's own peak)


class Worker:
    """The queue loop of one data home. Use :meth:`serve` (takes the lock) in the worker process.

    Args:
        slots: runs at once (None: the ``slots`` setting of the home, default 1).
        gpus: CUDA device ids to hand out (``["0", "1"]``); slot i gets ``gpus[i // runs_per_gpu]``.
            None: no ``CUDA_VISIBLE_DEVICES`` is set (a CPU machine, or one GPU shared by all).
        stop_when_idle: exit as soon as nothing is queued or running (sweeps, the grid).
        deadline: a ``time.monotonic()`` after which no run is started (the running ones finish).
        pause_file: while this file exists no run is started.
    """

    def __init__(self, home: str | os.PathLike | None = None, slots: int | None = None, gpus: list[str] | None = None,
                 poll: float = POLL_SECONDS, idle_exit: float | None = DEFAULT_IDLE_EXIT, stop_when_idle: bool = False,
                 deadline: float | None = None, pause_file: Path | None = None, log=None):
        self.home = _home(home)
        self.fixed_slots = slots
        self.gpus = list(gpus) if gpus else None
        self.poll = poll
        self.idle_exit = idle_exit
        self.stop_when_idle = stop_when_idle
        self.deadline = deadline
        self.pause_file = pause_file
        self.store = RunStore(self.home)
        self.running: dict[int, Slot] = {}
        self._log = log
        self._own_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def log(self, message: str) -> None:
        text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker {os.getpid()}: {message}"
        (self._log or (lambda m: print(m, flush=True)))(text)

    @property
    def slots(self) -> int:
        """Runs at once: the fixed number, else the home's ``slots`` setting (1 by default)."""
        if self.fixed_slots is not None:
            return max(1, min(MAX_SLOTS, int(self.fixed_slots)))
        value = self.store.settings().get("slots", 1)
        return max(1, min(MAX_SLOTS, value)) if isinstance(value, int) and not isinstance(value, bool) else 1

    def serve(self) -> int:
        """Hold the lock and process the queue until idle or stopped. Returns the exit code."""
        lock = open(self.home / LOCK_NAME, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log("another worker holds the lock; exiting")
            return 0
        (self.home / PID_NAME).write_text(f"{os.getpid()} {process_started_at()}")

        def on_signal(signum, _frame):
            raise _Stop(signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.log(f"serving {self.home}")
        try:
            self.loop()
        except _Stop as stop:
            self.log(f"stopped by {stop}")
            self.abandon_all(f"the worker was stopped ({stop}) while this run was training")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            found = _pid_file(self.home)
            if found and found[0] == os.getpid():
                (self.home / PID_NAME).unlink(missing_ok=True)
            lock.close()
        return 0

    def loop(self) -> None:
        idle_since = time.time()
        last_sync = 0.0
        while self.home.exists():
            if time.time() - last_sync > SYNC_SECONDS:
                self.store.sync()  # also reconciles runs that died while no worker watched
                last_sync = time.time()
            self.check_running()
            started = self.fill_slots()
            if self.running or started:
                idle_since = time.time()
            elif self.stop_when_idle and (self.blocked() or not self.store.queued()):
                return
            elif self.idle_exit is not None and time.time() - idle_since > self.idle_exit:
                self.log("idle; exiting")
                return
            time.sleep(self.poll)
        self.log("data home is gone; exiting")
        self.abandon_all("the data home disappeared while this run was training")

    def blocked(self) -> str | None:
        """Why no run may start now (the home's ``paused`` setting, a pause file, a passed
        deadline), or None. Running runs always finish."""
        if self.store.settings().get("paused") is True:
            return "the queue is paused (worker.json)"
        if self.pause_file is not None and self.pause_file.exists():
            return f"{self.pause_file} exists"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "the deadline passed"
        return None

    def fill_slots(self) -> int:
        """Start queued runs in free slots; returns how many started."""
        started = 0
        while len(self.running) < self.slots and self.blocked() is None:
            record = self.store.claim_next(os.getpid())
            if record is None:
                break
            free = min(set(range(self.slots)) - set(self.running))
            self.running[free] = self.start(record, free)
            started += 1
        return started

    def start(self, record: RunRecord, index: int) -> Slot:
        device = self.gpus[index * len(self.gpus) // self.slots] if self.gpus else None
        self.log(f"starting {self.store.run_id_of(record.path)} in slot {index}" + (f" on GPU {device}" if device else ""))
        env = {"CUDA_VISIBLE_DEVICES": device} if device is not None else {}
        proc = spawn_detached(train_command(record.path), record.path / TRAIN_LOG, env=env,
                              preexec_fn=_die_with_parent(os.getpid()))
        return Slot(index, record, proc, time.monotonic(), device)

    def check_running(self) -> None:
        """Reap finished processes, forward cancels, stop runs whose folder is gone."""
        for index, slot in list(self.running.items()):
            slot.peak_kb = max(slot.peak_kb, _vm_hwm_kb(slot.proc.pid))
            ended = _reap(slot.proc)
            if ended is not None:
                del self.running[index]
                self.finish(slot, *ended)
                continue
            if not self.home.exists() or not slot.record.path.exists():
                signal_process(slot.proc.pid, signal.SIGKILL)
            elif slot.cancel_sent_at is None and self.store.cancel_requested(self.store.run_id_of(slot.record.path)):
                signal_process(slot.proc.pid, signal.SIGTERM)
                slot.cancel_sent_at = time.monotonic()
            elif slot.cancel_sent_at is not None and time.monotonic() - slot.cancel_sent_at > CANCEL_GRACE_SECONDS:
                signal_process(slot.proc.pid, signal.SIGKILL)

    def run_one(self, record: RunRecord) -> str:
        """Train one run to its end in the calling thread; returns its final status."""
        slot = self.start(record, 0)
        while (ended := _reap(slot.proc)) is None:
            slot.peak_kb = max(slot.peak_kb, _vm_hwm_kb(slot.proc.pid))
            time.sleep(min(self.poll, 0.1))
        return self.finish(slot, *ended)

    def finish(self, slot: Slot, returncode: int, peak_kb: int) -> str:
        """Make the summary tell the truth after the training process ended."""
        record = slot.record
        run_id = self.store.run_id_of(record.path)
        if not record.path.exists():
            self.log(f"{run_id} ended with code {returncode}: its folder was deleted")
            return "deleted"
        raw = record.raw_summary()
        # A child's ru_maxrss includes what it inherited from this process before exec: it is the
        # child's own peak only when it is larger than ours (always for a training run started by
        # the light worker process); else the high-water mark polled from /proc while it ran.
        peak_kb = peak_kb if peak_kb > self._own_peak_kb else slot.peak_kb
        peak = round(peak_kb / 1024, 1) if peak_kb else None
        fields = dict(process_seconds=round(time.monotonic() - slot.started, 2), peak_rss_mb=peak,
                      parallel_runs=self.slots)
        if self.store.cancel_requested(run_id):
            fields.update(status=Status.CANCELLED, error="cancelled by the user", pid=None, eta_seconds=None,
                          finished_at=raw.finished_at or time.time())
        elif raw.status in ACTIVE_STATUSES:
            reason = f"training process exited with code {returncode} without finishing the run"
            last = _last_line(record.path / TRAIN_LOG)
            fields.update(status=Status.FAILED, error=reason + (f": {last}" if last else ""), pid=None,
                          eta_seconds=None, finished_at=time.time())
        record.update_summary(**fields)
        status = record.summary().status
        self.store.set_status(run_id, status)
        self.log(f"{run_id} ended with code {returncode}: {status}")
        return status

    def abandon_all(self, reason: str) -> None:
        """Stop every training process this worker started and record why."""
        for slot in self.running.values():
            signal_process(slot.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_GRACE_SECONDS
        for index, slot in list(self.running.items()):
            ended = None
            while (ended := _reap(slot.proc)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if ended is None:
                signal_process(slot.proc.pid, signal.SIGKILL)
                slot.proc.wait()
            if slot.record.path.exists() and slot.record.raw_summary().status in ACTIVE_STATUSES:
                slot.record.update_summary(status=Status.FAILED, error=reason, pid=None, eta_seconds=None,
                                           finished_at=time.time())
            self.store.set_status(self.store.run_id_of(slot.record.path), slot.record.summary().status)
            del self.running[index]


def _reap(proc: subprocess.Popen) -> tuple[int, int] | None:
    """(exit code, peak RSS in KiB) of a child that has ended, else None; the child is reaped."""
    if proc.returncode is not None:
        return proc.returncode, 0
    try:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:  # reaped elsewhere
        return (proc.returncode if proc.returncode is not None else -1), 0
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, int(usage.ru_maxrss)


def _vm_hwm_kb(pid: int) -> int:
    """The peak resident set of a live process's own address space (``VmHWM``, KiB; 0 off Linux)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


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
    parser = argparse.ArgumentParser(prog="python -m heterolora_core.records.worker",
                                     description="Train the queued runs of a data home.")
    parser.add_argument("--home", help="data home (default: $HETEROLORA_HOME or the project's data/)")
    parser.add_argument("--slots", type=int, help="runs at once (default: the home's setting, else 1)")
    parser.add_argument("--gpus", help="comma list of CUDA device ids to share out between the slots")
    parser.add_argument("--idle-exit", type=float, default=DEFAULT_IDLE_EXIT, help="exit after this many idle seconds (0: never)")
    parser.add_argument("--poll", type=float, default=POLL_SECONDS)
    args = parser.parse_args(argv)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    worker = Worker(args.home, slots=args.slots, gpus=gpus, poll=args.poll, idle_exit=args.idle_exit or None)
    return worker.serve()


if __name__ == "__main__":
    sys.exit(main())
