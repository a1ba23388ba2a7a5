"""Runs on a Ray cluster: the queue worker with a launcher that makes every run a Ray task.

``python -m heterolora_core.records.worker --executor ray --address auto`` (or
``python -m heterolora_core sweep FILE --wait --executor ray``) is the ordinary queue worker
(:class:`heterolora_core.records.worker.Worker`: the home's lock, claims from the store exactly
once, cancel flags, the truth in every summary) whose :class:`RayLauncher` submits each claimed
run as a Ray task with ``num_cpus`` / ``num_gpus`` of its own. The task (:func:`run_task`) runs on
the node Ray picks and there starts the same training command the local worker starts
(``python -m heterolora_core train --config <run>/config.json --out <run> --no-progress``, or
``$HETEROLORA_TRAIN_CMD``) as a subprocess that dies with the task. So the data home must be on
storage every node sees at the same path, and the project installed on every node.

- Cancel: the worker's ``ray.cancel`` raises KeyboardInterrupt in the task, which stops the
  training process (SIGTERM, then SIGKILL after a grace period); if the task does not end, the
  worker cancels it with ``force=True``, which kills the task's process and the training process
  with it.
- A task that dies (its node or process killed, or the task cancelled) leaves its run ``failed``
  with the reason (``WorkerCrashedError`` ...) and the last line of its ``train.log``; tasks are
  never retried by Ray (``max_retries=0``): a rerun is the sweep's or the user's decision.
- Runs in flight: ``--slots`` when given, else as many as the cluster's CPUs and GPUs hold at
  ``num_cpus`` / ``num_gpus`` per run (read again every few seconds, so added nodes are used).
- The ``HETEROLORA_*`` variables of the driver, ``GLUE_DIR`` and the Hugging Face offline and cache
  variables travel with every task; Ray sets ``CUDA_VISIBLE_DEVICES`` for the GPUs it assigns.

Ray is optional (the ``ray`` extra, ``pip install '.[ray]'``) and imported only when a
:class:`RayLauncher` is made; without it that is a one-line :class:`RayUnavailable`. Torch-free.
"""
from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heterolora_core.records.launchers import TRAIN_CMD_ENV, Ended, LocalLauncher, LocalProcess
from heterolora_core.records.record import RunRecord

RAY_MISSING = ("--executor ray needs Ray, which is not installed: pip install 'heterolora-studio[ray]' "
               "(from the project folder: pip install '.[ray]')")
#: Environment variables of the driver that every task's training process gets.
FORWARDED_PREFIXES = ("HETEROLORA_",)
FORWARDED_NAMES = ("GLUE_DIR", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE",
                   "TRANSFORMERS_OFFLINE")
TASK_POLL_SECONDS = 0.2
TASK_STOP_GRACE_SECONDS = 10.0
CAPACITY_SECONDS = 5.0


class RayUnavailable(ValueError):
    """Ray is not installed, or the cluster cannot be reached or cannot run a run; one line."""


