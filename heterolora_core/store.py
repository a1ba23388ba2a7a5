"""The run store: an SQLite index of the run folders under the data home, plus the launch queue.

The run folders (``<home>/runs/<run_id>/``, see :mod:`heterolora_core.runs`) are the truth; the
database ``<home>/runs.sqlite`` only indexes them and adds what a folder does not know: the order of
the queue, the sweep a run belongs to, a pending cancel request, and which worker ran it. Every
:meth:`RunStore.sync` makes the index match the disk: folders written by the CLI appear, deleted
folders disappear, and a ``running`` run whose process is gone is persisted as ``failed``.

The app and the worker (:mod:`heterolora_core.worker`) both use the store from separate processes,
so the database runs in WAL mode and every transaction is short.

This module imports nothing heavy: the Launch page checks inputs with :func:`check_launch`, which
imports the engine's budget planner and data checks lazily.
"""
from __future__ import annotations

import inspect
import os
import shutil
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

from heterolora_core.runs import (
    ACTIVE_STATUSES,
    RunConfig,
    RunRecord,
    data_home,
    new_run_id,
    process_alive,
    runs_dir,
)

DB_NAME = "runs.sqlite"
# Benchmark records (benchmarks/quality_grid.py) live here and are indexed too, so Compare opens them.
RESULTS_DIR = "results"
DELETE_WAIT_SECONDS = 15.0

#: The default run of the Launch page: the embedded model on MRPC, dynamic HeteroLoRA with the
#: grad-norm proxy over q,v + shortcuts, rank 32 with 25% enabled. Sized to finish within about
#: 2 minutes on a 2-core CPU while still reallocating several times (256 examples / batch 16 = 16
#: steps per epoch, a reallocation every 0.2 epoch = every 3 steps, 32 steps = about 10
#: reallocations). Measured: 60 steps took 250 s on the shared 2-core machine (load ~3.7), about
#: 4 s a step, hence 32. Tune here after measuring (``benchmarks/bench_dashboard.py --short-run``).
SHORT_RUN: dict[str, Any] = {
    "model": "embedded",
    "task": "mrpc",
    "mode": "dynamic",
    "proxy": "grad_norm",
    "ranking": "combined",
    "lora_targets": ["q", "v"],
    "shortcuts": True,
    "rank": 32,
    "enable_ratio": 0.25,
    "train_limit": 256,
    "dev_limit": 200,
    "max_length": 128,
    "batch_size": 16,
    "max_steps": 32,
    "epochs": 3.0,
    "realloc_every": 0.2,
    "seed": 0,
}
#: The keys of :data:`SHORT_RUN` that make up the "run length" (what "short run" sets on the form).
RUN_LENGTH_KEYS = ("train_limit", "dev_limit", "max_length", "batch_size", "max_steps", "epochs", "realloc_every")

