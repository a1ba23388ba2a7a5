"""The run queue worker: a long-lived process that trains the queued runs of a data home, up to
``slots`` at a time.

The dashboard never trains in its own process. It queues runs in the store
(:class:`heterolora_core.records.store.RunStore`) and calls :func:`ensure_worker`, which starts this
worker when none is alive for the data home. The worker:

1. holds an exclusive ``flock`` on ``<home>/worker.lock`` for its whole life (so a second app, or a
   Streamlit rerun, never starts a second worker) and writes its pid and start time to
   ``<home>/worker.pid``;
2. fills its free slots with the oldest queued runs (claimed in the store, so none starts twice),
   each a training command (:func:`train_command`) started by its launcher
   (:mod:`heterolora_core.records.launchers`: a process in a new session here, with its output in
   ``<run>/train.log``; or a Ray task, :mod:`heterolora_core.records.ray_executor`), its device
   assigned by ``CUDA_VISIBLE_DEVICES`` when GPUs are given (one per run, or several runs sharing
   one), and watches every run's cancel flag;
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

Run it by hand with ``python -m heterolora_core.records.worker [--home DIR] [--slots N] [--gpus 0,1]``,
or on a Ray cluster with ``--executor ray [--address auto] [--num-gpus 1 --num-cpus 2]``.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heterolora_core.records.home import checked_home, data_home
from heterolora_core.records.launchers import (TRAIN_CMD_ENV, TRAIN_LOG, Ended, Launcher, LocalLauncher, last_line,
                                               spawn_detached, train_command)
from heterolora_core.records.processes import is_project_process, process_alive, process_started_at
from heterolora_core.records.ray_executor import RayLauncher
from heterolora_core.records.record import ACTIVE_STATUSES, RunRecord, Status, full_disk
from heterolora_core.records.store import RunStore, StoreError

__all__ = ["TRAIN_CMD_ENV", "TRAIN_LOG", "MAX_SLOTS", "Worker", "ensure_worker", "stop_worker", "worker_pid",
           "train_command", "spawn_detached", "read_slots", "write_slots"]

LOCK_NAME = "worker.lock"
PID_NAME = "worker.pid"
LOG_NAME = "worker.log"
SPAWN_STAMP = "worker.spawn"
POLL_SECONDS = 0.5
SYNC_SECONDS = 10.0
CANCEL_GRACE_SECONDS = 10.0
DEFAULT_IDLE_EXIT = 15 * 60
MAX_SLOTS = 64
SLOTS_SETTING = "slots"


def read_slots(store: RunStore) -> int:
    """The home's ``slots`` setting (runs at once), 1 when unset or unusable, bounded 1..64."""
    value = store.settings().get(SLOTS_SETTING, 1)
    return max(1, min(MAX_SLOTS, value)) if isinstance(value, int) and not isinstance(value, bool) else 1


def write_slots(store: RunStore, slots: int) -> int:
    """Set the home's ``slots`` setting, read by its worker at every loop; ValueError outside 1..64."""
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
        raise ValueError(f"slots must be a whole number from 1 to {MAX_SLOTS}, got {slots!r}")
    store.write_setting(SLOTS_SETTING, slots)
    return slots


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
    home = checked_home(home)  # StoreError for a folder this tool did not make: no worker there
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

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


@dataclass
class Slot:
    """One run the worker is training: its record, the launcher's handle, where it runs."""

    index: int
    record: RunRecord
    handle: Any
    started: float
    device: str | None = None
    cancel_sent_at: float | None = None


