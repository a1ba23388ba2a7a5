"""Running the grid's jobs with the engine's own machinery: the run store queues them, the
worker trains them (``parallel`` slots at once) and measures each run's peak resident memory.

Resumable: a job whose folder holds a finished record with the same settings is skipped; a
failed, cancelled or dead one is removed and rerun; one that is queued or running is left to the
queue. The store's home is the data home when the results folder lies inside it (so the
dashboard lists the grid's runs and its worker may train them), else the results folder itself.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from heterolora_core.records.home import data_home, inside
from heterolora_core.records.record import ACTIVE_STATUSES, RunRecord, Status
from heterolora_core.records.store import RunStore
from heterolora_core.records.worker import Worker
from heterolora_core.sweeps import record_state

from benchmarks.grid.rows import Job

SWEEP_ID = "quality-grid"
PAUSE_FILE = "PAUSE"  # touch <results>/PAUSE to stop a long sitting after the runs in progress


def job_state(job: Job) -> str:
    """``todo`` (no record), ``done``, ``running`` (queued or training) or ``rerun``; SystemExit
    when a finished record was made with other settings (results would mix)."""
    try:
        state = record_state(job.path, job.config)
    except ValueError as exc:
        raise SystemExit(f"{exc}; use another --results folder") from None
    return "running" if state == "busy" else state


def store_home(results: Path) -> Path:
    """The data home when ``results`` lies inside it, else ``results`` itself."""
    home = data_home()
    return home if inside(results, home) else results


def execute(jobs: list[Job], dry_run: bool = False, log=print, pause_file: Path | None = None,
            parallel: int = 1, deadline: float | None = None, results: Path | None = None) -> dict[str, int]:
    """Queue every job that is not done and train the queue; returns counts of what happened: ran,
    skipped (done before), failed, busy (queued or running elsewhere), and paused (not started
    because ``pause_file`` existed or the ``time.monotonic()`` ``deadline`` passed).

    ``parallel`` runs that many jobs at once, each its own process (for a GPU, where one small run
    leaves most of the device idle; on a CPU keep 1, since runs would share the cores and their
    wall times would mean nothing). ``results``: the folder holding the jobs' records (default:
    the folder their paths share), which decides the store's home (:func:`store_home`)."""
    counts = {"ran": 0, "skipped": 0, "failed": 0, "busy": 0}
    states = [(job, job_state(job)) for job in jobs]
    pending = [(j, s) for j, s in states if s in ("todo", "rerun")]
    counts["skipped"] = sum(1 for _, s in states if s == "done")
    counts["busy"] = sum(1 for _, s in states if s == "running")
    for job, state in states:
        if state == "running":
            log(f"busy     {job.name} (queued or running)")
    if counts["skipped"]:
        log(f"skip     {counts['skipped']} finished run(s)")
    if dry_run:
        for job, _ in pending:
            log(" ".join(["python", "-m", "heterolora_core", "train", "--out", str(job.path), *job.config.to_cli_args()]))
        return counts
    blocked = _blocked(pause_file, deadline)
    if blocked:
        log(f"pause    {blocked}: starting none of {len(pending)} run(s); rerun to go on")
        counts["paused"] = len(pending)
        return counts
    if not pending:
        return counts
    home = store_home(results or Path(os.path.commonpath([job.path.parent for job, _ in pending])))
    store = RunStore(home)
    for i, (job, state) in enumerate(pending, 1):
        if state == "rerun":
            previous = RunRecord(job.path).summary()
            log(f"rerun    {job.name} (was {previous.status}: {previous.error or ''})")
            shutil.rmtree(job.path)
        log(f"[{i}/{len(pending)}] queue {job.kind} row {job.row.id} {job.task} seed {job.seed} -> {job.path}")
        store.enqueue({**job.config.to_dict(), "sweep_row": job.row.slug}, sweep_id=SWEEP_ID,
                      folder=job.path.relative_to(home))
    stopped = Worker(home, slots=parallel, stop_when_idle=True, deadline=deadline, pause_file=pause_file,
                     idle_exit=None, log=log).serve()
    if stopped:  # SIGTERM / SIGINT: what was not trained stays queued
        raise SystemExit(stopped)
    _wait_for_other_worker(store, pending, deadline, log)
    for job, _ in pending:
        summary = RunRecord(job.path).summary()
        if summary.status == Status.DONE:
            counts["ran"] += 1
        elif summary.status in ACTIVE_STATUSES:
            counts["paused"] = counts.get("paused", 0) + 1
        else:
            counts["failed"] += 1
            log(f"         FAILED {job.name}: {summary.error}")
    return counts


def _blocked(pause_file: Path | None, deadline: float | None) -> str | None:
    if pause_file is not None and pause_file.exists():
        return f"{pause_file} exists"
    if deadline is not None and time.monotonic() >= deadline:
        return "deadline passed"
    return None


def _wait_for_other_worker(store: RunStore, pending: list[tuple[Job, str]], deadline: float | None, log) -> None:
    """When another worker holds the home (the dashboard's), wait until it has trained the jobs."""
    waiting = [j for j, _ in pending if RunRecord(j.path).summary().status in ACTIVE_STATUSES]
    if waiting:
        log(f"the home's worker trains {len(waiting)} queued run(s); waiting")
    while waiting and (deadline is None or time.monotonic() < deadline):
        time.sleep(2.0)
        waiting = [j for j in waiting if RunRecord(j.path).summary().status in ACTIVE_STATUSES]

