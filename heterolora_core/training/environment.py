"""Where a run executes: its device, its place in a ``torchrun`` job, the package versions it
records, and the signal that cancels it."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from heterolora_core.vocab import REPORT_TARGETS

RECORDED_PACKAGES = ("torch", "transformers", "datasets", "evaluate", "peft", "accelerate")


def check_report_to(names: Sequence[str], installed: Callable[[str], object] = importlib.util.find_spec) -> list[str]:
    """The trackers of ``--report-to``, each checked: a known name whose package is installed
    (``installed(package)`` is truthy). ValueError with one line naming the first problem."""
    out: list[str] = []
    for name in names:
        if name not in REPORT_TARGETS:
            raise ValueError(f"unknown --report-to {name!r}; choose from {', '.join(REPORT_TARGETS)}")
        if not installed(REPORT_TARGETS[name]):
            raise ValueError(f"--report-to {name} needs the {REPORT_TARGETS[name]} package: pip install {REPORT_TARGETS[name]}")
        if name not in out:
            out.append(name)
    return out


class RunCancelled(Exception):
    """The run received SIGTERM (a cancel from the dashboard) or SIGINT (Ctrl-C)."""


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when present, else ``cpu``; ValueError for an unavailable or unknown device."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return name


def environment_info() -> dict[str, Any]:
    """Package versions and the project's git commit, stored in config.json."""
    versions = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    commit = None
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"versions": versions, "git_commit": commit, "python": sys.version.split()[0]}


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def mean_across_ranks(scores: dict[str, float]) -> dict[str, float]:
    """Every rank's scores averaged (an all-reduce), so every rank selects the same set."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return scores
    names = sorted(scores)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    values = torch.tensor([scores[n] for n in names], dtype=torch.float64, device=backend_device)
    dist.all_reduce(values)
    values /= dist.get_world_size()
    return {n: float(v) for n, v in zip(names, values.cpu())}


class CancelOnSignal:
    """While active, SIGTERM raises :class:`RunCancelled` in the main thread; the previous handler
    is restored on exit. Off the main thread, where Python allows no signal handlers, it does
    nothing (the run then simply cannot be cancelled by a signal)."""

    def __init__(self) -> None:
        self._previous = None
        self._installed = False

    def __enter__(self) -> "CancelOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)
            self._installed = True
        return self

    @staticmethod
    def _raise(signum, frame):
        raise RunCancelled(f"cancelled by signal {signal.Signals(signum).name}")

    def __exit__(self, *exc) -> None:
        if self._installed:
            # None: the previous handler was not installed from Python; the default is the best guess
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