class Worker:
    """The queue loop of one data home. Use :meth:`serve` (takes the lock) in the worker process.

    Args:
        slots: runs at once (None: the launcher's capacity, such as a Ray cluster's; for local
            processes the ``slots`` setting of the home, default 1).
        gpus: CUDA device ids to hand out (``["0", "1"]``); slot i gets ``gpus[i * len(gpus) // slots]``.
            None: no ``CUDA_VISIBLE_DEVICES`` is set (a CPU machine, or one GPU shared by all).
        launcher: where runs train (default: :class:`~heterolora_core.records.launchers.LocalLauncher`).
        stop_when_idle: exit as soon as nothing is queued or running (sweeps, the grid).
        deadline: a ``time.monotonic()`` after which no run is started (the running ones finish).
        pause_file: while this file exists no run is started.
    """

    def __init__(self, home: str | os.PathLike | None = None, slots: int | None = None, gpus: list[str] | None = None,
                 poll: float = POLL_SECONDS, idle_exit: float | None = DEFAULT_IDLE_EXIT, stop_when_idle: bool = False,
                 deadline: float | None = None, pause_file: Path | None = None, log=None,
                 launcher: Launcher | None = None):
        self.home = _home(home)
        self.fixed_slots = slots
        self.gpus = list(gpus) if gpus else None
        self.poll = poll
        self.idle_exit = idle_exit
        self.stop_when_idle = stop_when_idle
        self.deadline = deadline
        self.pause_file = pause_file
        self.store = RunStore(self.home)
        self.launcher: Launcher = launcher or LocalLauncher()
        self.running: dict[int, Slot] = {}
        self._log = log

    def log(self, message: str) -> None:
        """One line of the worker's log (control characters of the run ids it names escaped)."""
        from heterolora_core.analysis.text import terminal_text

        text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker {os.getpid()}: {terminal_text(message)}"
        (self._log or (lambda m: print(m, flush=True)))(text)

    @property
    def slots(self) -> int:
        """Runs at once: the fixed number, else the launcher's capacity, else the home's ``slots``
        setting (1 by default)."""
        if self.fixed_slots is not None:
            return max(1, min(MAX_SLOTS, int(self.fixed_slots)))
        capacity = self.launcher.capacity()
        return max(1, capacity) if capacity is not None else read_slots(self.store)

    def serve(self) -> int:
        """Hold the lock and process the queue until idle or stopped. Returns the exit code: 0, or
        128 + the signal's number when SIGTERM / SIGINT stopped it (its callers stop too)."""
        lock = open(self.home / LOCK_NAME, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log("another worker holds the lock; exiting")
            lock.close()
            self.launcher.close()
            return 0
        (self.home / PID_NAME).write_text(f"{os.getpid()} {process_started_at()}")

        def on_signal(signum, _frame):
            raise _Stop(signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.log(f"serving {self.home}" + ("" if self.launcher.name == "local" else f" on {self.launcher.name}"))
        code = 0
        try:
            self.loop()
        except _Stop as stop:
            self.log(f"stopped by {stop}")
            self.abandon_all(f"the worker was stopped ({stop}) while this run was training")
            code = stop.exit_code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            found = _pid_file(self.home)
            if found and found[0] == os.getpid():
                (self.home / PID_NAME).unlink(missing_ok=True)
            lock.close()
            self.launcher.close()
        return code

    def loop(self) -> None:
        idle_since = time.time()
        last_sync = 0.0
        while self.home.exists():
            try:
                if time.time() - last_sync > SYNC_SECONDS:
                    self.store.sync()  # also reconciles runs that died while no worker watched
                    last_sync = time.time()
                self.check_running()
                started = self.fill_slots()
            except StoreError as exc:  # the index locked too long by another process: try again later
                self.log(f"{exc}; retrying")
                time.sleep(self.poll)
                continue
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
        slots = self.slots
        while len(self.running) < slots and self.blocked() is None:
            record = self.store.claim_next(os.getpid())
            if record is None:
                break
            free = min(set(range(slots)) - set(self.running))
            self.running[free] = self.start(record, free)
            started += 1
        return started

    def start(self, record: RunRecord, index: int) -> Slot:
        device = self.gpus[index * len(self.gpus) // self.slots] if self.gpus else None
        self.log(f"starting {self.store.run_id_of(record.path)} in slot {index}" + (f" on GPU {device}" if device else ""))
        return Slot(index, record, self.launcher.start(record, device, self.slots), time.monotonic(), device)

    def check_running(self) -> None:
        """Reap finished runs, forward cancels, stop runs whose folder is gone."""
        for index, slot in list(self.running.items()):
            ended = self.launcher.poll(slot.handle)
            if ended is not None:
                del self.running[index]
                self.finish(slot, ended)
                continue
            if not self.home.exists() or not slot.record.path.exists():
                self.launcher.stop(slot.handle, force=True)
            elif slot.cancel_sent_at is None and self.store.cancel_requested(self.store.run_id_of(slot.record.path)):
                self.launcher.stop(slot.handle, force=False)
                slot.cancel_sent_at = time.monotonic()
            elif slot.cancel_sent_at is not None and time.monotonic() - slot.cancel_sent_at > CANCEL_GRACE_SECONDS:
                self.launcher.stop(slot.handle, force=True)

    def run_one(self, record: RunRecord) -> str:
        """Train one run to its end in the calling thread; returns its final status."""
        slot = self.start(record, 0)
        while (ended := self.launcher.poll(slot.handle)) is None:
            time.sleep(min(self.poll, 0.1))
        return self.finish(slot, ended)

    def finish(self, slot: Slot, ended: Ended) -> str:
        """Make the summary tell the truth after the run's training ended.

        When the launcher read the run's status where it trained (``ended.status``: a Ray task,
        whose node wrote the summary on shared storage and added the measurements itself), that
        word is taken and the summary is written here only to correct it (cancelled, failed), so a
        stale read of a shared file is never written back over a finished run's results."""
        record = slot.record
        run_id = self.store.run_id_of(record.path)
        how = f"code {ended.returncode}" if ended.returncode is not None else ended.reason
        if not record.path.exists():
            self.log(f"{run_id} ended ({how}): its folder was deleted")
            return "deleted"
        raw = record.raw_summary()
        status = ended.status or raw.status
        fields = {} if ended.status else measured(slot, ended, self.slots)
        if self.store.cancel_requested(run_id):
            if ended.status != Status.CANCELLED:
                fields.update(status=Status.CANCELLED, error="cancelled by the user", pid=None, eta_seconds=None,
                              finished_at=raw.finished_at or time.time())
        elif status in ACTIVE_STATUSES:
            fields.update(status=Status.FAILED, error=failure_reason(record, ended), pid=None,
                          eta_seconds=None, finished_at=time.time())
        if fields:
            try:
                record.update_summary(**fields)
            except OSError as exc:  # a full disk: the store's next sync records the run as failed
                self.log(f"{run_id}: cannot write its summary ({exc})")
            status = record.summary().status
        self.store.set_status(run_id, status)
        self.log(f"{run_id} ended ({how}): {status}")
        return status

    def abandon_all(self, reason: str) -> None:
        """Stop every run this worker started and record why."""
        for slot in self.running.values():
            self.launcher.stop(slot.handle, force=False)
        deadline = time.monotonic() + CANCEL_GRACE_SECONDS
        for index, slot in list(self.running.items()):
            while self.launcher.poll(slot.handle) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.launcher.poll(slot.handle) is None:
                self.launcher.stop(slot.handle, force=True)
                kill_deadline = time.monotonic() + CANCEL_GRACE_SECONDS
                while self.launcher.poll(slot.handle) is None and time.monotonic() < kill_deadline:
                    time.sleep(0.05)
            if slot.record.path.exists() and slot.record.raw_summary().status in ACTIVE_STATUSES:
                slot.record.update_summary(status=Status.FAILED, error=reason, pid=None, eta_seconds=None,
                                           finished_at=time.time())
            self.store.set_status(self.store.run_id_of(slot.record.path), slot.record.summary().status)
            del self.running[index]


def measured(slot: Slot, ended: Ended, parallel_runs: int) -> dict[str, Any]:
    """The summary fields the worker measures of a run's process: its wall time, peak memory, and
    how many runs trained at once."""
    peak = round(ended.peak_kb / 1024, 1) if ended.peak_kb else None
    return {"process_seconds": round(time.monotonic() - slot.started, 2), "peak_rss_mb": peak,
            "parallel_runs": parallel_runs}


def failure_reason(record: RunRecord, ended: Ended) -> str:
    """Why a run that ended without finishing failed: its process's exit code or its task's end,
    and the last line of its ``train.log`` (a traceback's last line names the error)."""
    if ended.returncode is not None:
        reason = f"training process exited with code {ended.returncode} without finishing the run"
    else:
        reason = f"{ended.reason or 'the training task ended'} before the run finished"
    disk = full_disk(record.path)
    if disk:  # its traceback may not have reached train.log either
        return f"{reason}: {disk}"
    last = last_line(record.path / TRAIN_LOG)
    return reason + (f": {last}" if last else "")


def _gpu_list(text: str | None) -> list[str] | None:
    return [g.strip() for g in text.split(",") if g.strip()] if text else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m heterolora_core.records.worker",
                                     description="Train the queued runs of a data home.")
    parser.add_argument("--home", help="data home (default: $HETEROLORA_HOME or the project's data/)")
    parser.add_argument("--slots", type=int, help="runs at once (default: the home's setting, else 1; with Ray: "
                                                  "as many as the cluster's CPUs and GPUs hold)")
    parser.add_argument("--gpus", help="comma list of CUDA device ids to share out between the slots: slot i gets "
                                       "gpus[i * len(gpus) // slots] (local executor only)")
    parser.add_argument("--idle-exit", type=float, default=DEFAULT_IDLE_EXIT, help="exit after this many idle seconds (0: never)")
    parser.add_argument("--poll", type=float, default=POLL_SECONDS)
    add_executor_arguments(parser)
    return parser


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor local|ray`` and the Ray flags (shared with ``python -m heterolora_core sweep``)."""
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local: processes on this machine; ray: a Ray task per run on a cluster "
                             "(needs the ray extra: pip install '.[ray]')")
    parser.add_argument("--address", help="with --executor ray: the cluster to join (auto: the one this node belongs "
                                          "to; default: start a local Ray)")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="with --executor ray: GPUs per run (default: 0)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="with --executor ray: CPUs per run (default: 1)")


def launcher_from_args(args: argparse.Namespace) -> Launcher | None:
    """The launcher the executor flags ask for (None: the local default); ValueError with one line
    for a bad combination or a missing Ray."""
    from_ray = args.executor == "ray"
    if not from_ray:
        if args.address or args.num_gpus or args.num_cpus != 1.0:
            raise ValueError("--address, --num-gpus and --num-cpus are for --executor ray")
        return None
    if getattr(args, "gpus", None):
        raise ValueError("--gpus is for the local executor; with --executor ray, Ray assigns GPUs (--num-gpus)")
    return RayLauncher(address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        launcher = launcher_from_args(args)
        worker = Worker(args.home, slots=args.slots, gpus=_gpu_list(args.gpus), poll=args.poll,
                        idle_exit=args.idle_exit or None, launcher=launcher)
    except ValueError as exc:  # a bad flag, a folder that is not a data home (StoreError)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return worker.serve()


if __name__ == "__main__":
    sys.exit(main())