#: Keys that the store adds to ``config.json`` beyond the RunConfig fields (ignored by the CLI).
STORE_CONFIG_KEYS = ("sweep_id",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    path             TEXT PRIMARY KEY,      -- absolute run folder
    run_id           TEXT NOT NULL,         -- folder name
    created_at       REAL NOT NULL,
    queue_seq        INTEGER,               -- launch order of runs the store queued; NULL for CLI runs
    sweep_id         TEXT,
    status           TEXT,                  -- cache of the effective status
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid       INTEGER,               -- the worker that started the training process
    updated_at       REAL
);
CREATE INDEX IF NOT EXISTS runs_run_id ON runs(run_id);
CREATE INDEX IF NOT EXISTS runs_queue ON runs(status, queue_seq);
"""


class LaunchError(ValueError):
    """A launch refused before anything was queued; the message is one line for the form."""


class RunStore:
    """The run index of one data home (default: :func:`heterolora_core.runs.data_home`)."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home).expanduser().resolve() if home else data_home()
        self.runs_root = runs_dir(self.home)
        self.db_path = self.home / DB_NAME
        self.home.mkdir(parents=True, exist_ok=True)
        self.runs_root.mkdir(parents=True, exist_ok=True)
        self._initialise()

    # -- database --------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _initialise(self) -> None:
        """Switch the database to WAL (persistent in the file) and create the tables.

        Changing the journal mode needs the database to itself and SQLite may refuse it at once
        (without waiting) while another process opens the same new file, so it is retried.
        """
        deadline = time.time() + 30.0
        while True:
            try:
                with closing(self._connect()) as db:
                    if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(_SCHEMA)  # runs its own transaction
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.time() > deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (BEGIN IMMEDIATE so two writers queue instead of deadlocking)."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with closing(self._connect()) as db:
            return db.execute(sql, params).fetchall()

    # -- disk <-> index ----------------------------------------------------------------------------
    def _scan_folders(self) -> list[Path]:
        """Run folders under ``runs/`` and ``results/``: folders holding a ``summary.json`` (or a ``config.json`` directly
        under ``runs/``), not nested inside another run folder (an adapter's own config.json)."""
        found: set[Path] = set()
        for root in (self.runs_root, self.home / RESULTS_DIR):
            if not root.exists():
                continue
            for summary in root.rglob(RunRecord.SUMMARY):
                found.add(summary.parent)
            for config in root.glob(f"*/{RunRecord.CONFIG}"):
                found.add(config.parent)
        folders = sorted(found, key=lambda p: len(p.parts))
        kept: list[Path] = []
        kept_set: set[Path] = set()
        for folder in folders:
            if not any(parent in kept_set for parent in folder.parents):
                kept.append(folder)
                kept_set.add(folder)
        return kept

    def _run_id_of(self, folder: Path) -> str:
        """The folder name under ``runs/``; under ``results/`` the relative path (``results/mrpc/<row>/seed0``),
        since benchmark folders share names such as ``seed0``."""
        results = self.home / RESULTS_DIR
        if folder.resolve().is_relative_to(results.resolve()):
            return f"{RESULTS_DIR}/{folder.resolve().relative_to(results.resolve()).as_posix()}"
        return folder.name

    def sync(self) -> None:
        """Make the index match the folders on disk and refresh every cached status.

        New folders (CLI runs) are added, rows whose folder is gone are removed, and a ``running``
        run whose process is dead is persisted as ``failed`` (see :meth:`reconcile_record`).
        """
        on_disk = {str(p.resolve()): p for p in self._scan_folders()}
        known = {row["path"]: row for row in self._query("SELECT * FROM runs")}
        updates: list[tuple] = []
        inserts: list[tuple] = []
        for key, folder in on_disk.items():
            record = RunRecord(folder)
            row = known.get(key)
            summary = self.reconcile_record(record, row["worker_pid"] if row else None)
            status = summary.get("status")
            if row is None:
                config = record.config()
                created = summary.get("created_at") or _mtime(folder)
                inserts.append((key, self._run_id_of(folder), float(created), config.get("sweep_id"), status, time.time()))
            elif row["status"] != status:
                updates.append((status, time.time(), key))
        gone = [key for key in known if key not in on_disk]
        if inserts or updates or gone:
            with self._tx() as db:
                db.executemany(
                    "INSERT OR IGNORE INTO runs(path, run_id, created_at, sweep_id, status, updated_at) VALUES (?,?,?,?,?,?)",
                    inserts,
                )
                db.executemany("UPDATE runs SET status=?, updated_at=? WHERE path=?", updates)
                db.executemany("DELETE FROM runs WHERE path=?", [(g,) for g in gone])

    def refresh_active(self) -> None:
        """Cheaper than :meth:`sync`: re-read only the runs the index holds as queued or running."""
        rows = self._query("SELECT path, status, worker_pid FROM runs WHERE status IN ('queued', 'running')")
        updates, gone = [], []
        for row in rows:
            record = RunRecord(row["path"])
            if not record.exists():
                gone.append((row["path"],))
                continue
            status = self.reconcile_record(record, row["worker_pid"]).get("status")
            if status != row["status"]:
                updates.append((status, time.time(), row["path"]))
        if updates or gone:
            with self._tx() as db:
                db.executemany("UPDATE runs SET status=?, updated_at=? WHERE path=?", updates)
                db.executemany("DELETE FROM runs WHERE path=?", gone)

    @staticmethod
    def reconcile_record(record: RunRecord, worker_pid: int | None = None) -> dict[str, Any]:
        """The run's effective summary, persisting ``failed`` for a ``running`` run whose process died.

        When the worker that started the run is dead too, the reason says so (the worker was killed
        and its training process died with it).
        """
        raw = record.raw_summary()
        if raw.get("status") == "running" and record.mark_failed_if_dead():
            if worker_pid and not process_alive(worker_pid):
                record.update_summary(
                    error=f"the worker (pid {worker_pid}) was killed while this run was training; "
                    f"its training process (pid {raw.get('pid')}) ended with it",
                    finished_at=time.time(),
                )
        return record.summary()

    # -- reading ---------------------------------------------------------------------------------
    def list_runs(self, sync: bool = True) -> list[dict[str, Any]]:
        """Every run, newest first, as dicts ``run_id, path, created_at, sweep_id, queue_seq,
        status, config, summary`` (``summary`` carries the effective status)."""
        if sync:
            self.sync()
        rows = self._query("SELECT * FROM runs ORDER BY created_at DESC, run_id DESC")
        out = []
        for row in rows:
            record = RunRecord(row["path"])
            out.append({
                "run_id": row["run_id"],
                "path": Path(row["path"]),
                "created_at": row["created_at"],
                "sweep_id": row["sweep_id"],
                "queue_seq": row["queue_seq"],
                "status": row["status"],
                "config": record.config(),
                "summary": record.summary(),
            })
        return out

    def get(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id`` (folder name), or None."""
        rows = self._query("SELECT path FROM runs WHERE run_id=?", (run_id,))
        if not rows:
            candidate = self.runs_root / run_id
            return RunRecord(candidate) if RunRecord(candidate).exists() else None
        return RunRecord(rows[0]["path"])

    def _row(self, run_id: str) -> sqlite3.Row | None:
        rows = self._query("SELECT * FROM runs WHERE run_id=?", (run_id,))
        return rows[0] if rows else None

    def sweeps(self) -> list[dict[str, Any]]:
        """Sweeps, newest first: ``sweep_id, created_at, run_ids`` (run ids in launch order)."""
        rows = self._query(
            "SELECT sweep_id, run_id, created_at FROM runs WHERE sweep_id IS NOT NULL "
            "ORDER BY created_at, queue_seq, run_id"
        )
        sweeps: dict[str, dict[str, Any]] = {}
        for row in rows:
            sweep = sweeps.setdefault(row["sweep_id"], {"sweep_id": row["sweep_id"], "created_at": row["created_at"], "run_ids": []})
            sweep["run_ids"].append(row["run_id"])
        return sorted(sweeps.values(), key=lambda s: s["created_at"], reverse=True)

    def queued(self) -> list[dict[str, Any]]:
        """Runs waiting in the store's queue, oldest first: ``run_id, path, queue_seq``."""
        rows = self._query(
            "SELECT run_id, path, queue_seq FROM runs WHERE status='queued' AND queue_seq IS NOT NULL "
            "AND cancel_requested=0 ORDER BY queue_seq"
        )
        return [dict(row) for row in rows]

    def next_queued(self) -> RunRecord | None:
        """The oldest run the store queued whose folder still says ``queued`` (CLI runs never)."""
        self.refresh_active()
        for row in self.queued():
            record = RunRecord(row["path"])
            if record.raw_summary().get("status") == "queued":
                return record
        return None

    def cancel_requested(self, run_id: str) -> bool:
        row = self._row(run_id)
        return bool(row and row["cancel_requested"])

    # -- writing ---------------------------------------------------------------------------------
    def enqueue(self, config: dict[str, Any] | RunConfig, sweep_id: str | None = None) -> RunRecord:
        """Create a queued run folder for ``config`` and put it at the end of the queue."""
        data = config.to_dict() if isinstance(config, RunConfig) else dict(config)
        if sweep_id:
            data["sweep_id"] = sweep_id
        run_id = new_run_id(data)
        record = RunRecord.create(self.runs_root / run_id, data, status="queued")
        created = record.raw_summary().get("created_at", time.time())
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM runs").fetchone()[0]
            db.execute(
                "INSERT OR REPLACE INTO runs(path, run_id, created_at, queue_seq, sweep_id, status, updated_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (str(record.path.resolve()), run_id, float(created), seq, sweep_id, "queued", time.time()),
            )
        return record

    def enqueue_sweep(self, config: dict[str, Any] | RunConfig, proxies: Sequence[str], seeds: Sequence[int] = (0,)) -> tuple[str, list[RunRecord]]:
        """A proxy sweep: one queued run per (seed, proxy), everything else equal.

        Returns ``(sweep_id, records)``; the runs of the first seed are queued first, so the first
        comparison completes early.
        """
        base = config.to_dict() if isinstance(config, RunConfig) else dict(config)
        if not proxies:
            raise LaunchError("choose at least one proxy for the sweep")
        sweep_id = "sweep-" + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
        records = []
        for seed in seeds or (base.get("seed", 0),):
            for proxy in proxies:
                records.append(self.enqueue({**base, "proxy": proxy, "seed": int(seed)}, sweep_id=sweep_id))
        return sweep_id, records

    def set_worker(self, run_id: str, worker_pid: int | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET worker_pid=?, updated_at=? WHERE run_id=?", (worker_pid, time.time(), run_id))

    def set_status(self, run_id: str, status: str) -> None:
        """Update the cached status of ``run_id`` (the folder's summary is the truth)."""
        with self._tx() as db:
            db.execute("UPDATE runs SET status=?, updated_at=? WHERE run_id=?", (status, time.time(), run_id))

    def cancel(self, run_id: str) -> str:
        """Cancel a queued or running run; returns its status afterwards.

        A queued run is marked ``cancelled`` at once. A running run gets SIGTERM (its whole process
        group when it leads one, as the worker's training processes do) and is marked
        ``cancelled``; the worker, which watches the cancel flag, makes sure it stays so.
        """
        record = self.get(run_id)
        if record is None:
            raise KeyError(run_id)
        summary = record.summary()
        status = summary.get("status")
        if status not in ACTIVE_STATUSES:
            return status
        with self._tx() as db:
            db.execute("UPDATE runs SET cancel_requested=1, status='cancelled', updated_at=? WHERE run_id=?", (time.time(), run_id))
        if status == "running":
            terminate_process_group(summary.get("pid"))
        record.update_summary(status="cancelled", error="cancelled by the user", finished_at=time.time(), eta_seconds=None)
        return "cancelled"

    def delete(self, run_id: str) -> None:
        """Cancel the run if it is active, then remove its folder and its index row."""
        record = self.get(run_id)
        if record is None:
            return
        summary = record.summary()
        if summary.get("status") in ACTIVE_STATUSES:
            self.cancel(run_id)
            # Let the training process finish dying first, so it cannot write into (and recreate)
            # the folder after it is gone.
            deadline = time.time() + DELETE_WAIT_SECONDS
            while time.time() < deadline and process_alive(summary.get("pid"), summary.get("started_at")):
                time.sleep(0.1)
        shutil.rmtree(record.path, ignore_errors=True)
        with self._tx() as db:
            db.execute("DELETE FROM runs WHERE run_id=?", (run_id,))

    def rerun(self, run_id: str) -> RunRecord:
        """Queue a new run with the same RunConfig as ``run_id`` (not in its sweep)."""
        record = self.get(run_id)
        if record is None:
            raise KeyError(run_id)
        config = RunConfig.from_dict(record.config()).to_dict()
        return self.enqueue(config)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def terminate_process_group(pid: int | None, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to ``pid``'s process group when ``pid`` leads its own group (a training process
    the worker started in a new session), else to ``pid`` alone (never to a shell's group).
    Returns False when there was nothing to signal."""
    if not pid:
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


def launch_config(fields: dict[str, Any]) -> dict[str, Any]:
    """A complete ``config.json`` dict from form fields: RunConfig defaults, then ``fields``
    (unknown keys are refused). ``enable_ratio`` / ``match_uniform_rank`` follow the budget
    choice: a ``match_uniform_rank`` of None means the enable ratio states the budget."""
    known = set(RunConfig().to_dict())
    unknown = sorted(set(fields) - known)
    if unknown:
        raise LaunchError(f"unknown run settings: {', '.join(unknown)}")
    return RunConfig.from_dict({**RunConfig().to_dict(), **fields}).to_dict()


def check_launch(config: dict[str, Any]) -> Any:
    """Validate a run config before anything is queued; return the engine's ``BudgetPlan``.

    Raises :class:`LaunchError` with a one-line message for a bad value (rank < 1, an enable ratio
    outside (0, 1], no LoRA target and no shortcut), an unknown model or a budget that enables
    nothing (the engine's ``plan_budget``), or a task whose data cannot be found
    (``heterolora_core.data.check_task_source``).
    """
    try:
        rank = int(config.get("rank", 0))
    except (TypeError, ValueError):
        raise LaunchError("rank must be a whole number ≥ 1") from None
    if rank < 1:
        raise LaunchError(f"rank must be at least 1 (got {rank})")
    mode = config.get("mode", "dynamic")
    ratio = config.get("enable_ratio")
    match_rank = config.get("match_uniform_rank")
    if mode in ("static", "dynamic") and match_rank is None and not (ratio is not None and 0 < float(ratio) <= 1):
        raise LaunchError(f"the enable ratio must be in (0, 1] (got {ratio})")
    if match_rank is not None and int(match_rank) < 1:
        raise LaunchError(f"'match uniform rank' must be at least 1 (got {match_rank})")
    if not config.get("lora_targets") and not config.get("shortcuts"):
        raise LaunchError("the search space is empty: choose at least one LoRA target or turn shortcuts on")
    if not str(config.get("model") or "").strip():
        raise LaunchError("choose a model: 'embedded', a Hugging Face id or a local folder")
    plan = budget_plan(config)
    _check_task(config)
    return plan


def budget_plan(config: dict[str, Any]) -> Any:
    """The engine's budget plan for ``config`` (``heterolora_core.budget.plan_budget``), with its
    ValueError turned into a :class:`LaunchError`; None when the engine has no budget planner."""
    try:
        from heterolora_core.budget import plan_budget
    except ImportError:
        return None

    mode = config.get("mode", "dynamic")
    try:
        return plan_budget(
            model=str(config.get("model")),
            lora_targets=list(config.get("lora_targets") or []),
            shortcuts=bool(config.get("shortcuts")),
            rank=int(config.get("rank")),
            enable_ratio=None if mode == "lora" else (None if config.get("match_uniform_rank") else config.get("enable_ratio")),
            match_uniform_rank=None if mode == "lora" else config.get("match_uniform_rank"),
            mode=mode,
        )
    except ValueError as exc:  # the engine's one-line errors: unknown model, empty budget, bad rank
        raise LaunchError(_one_line(exc)) from None
    except Exception as exc:  # anything else reading a user-named model must not crash the page
        raise LaunchError(f"cannot plan a budget for model {config.get('model')!r}: {_one_line(exc)}") from None


def _check_task(config: dict[str, Any]) -> None:
    """Call ``heterolora_core.data.check_task_source`` with the config values it names."""
    try:
        from heterolora_core import data as data_module
    except ImportError:  # the engine's data module is not there: the CLI will check
        return
    check = getattr(data_module, "check_task_source", None)
    if check is None:
        return
    params = inspect.signature(check).parameters
    kwargs = {name: config.get(name) for name in params if name in config}
    if "task" in params and "task" not in kwargs:
        kwargs["task"] = config.get("task")
    try:
        check(**kwargs)
    except getattr(data_module, "DataError", ValueError) as exc:
        raise LaunchError(_one_line(exc)) from None


def parse_seeds(text: str) -> list[int]:
    """``"0, 13 42"`` -> ``[0, 13, 42]`` (duplicates dropped, order kept); LaunchError otherwise."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        seeds = list(dict.fromkeys(int(p) for p in parts))
    except ValueError:
        raise LaunchError(f"seeds must be whole numbers separated by commas (got {text!r})") from None
    if not seeds:
        raise LaunchError("give at least one seed")
    if any(s < 0 for s in seeds):
        raise LaunchError("seeds must be ≥ 0")
    return seeds


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def task_names() -> list[str]:
    """The tasks the Launch page offers: the engine's list when it has one, else the GLUE tasks."""
    try:
        from heterolora_core import data as data_module

        tasks = getattr(data_module, "TASKS", None)
        if tasks:
            return list(tasks)
    except ImportError:
        pass
    return ["mrpc", "rte", "sst2", "cola", "stsb", "qnli", "qqp", "mnli", "wnli"]


def latest(rows: Iterable[dict[str, Any]], predicate=lambda row: True) -> dict[str, Any] | None:
    """The newest row (rows come newest first from :meth:`RunStore.list_runs`) matching ``predicate``."""
    return next((row for row in rows if predicate(row)), None)
