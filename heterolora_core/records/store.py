"""The run store: an SQLite index of the run folders under the data home, plus the launch queue.

The run folders (``<home>/runs/<run_id>/`` and the benchmark records under ``<home>/results/``;
see :mod:`heterolora_core.records.record`) are the truth; the database ``<home>/runs.sqlite`` only
indexes them and adds what a folder does not know: the order of the queue, the sweep a run
belongs to, a pending cancel request, and which worker ran it. :meth:`RunStore.sync` makes the
index match the disk: folders written by the CLI appear, deleted folders disappear, a ``queued``
folder without its queue position gets one, and a ``running`` run whose process is gone is
persisted as ``failed``.

Consistency under concurrency (the app, the worker and CLI runs use one store from separate
processes): every operation is one short ``BEGIN IMMEDIATE`` transaction; a sync reads the index
*before* it scans the disk and re-checks a folder's absence inside its write transaction, so a
run enqueued meanwhile is never dropped; claiming a queued run is a conditional update, so each
run is started exactly once.

Safety: every path the store deletes is inside the data home after resolving symbolic links, and
a run folder that is itself a symbolic link (or lies under one) is listed but never deleted.
Records are parsed defensively, so one corrupt record is listed with its problem and nothing
else is affected.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from heterolora_core.records.home import data_home, inside, runs_dir
from heterolora_core.records.processes import process_alive, signal_run_process
from heterolora_core.records.record import (ACTIVE_STATUSES, RunRecord, RunSummary, Status, atomic_write_json,
                                            effective_summary, file_stamp, new_run_id, process_ended, process_gone,
                                            read_json, runs_here)
from heterolora_core.training.run_config import RunConfig

DB_NAME = "runs.sqlite"
DELETE_WAIT_SECONDS = 15.0
#: The key of config.json naming the sweep a run belongs to (also in the index).
SWEEP_KEY = "sweep_id"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    path             TEXT PRIMARY KEY,      -- absolute run folder (as found: not resolved)
    run_id           TEXT NOT NULL,         -- folder name under runs/, relative path under results/
    created_at       REAL NOT NULL,
    queue_seq        INTEGER,               -- launch order of queued runs; NULL for CLI runs
    sweep_id         TEXT,
    status           TEXT,                  -- cache of the effective status
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid       INTEGER,               -- the worker that started the training process
    updated_at       REAL
);
CREATE INDEX IF NOT EXISTS runs_run_id ON runs(run_id);
CREATE INDEX IF NOT EXISTS runs_queue ON runs(status, queue_seq);
"""


class StoreError(ValueError):
    """An operation the store refuses (a path outside the home, a symlinked run); one line."""


@dataclass
class StoredRun:
    """One run as the store lists it: index fields, the parsed config and summary, and what is
    wrong with the record (``problem``: None when it is sound)."""

    run_id: str
    path: Path
    created_at: float
    sweep_id: str | None
    queue_seq: int | None
    config: RunConfig | None  # None: config.json missing, corrupt or mistyped (see problem)
    summary: RunSummary  # the effective status
    problem: str | None = None
    is_link: bool = False  # the folder is (or lies under) a symbolic link: never deleted
    versions: dict[str, str] | None = None  # package versions config.json records (torch, transformers, ...)

    @property
    def status(self) -> str:
        return self.summary.status

    @property
    def record(self) -> RunRecord:
        return RunRecord(self.path)


@dataclass
class SweepEntry:
    """A sweep in the index: its id, when its first run was created, its runs in launch order."""

    sweep_id: str
    created_at: float
    run_ids: list[str]


