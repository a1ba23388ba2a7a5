"""Processes: is a run's process alive, and may the project signal it?

A run record names its training process (``pid``) and that process's start time
(``pid_started_at``, the kernel's create time as psutil reads it). A record is a file anyone can
write, so before the project signals a process named by a record it checks that the process is
one of its own: the start time matches the one recorded and the command line is a project
command (:data:`PROJECT_MARKERS`). A pid that was reused, or a record that names a foreign
process, is never signalled.
"""
from __future__ import annotations

import os
import signal
import socket

import psutil

#: A process is the project's when its command line contains one of these.
PROJECT_MARKERS = ("heterolora_core", "heterolora_testing")
#: psutil reads create times from clock ticks; a recorded one is equal to well within this.
START_TIME_TOLERANCE = 0.05


def this_host() -> str:
    """This machine's host name, as a run record names the machine of its training process."""
    return socket.gethostname()


def process_started_at(pid: int | None = None) -> float | None:
    """The create time of ``pid`` (default: this process), or None when it does not exist."""
    try:
        return psutil.Process(pid or os.getpid()).create_time()
    except (psutil.Error, ValueError):
        return None


def process_alive(pid: int | None, started_at: float | None = None) -> bool:
    """True when ``pid`` is a live (non-zombie) process that started no later than ``started_at``
    (+2 s): a process created after the run started is another program that reused the pid."""
    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started_at is not None and proc.create_time() > float(started_at) + 2.0:
            return False
        return True
    except (psutil.Error, ValueError, OverflowError):
        return False


def is_project_process(pid: int | None, pid_started_at: float | None) -> bool:
    """True only when ``pid`` is alive, was created at ``pid_started_at``, and runs a project
    command. Without a recorded start time nothing is vouched for."""
    if not pid or pid_started_at is None or int(pid) == os.getpid():
        return False
    try:
        proc = psutil.Process(int(pid))
        if abs(proc.create_time() - float(pid_started_at)) > START_TIME_TOLERANCE:
            return False
        command = " ".join(proc.cmdline())
    except (psutil.Error, ValueError, OverflowError):
        return False
    return any(marker in command for marker in PROJECT_MARKERS)


def signal_process(pid: int | None, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to ``pid``'s process group when ``pid`` leads its own group (a training process
    the worker started in a new session), else to ``pid`` alone (never to a shell's group).
    Only for processes the caller started or vouched for (:func:`is_project_process`).
    Returns False when there was nothing to signal (also for no pid: ``os.kill(0, ...)`` and a
    negative pid would signal whole process groups, this process's own included)."""
    if not pid or int(pid) <= 0:
        return False
    pid = int(pid)
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_run_process(pid: int | None, pid_started_at: float | None, sig: int = signal.SIGTERM) -> bool:
    """Signal a process named by a run record, if and only if it is the project's own."""
    if not is_project_process(pid, pid_started_at):
        return False
    return signal_process(int(pid), sig)
