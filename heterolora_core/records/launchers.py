"""How the worker runs a claimed run: the training command, and the launchers that run it.

A *launcher* starts the training command of one run folder, says when it has ended and how
(:class:`Ended`), and stops it on request. The queue loop (:class:`heterolora_core.records.worker.Worker`)
is the same for every launcher; two exist:

- :class:`LocalLauncher`: a process on this machine, in its own session, with its output in
  ``<run>/train.log``, killed with the worker (``PR_SET_PDEATHSIG`` on Linux), its peak resident
  memory read from the kernel (``os.wait4``, and ``VmHWM`` while it runs);
- :class:`heterolora_core.records.ray_executor.RayLauncher`: a Ray task on any node of a cluster,
  which runs the same command through a :class:`LocalLauncher` of its own on that node.

Both run :func:`train_command`, so a run's record is the same whoever trained it. Torch-free.
"""
from __future__ import annotations

import ctypes
import os
import resource
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from heterolora_core.records.home import PROJECT_ROOT
from heterolora_core.records.processes import signal_process
from heterolora_core.records.record import RunRecord

#: A shell-style command that replaces ``python -m heterolora_core train`` (tests, demos); the worker
#: appends ``--config <run>/config.json --out <run>``.
TRAIN_CMD_ENV = "HETEROLORA_TRAIN_CMD"
TRAIN_LOG = "train.log"

_PR_SET_PDEATHSIG = 1


def train_command(run_dir: Path, override: str | None = None) -> list[str]:
    """The command that trains the run in ``run_dir`` (a folder the store created): ``override``
    (default: ``$HETEROLORA_TRAIN_CMD``) with the run's flags appended, else the engine's CLI."""
    run_dir = Path(run_dir)
    override = override if override is not None else os.environ.get(TRAIN_CMD_ENV)
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


def die_with_parent(parent_pid: int):
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux only). The C
    library is looked up here, before the fork, so the child only makes one system call."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the run is still reconciled as failed
        prctl = None

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass(frozen=True)
class Ended:
    """How a run's training ended: the exit code of its process, or, when there is none (a Ray
    task that died or was cancelled), ``reason``; the process's peak resident memory in KiB (0:
    not measured); ``status``: the run's status as read where it trained, once the launcher
    recorded its measurements there (None: the worker reads and completes the summary itself)."""

    returncode: int | None
    peak_kb: int = 0
    reason: str | None = None
    status: str | None = None


class Launcher(Protocol):
    """What the worker needs to run claimed runs somewhere."""

    name: str

    def capacity(self) -> int | None:
        """Runs this launcher can hold at once (None: the worker's ``slots`` decide)."""

    def start(self, record: RunRecord, device: str | None, parallel_runs: int) -> Any:
        """Start training ``record`` (``device``: a CUDA device id, or None; ``parallel_runs``: the
        worker's runs at once, for the record); returns a handle."""

    def poll(self, handle: Any) -> Ended | None:
        """How the run ended, or None while it runs."""

    def stop(self, handle: Any, force: bool) -> None:
        """Ask the run to stop (``force``: kill it now)."""

    def close(self) -> None:
        """Release what the launcher holds (called once, when the worker stops)."""


@dataclass
class LocalProcess:
    """A training process started by :class:`LocalLauncher`."""

    proc: subprocess.Popen
    peak_kb: int = 0  # the highest VmHWM seen while polling (the exec'd program's own peak)

    @property
    def pid(self) -> int:
        return self.proc.pid


class LocalLauncher:
    """Training processes on this machine (see the module docstring).

    Args:
        override: the training command (default: ``$HETEROLORA_TRAIN_CMD`` when it is started,
            else the engine's CLI).
        env: variables added to the process's environment.
    """

    name = "local"

    def __init__(self, override: str | None = None, env: dict[str, str] | None = None):
        self.override = override
        self.env = dict(env or {})
        self._own_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def capacity(self) -> int | None:
        return None

    def start(self, record: RunRecord, device: str | None, parallel_runs: int = 1) -> LocalProcess:
        env = {**self.env, **({"CUDA_VISIBLE_DEVICES": device} if device is not None else {})}
        proc = spawn_detached(train_command(record.path, self.override), record.path / TRAIN_LOG, env=env,
                              preexec_fn=die_with_parent(os.getpid()))
        return LocalProcess(proc)

    def poll(self, handle: LocalProcess) -> Ended | None:
        handle.peak_kb = max(handle.peak_kb, vm_hwm_kb(handle.pid))
        ended = reap(handle.proc)
        if ended is None:
            return None
        returncode, peak_kb = ended
        # A child's ru_maxrss includes what it inherited from this process before exec: it is the
        # child's own peak only when it is larger than ours (always for a training run started by
        # the light worker process); else the high-water mark polled from /proc while it ran.
        return Ended(returncode, peak_kb if peak_kb > self._own_peak_kb else handle.peak_kb)

    def stop(self, handle: LocalProcess, force: bool) -> None:
        signal_process(handle.pid, signal.SIGKILL if force else signal.SIGTERM)

    def close(self) -> None:
        pass


def reap(proc: subprocess.Popen) -> tuple[int, int] | None:
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


def vm_hwm_kb(pid: int) -> int:
    """The peak resident set of a live process's own address space (``VmHWM``, KiB; 0 off Linux)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def last_line(path: Path, max_bytes: int = 4096) -> str:
    """The last non-empty line of a log file (a traceback's final line names the error)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""
    except OSError:
        return ""