class RunStore:
    """The run index of one data home (default: :func:`heterolora_core.records.home.data_home`)."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home).expanduser().resolve() if home else data_home()
        self.runs_root = runs_dir(self.home)
        self.db_path = self.home / DB_NAME
        self.home.mkdir(parents=True, exist_ok=True)
        self._parsed: dict[str, tuple[tuple, tuple]] = {}  # path -> (file stamps, what _read returns)
        self._initialise()

    # -- database --------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=60.0, isolation_level=None)
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
    def scan(self) -> list[Path]:
        """Run folders anywhere under the home (``runs/``, benchmark records under ``results/``,
        sweeps' own folders), without following symbolic links: folders holding a
        ``summary.json`` or ``config.json``, not nested inside another run folder (an adapter's
        own config.json). A symbolic link to a folder holding a record is listed too (as itself,
        never resolved), so the dashboard can show it for what it is."""
        return _walk_runs(self.home)

    def run_id_of(self, folder: Path) -> str:
        """The folder name under ``runs/`` (runs launched by the CLI or the dashboard get unique
        names); elsewhere the path relative to the home (``results/mrpc/<row>/seed0``), since
        benchmark and sweep folders share names such as ``seed0``."""
        folder = Path(folder)
        if folder.is_relative_to(self.runs_root):
            return folder.name
        return folder.relative_to(self.home).as_posix() if folder.is_relative_to(self.home) else str(folder)

    def sync(self) -> None:
        """Make the index match the folders on disk and refresh every cached status (see the
        module docstring for why the index is read before the disk)."""
        known = {row["path"]: row for row in self._query("SELECT * FROM runs")}
        on_disk = {str(p): p for p in self.scan()}
        inserts, updates = [], []
        for key, folder in on_disk.items():
            row = known.get(key)
            summary = self.reconcile_record(RunRecord(folder), row["worker_pid"] if row else None)
            if row is None:
                inserts.append((key, self.run_id_of(folder), _created_at(folder, summary),
                                _sweep_of(RunRecord(folder)), summary.status, time.time()))
            elif row["status"] != summary.status:
                updates.append((summary.status, time.time(), key))
        gone = [key for key in known if key not in on_disk]
        if not (inserts or updates or gone or self._unsequenced()):
            return
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO runs(path, run_id, created_at, sweep_id, status, updated_at) "
                           "VALUES (?,?,?,?,?,?)", inserts)
            db.executemany("UPDATE runs SET status=?, updated_at=? WHERE path=?", updates)
            # re-checked inside the transaction: a folder that exists now is not gone
            db.executemany("DELETE FROM runs WHERE path=?", [(g,) for g in gone if not Path(g).exists()])
            # a queued folder without a queue position (its row was lost): give it one, in creation order
            for row in db.execute("SELECT path FROM runs WHERE status='queued' AND queue_seq IS NULL "
                                  "AND cancel_requested=0 ORDER BY created_at").fetchall():
                db.execute("UPDATE runs SET queue_seq=(SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM runs) "
                           "WHERE path=?", (row["path"],))

    def _unsequenced(self) -> bool:
        return bool(self._query("SELECT 1 FROM runs WHERE status='queued' AND queue_seq IS NULL "
                                "AND cancel_requested=0 LIMIT 1"))

    def refresh_active(self) -> None:
        """Cheaper than :meth:`sync`: re-read only the runs the index holds as queued or running."""
        rows = self._query("SELECT path, status, worker_pid FROM runs WHERE status IN ('queued', 'running')")
        updates, gone = [], []
        for row in rows:
            record = RunRecord(row["path"])
            if not record.exists():
                gone.append(row["path"])
                continue
            status = self.reconcile_record(record, row["worker_pid"]).status
            if status != row["status"]:
                updates.append((status, time.time(), row["path"]))
        if updates or gone:
            with self._tx() as db:
                db.executemany("UPDATE runs SET status=?, updated_at=? WHERE path=?", updates)
                db.executemany("DELETE FROM runs WHERE path=?", [(g,) for g in gone if not Path(g).exists()])

    @staticmethod
    def reconcile_record(record: RunRecord, worker_pid: int | None = None) -> RunSummary:
        """The run's effective summary, persisting ``failed`` for a ``running`` run whose process died.

        When the worker that started the run is dead too, the reason says so (the worker was killed
        and its training process died with it). A run training on another machine (a Ray node) is
        judged by its worker alone (:func:`~heterolora_core.records.record.process_gone`).
        """
        raw = record.raw_summary()
        if raw.status == Status.RUNNING and process_gone(raw, worker_pid):
            reason = process_ended(raw.pid)
            if not runs_here(raw):
                reason = (f"the worker (pid {worker_pid}) that ran it on {raw.host} is gone, and its task "
                          f"(process {raw.pid} there) with it")
            elif worker_pid and not process_alive(worker_pid):
                reason = (f"the worker (pid {worker_pid}) was killed while this run was training; "
                          f"its training process (pid {raw.pid}) ended with it")
            if not _is_link(record.path):
                record.update_summary(status=Status.FAILED, error=raw.error or reason, pid=None,
                                      finished_at=time.time())
            raw.status, raw.error = Status.FAILED.value, raw.error or reason
        return raw

    # -- reading ---------------------------------------------------------------------------------
    def list_runs(self, sync: bool = True) -> list[StoredRun]:
        """Every run, newest first (``summary`` carries the effective status)."""
        if sync:
            self.sync()
        rows = self._query("SELECT * FROM runs ORDER BY created_at DESC, run_id DESC")
        return [self._stored(row) for row in rows]

    def _read(self, path: Path) -> tuple[RunConfig | None, str | None, RunSummary, dict[str, str] | None]:
        """(config, its problem, raw summary, recorded versions) of a record, re-parsed only when a
        file changed."""
        stamp = (file_stamp(path / RunRecord.CONFIG), file_stamp(path / RunRecord.SUMMARY))
        hit = self._parsed.get(str(path))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        record = RunRecord(path)
        value = (*record.run_config(), record.raw_summary(), record.versions())
        self._parsed[str(path)] = (stamp, value)
        return value

    def _stored(self, row: sqlite3.Row) -> StoredRun:
        path = Path(row["path"])
        config, config_problem, raw, versions = self._read(path)
        summary = effective_summary(raw)
        problems = ([config_problem] if config_problem else []) + summary.problems
        return StoredRun(row["run_id"], path, row["created_at"], row["sweep_id"], row["queue_seq"], config, summary,
                         "; ".join(problems) or None, _is_link(path), versions)

    def get(self, run_id: str) -> StoredRun | None:
        """The run indexed as ``run_id``, or None (ids are looked up, never turned into paths)."""
        rows = self._query("SELECT * FROM runs WHERE run_id=?", (str(run_id),))
        if not rows:
            self.sync()
            rows = self._query("SELECT * FROM runs WHERE run_id=?", (str(run_id),))
        return self._stored(rows[0]) if rows else None

    def _row(self, run_id: str) -> sqlite3.Row | None:
        rows = self._query("SELECT * FROM runs WHERE run_id=?", (run_id,))
        return rows[0] if rows else None

    def sweeps(self) -> list[SweepEntry]:
        """Sweeps, newest first (run ids in launch order)."""
        rows = self._query("SELECT sweep_id, run_id, created_at FROM runs WHERE sweep_id IS NOT NULL "
                           "ORDER BY created_at, queue_seq, run_id")
        sweeps: dict[str, SweepEntry] = {}
        for row in rows:
            sweeps.setdefault(row["sweep_id"], SweepEntry(row["sweep_id"], row["created_at"], [])).run_ids.append(row["run_id"])
        return sorted(sweeps.values(), key=lambda s: s.created_at, reverse=True)

    def queued(self) -> list[dict[str, Any]]:
        """Runs waiting in the store's queue, oldest first: ``run_id, path, queue_seq``."""
        rows = self._query("SELECT run_id, path, queue_seq FROM runs WHERE status='queued' AND queue_seq IS NOT NULL "
                           "AND cancel_requested=0 ORDER BY queue_seq")
        return [dict(row) for row in rows]

    def claim_next(self, worker_pid: int) -> RunRecord | None:
        """Take the oldest queued run for ``worker_pid``, or None.

        The claim is one conditional update of the run's ``worker_pid``, so no run is started
        twice; a run claimed by a live worker (still starting: its folder says ``queued`` until
        the training process claims it) is passed over, one claimed by a dead worker is taken.
        A folder that no longer says ``queued`` (a cancelled one) is skipped and its row refreshed.
        """
        self.refresh_active()
        rows = self._query("SELECT run_id, path, worker_pid FROM runs WHERE status='queued' AND queue_seq IS NOT NULL "
                           "AND cancel_requested=0 ORDER BY queue_seq")
        for row in rows:
            owner = row["worker_pid"]
            if owner is not None and (owner == worker_pid or process_alive(owner)):
                continue
            record = RunRecord(row["path"])
            if record.raw_summary().status != Status.QUEUED or _is_link(record.path):
                self.set_status(row["run_id"], record.summary().status)
                continue
            with self._tx() as db:
                taken = db.execute("UPDATE runs SET worker_pid=?, updated_at=? WHERE path=? AND status='queued' "
                                   "AND cancel_requested=0 AND worker_pid IS ?",
                                   (worker_pid, time.time(), row["path"], owner)).rowcount
            if taken:
                return record
        return None

    def cancel_requested(self, run_id: str) -> bool:
        row = self._row(run_id)
        return bool(row and row["cancel_requested"])

    # -- writing ---------------------------------------------------------------------------------
    def enqueue(self, config: dict[str, Any] | RunConfig, sweep_id: str | None = None,
                folder: str | os.PathLike | None = None) -> RunRecord:
        """Create a queued run folder for ``config`` and put it at the end of the queue.

        ``folder``: where the record goes, relative to the home (default ``runs/<new run id>``);
        it must stay inside the home and must not hold a run already.
        """
        data = config.to_dict() if isinstance(config, RunConfig) else dict(config)
        if sweep_id:
            data[SWEEP_KEY] = sweep_id
        path = self.runs_root / new_run_id(data) if folder is None else self.home / folder
        if not inside(path, self.home) or _is_link(path):
            raise StoreError(f"run folder {folder} is not inside the data home {self.home}")
        record = RunRecord.create(path, data, status=Status.QUEUED)
        created = record.raw_summary().created_at or time.time()
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM runs").fetchone()[0]
            db.execute("INSERT OR REPLACE INTO runs(path, run_id, created_at, queue_seq, sweep_id, status, updated_at) "
                       "VALUES (?,?,?,?,?,?,?)",
                       (str(record.path), self.run_id_of(record.path), float(created), seq, sweep_id, "queued",
                        time.time()))
        return record

    def enqueue_many(self, configs: Iterable[dict[str, Any] | RunConfig], sweep_id: str | None = None,
                     folders: Iterable[str | None] | None = None) -> list[RunRecord]:
        """Queue several runs in order (one sweep)."""
        configs = list(configs)
        folders = list(folders) if folders is not None else [None] * len(configs)
        return [self.enqueue(c, sweep_id=sweep_id, folder=f) for c, f in zip(configs, folders)]

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
        group when it leads one, as the worker's training processes do) if and only if the process
        the record names is the project's own (start time and command checked,
        :func:`~heterolora_core.records.processes.signal_run_process`), and is marked ``cancelled``;
        the worker, which watches the cancel flag, stops the processes it started itself.
        """
        stored = self.get(run_id)
        if stored is None:
            raise KeyError(run_id)
        if stored.status not in ACTIVE_STATUSES:
            return stored.status
        with self._tx() as db:
            db.execute("UPDATE runs SET cancel_requested=1, status='cancelled', updated_at=? WHERE path=?",
                       (time.time(), str(stored.path)))
        if stored.status == Status.RUNNING and runs_here(stored.summary):  # elsewhere: its worker stops it
            signal_run_process(stored.summary.pid, stored.summary.pid_started_at)
        if not stored.is_link:
            stored.record.update_summary(status=Status.CANCELLED, error="cancelled by the user", finished_at=time.time(),
                                         eta_seconds=None)
        return Status.CANCELLED.value

    def delete(self, run_id: str) -> None:
        """Cancel the run if it is active, then remove its folder and its index row. StoreError for
        a folder that is a symbolic link or resolves outside the data home (nothing is removed)."""
        stored = self.get(run_id)
        if stored is None:
            return
        if stored.is_link or not inside(stored.path, self.home):
            raise StoreError(f"run {run_id} is a symbolic link or lies outside the data home; "
                             f"the store does not delete it")
        if stored.status in ACTIVE_STATUSES:
            self.cancel(run_id)
            # Let the training process finish dying first, so it cannot write into (and recreate)
            # the folder after it is gone.
            deadline = time.time() + DELETE_WAIT_SECONDS
            while (time.time() < deadline and runs_here(stored.summary)
                   and process_alive(stored.summary.pid, stored.summary.started_at)):
                time.sleep(0.1)
        shutil.rmtree(stored.path, ignore_errors=True)
        with self._tx() as db:
            db.execute("DELETE FROM runs WHERE path=?", (str(stored.path),))

    def rerun(self, run_id: str) -> RunRecord:
        """Queue a new run with the same RunConfig as ``run_id`` (not in its sweep). KeyError for an
        unknown id; StoreError when the record's config cannot be read."""
        stored = self.get(run_id)
        if stored is None:
            raise KeyError(run_id)
        if stored.config is None:
            raise StoreError(f"run {run_id} cannot be rerun: {stored.problem}")
        return self.enqueue(stored.config)

    def write_setting(self, name: str, value: Any) -> None:
        """A worker setting (``slots``) in ``<home>/worker.json``, read by the worker as it runs."""
        path = self.home / "worker.json"
        settings = _read_settings(path)
        settings[name] = value
        atomic_write_json(path, settings)

    def settings(self) -> dict[str, Any]:
        return _read_settings(self.home / "worker.json")