def load_ray() -> Any:
    """The ``ray`` module, or :class:`RayUnavailable` saying how to install it."""
    try:
        import ray  # optional dependency: imported only when the Ray executor is chosen
    except ImportError:
        raise RayUnavailable(RAY_MISSING) from None
    return ray


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of ``environ`` (default: this process's) that travel with every task."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in environ.items() if k in FORWARDED_NAMES or k.startswith(FORWARDED_PREFIXES)}


def run_task(run_dir: str, override: str | None, env: dict[str, str], parallel_runs: int = 1) -> dict[str, Any]:
    """The body of a run's Ray task, on the node Ray chose: train the run in ``run_dir`` with the
    training command (``override``: ``$HETEROLORA_TRAIN_CMD`` of the driver) as a subprocess of
    this task; then add the worker's measurements to its summary here, where the training
    process wrote it (a shared file read from another machine may be stale), and return its exit
    code, peak resident memory (KiB), host and status. A ``ray.cancel`` (KeyboardInterrupt here)
    stops the subprocess before the task ends."""
    record = RunRecord(Path(run_dir))
    launcher = LocalLauncher(override, env)
    started = time.monotonic()
    handle = launcher.start(record, None)
    try:
        while (ended := launcher.poll(handle)) is None:
            time.sleep(TASK_POLL_SECONDS)
    except KeyboardInterrupt:
        _stop_process(launcher, handle)
        raise
    status = None
    if record.exists():
        record.update_summary(process_seconds=round(time.monotonic() - started, 2), parallel_runs=parallel_runs,
                              peak_rss_mb=round(ended.peak_kb / 1024, 1) if ended.peak_kb else None)
        status = record.raw_summary().status
    return {"returncode": ended.returncode, "peak_kb": ended.peak_kb, "host": socket.gethostname(), "status": status}


def _stop_process(launcher: LocalLauncher, handle: LocalProcess) -> None:
    """SIGTERM the training process (it records itself cancelled), SIGKILL it after a grace period."""
    launcher.stop(handle, force=False)
    deadline = time.monotonic() + TASK_STOP_GRACE_SECONDS
    while launcher.poll(handle) is None:
        if time.monotonic() > deadline:
            launcher.stop(handle, force=True)
            deadline = float("inf")
        time.sleep(0.05)


@dataclass
class RayTask:
    """A run submitted as a Ray task: its object ref and, once known, how it ended."""

    ref: Any
    ended: Ended | None = None
    forced: bool = False
    cancelled: bool = False


class RayLauncher:
    """Claimed runs as Ray tasks (see the module docstring).

    Args:
        address: the cluster (``auto``: the one this node belongs to, ``ray://host:10001`` ...);
            None: a Ray started here for this worker (or the one this process already started).
        num_cpus, num_gpus: resources of one run's task.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0):
        for label, value in (("--num-cpus", num_cpus), ("--num-gpus", num_gpus)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise RayUnavailable(f"{label} must be a number >= 0, got {value!r}")
        self.ray = load_ray()
        self.address = address
        self.num_cpus, self.num_gpus = float(num_cpus), float(num_gpus)
        self._started = False
        if not self.ray.is_initialized():
            self._connect()
        self._capacity: tuple[float, int | None] = (0.0, None)
        if self.num_gpus > 0 and not self._resources().get("GPU"):
            self.close()
            raise RayUnavailable(f"the Ray cluster has no GPU; --num-gpus {num_gpus:g} cannot be scheduled")
        self._task = self.ray.remote(run_task).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                       max_retries=0, name="heterolora-train")

    def _connect(self) -> None:
        options: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
        if self.address is None:
            options["include_dashboard"] = False
        try:
            self.ray.init(address=self.address, **options)
        except Exception as exc:  # a wrong address, a cluster that is down: one line, not Ray's traceback
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RayUnavailable(f"cannot start or join Ray (address {self.address or 'local'}): {text}") from None
        self._started = True

    def _resources(self) -> dict[str, float]:
        return dict(self.ray.cluster_resources())

    def capacity(self) -> int | None:
        """Runs the cluster holds at once at this launcher's resources per run (None when a run
        asks for none: the worker's ``slots`` decide)."""
        checked, value = self._capacity
        if time.monotonic() - checked < CAPACITY_SECONDS:
            return value
        resources = self._resources()
        limits = [int(resources.get(name, 0.0) // need) for name, need in (("CPU", self.num_cpus), ("GPU", self.num_gpus))
                  if need > 0]
        value = max(1, min(limits)) if limits else None
        self._capacity = (time.monotonic(), value)
        return value

    def start(self, record: RunRecord, device: str | None, parallel_runs: int = 1) -> RayTask:
        return RayTask(self._task.remote(str(record.path), os.environ.get(TRAIN_CMD_ENV), forwarded_env(),
                                         parallel_runs))

    def poll(self, handle: RayTask) -> Ended | None:
        if handle.ended is not None:
            return handle.ended
        ready, _ = self.ray.wait([handle.ref], timeout=0)
        if not ready:
            return None
        try:
            result = self.ray.get(handle.ref)
            handle.ended = Ended(int(result["returncode"]), int(result.get("peak_kb") or 0), None, result.get("status"))
        except self.ray.exceptions.TaskCancelledError:
            handle.ended = Ended(None, 0, "the Ray task was cancelled")
        except self.ray.exceptions.RayError as exc:
            handle.ended = Ended(None, 0, f"the Ray task died ({describe_ray_error(exc)})")
        return handle.ended

    def stop(self, handle: RayTask, force: bool) -> None:
        if handle.ended is not None or (handle.forced if force else handle.cancelled):
            return
        handle.cancelled, handle.forced = True, handle.forced or force
        try:
            self.ray.cancel(handle.ref, force=force)
        except Exception:  # the task ended meanwhile: poll() says how
            pass

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False


def describe_ray_error(exc: BaseException) -> str:
    """One line for a Ray error: the task's own exception when it raised one, else the first line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(exc)):
        text = str(cause).strip()
        return f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