def _read_settings(path: Path) -> dict[str, Any]:
    data, _ = read_json(path)
    return data or {}


def _walk_runs(root: Path) -> list[Path]:
    """Record folders below ``root`` (not following links; a linked folder holding a record is
    listed as the link; hidden folders skipped), outermost only."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if here != root and (RunRecord.SUMMARY in filenames or RunRecord.CONFIG in filenames):
            found.append(here)
            dirnames[:] = []  # a run folder's own subfolders (adapters/) are not runs
            continue
        for name in list(dirnames):
            link = here / name
            if link.is_symlink():
                if (link / RunRecord.SUMMARY).is_file() or (link / RunRecord.CONFIG).is_file():
                    found.append(link)
                dirnames.remove(name)
    return found


def _is_link(path: Path) -> bool:
    """True when ``path`` is a symbolic link or lies under one (its resolved path differs)."""
    try:
        return path.is_symlink() or path.resolve() != path.absolute()
    except (OSError, RuntimeError):
        return True


def _created_at(folder: Path, summary: RunSummary) -> float:
    if summary.created_at is not None:
        return summary.created_at
    try:
        return folder.lstat().st_mtime
    except OSError:
        return time.time()


def _sweep_of(record: RunRecord) -> str | None:
    sweep = record.config().get(SWEEP_KEY)
    return sweep if isinstance(sweep, str) else None
