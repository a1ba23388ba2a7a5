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

Safety: the home is one this tool made (:func:`~heterolora_core.records.home.checked_home`);
every folder the store creates, replaces or deletes is one run's own leaf inside it
(:func:`~heterolora_core.records.home.check_run_folder`: never a store root, another run's folder
or an ancestor of one), and a run folder that is itself a symbolic link (or lies under one) is
listed but never deleted. The index is a cache: one that is not a database is set aside
(renamed) and rebuilt from the folders, saying so once; a lock held by another process longer
than :data:`INDEX_WAIT_SECONDS` fails the operation with one line (:class:`StoreBusy`) with
nothing changed, and queueing is all or none.
Records are parsed defensively, so one corrupt record is listed with its problem and nothing
else is affected.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from heterolora_core.records.home import (HOME_MARKER, STORE_ROOTS, StoreError, check_run_folder, check_separate,
                                          checked_home, inside, runs_dir)
from heterolora_core.records.processes import process_alive, signal_run_process
from heterolora_core.records.record import (ACTIVE_STATUSES, RunRecord, RunSummary, Status, atomic_write_json,
                                            effective_summary, file_stamp, full_disk, new_run_id, process_ended,
                                            process_gone,
                                            read_json, runs_here)
from heterolora_core.training.run_config import RunConfig

DB_NAME = "runs.sqlite"
DELETE_WAIT_SECONDS = 15.0
#: How long an operation waits for another process's write lock on the index before it gives up
#: with one line (and changes nothing); ``$HETEROLORA_INDEX_WAIT`` (seconds) overrides it, e.g.
#: for a home on a slow network file system.
INDEX_WAIT_SECONDS = 30.0
INDEX_WAIT_ENV = "HETEROLORA_INDEX_WAIT"
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


class StoreBusy(StoreError):
    """The index stayed locked by another process longer than the store waits; nothing was changed."""


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

    def __init__(self, home: str | os.PathLike | None = None, index_wait: float | None = None):
        self.home = checked_home(home)  # refuses a folder this tool did not make (one line)
        self.runs_root = runs_dir(self.home)
        self.db_path = self.home / DB_NAME
        self.index_wait = index_wait if index_wait is not None else _index_wait()
        #: what the store said when it set a corrupt index aside and rebuilt it (None: it did not)
        self.recovered: str | None = None
        self._parsed: dict[str, tuple[tuple, tuple]] = {}  # path -> (file stamps, what _read returns)
        self._initialise()

    # -- database --------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=self.index_wait, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _initialise(self) -> None:
        """Switch the database to WAL (persistent in the file), create the tables, and check the
        file: one that is not an SQLite database or fails its quick check is set aside and rebuilt
        from the run folders (:meth:`_rebuild`).

        Changing the journal mode needs the database to itself and SQLite may refuse it at once
        (without waiting) while another process opens the same new file, so it is retried.
        """
        deadline = time.time() + self.index_wait
        while True:
            try:
                with closing(self._connect()) as db:
                    if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(_SCHEMA)  # runs its own transaction
                    verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
                if verdict != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed ({verdict[:80]})")
                return
            except sqlite3.OperationalError as exc:
                if not _is_lock_error(exc):
                    raise self._busy_or_corrupt(exc) from None
                if time.time() > deadline:
                    raise self._busy() from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                self._rebuild(exc)
                return

    def _busy(self) -> StoreBusy:
        return StoreBusy(f"the run index {self.db_path} stayed locked by another process for "
                         f"{self.index_wait:g} s; nothing was changed (try again)")

    def _busy_or_corrupt(self, exc: sqlite3.Error) -> StoreError:
        if _is_lock_error(exc):
            return self._busy()
        return StoreError(f"the run index {self.db_path} cannot be used ({_first_line(exc)})")

    def _rebuild(self, exc: sqlite3.Error) -> None:
        """Set a corrupt index aside (renamed, not deleted: ``runs.sqlite.corrupt-<time>``), make a
        new one and fill it from the run folders (they are the truth; queued runs keep their
        creation order), saying so once on stderr and in :attr:`recovered`. Serialised between
        processes by a lock on the home's marker file, and done only if the file is still corrupt."""
        with open(self.home / HOME_MARKER, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _index_problem(self.db_path, self.index_wait) is None:  # another process rebuilt it meanwhile
                return
            aside = self.db_path.with_name(f"{DB_NAME}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}")
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.db_path}{suffix}")
                if source.exists():
                    os.replace(source, f"{aside}{suffix}")
            self._initialise()
        self.recovered = (f"the run index {self.db_path} was unreadable ({_first_line(exc)}); set it aside as "
                          f"{aside.name} and rebuilt it from the run folders")
        print(f"note: {self.recovered}", file=sys.stderr, flush=True)
        self.sync()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (BEGIN IMMEDIATE so two writers queue instead of deadlocking);
        StoreBusy when another process holds the lock longer than :attr:`index_wait`."""
        with closing(self._connect()) as db:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._busy_or_corrupt(exc) from None
            try:
                yield db
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise self._busy_or_corrupt(exc) from None
            except BaseException:
                db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._busy_or_corrupt(exc) from None

    def _query(self, sql: str, params: Sequence[Any] = (), retry: bool = True) -> list[sqlite3.Row]:
        try:
            with closing(self._connect()) as db:
                return db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if not retry or _is_lock_error(exc) or not isinstance(exc, sqlite3.DatabaseError):
                raise self._busy_or_corrupt(exc) from None
            self._rebuild(exc)  # the file went bad while this store was open (only if it is still bad)
        return self._query(sql, params, retry=False)

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
            disk = full_disk(record.path)
            reason = f"{reason}; {disk}" if disk else reason
            if not _is_link(record.path):
                try:
                    record.update_summary(status=Status.FAILED, error=raw.error or reason, pid=None,
                                          finished_at=time.time())
                except OSError:  # a full disk: reported as failed all the same, written once it can be
                    pass
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
        it must be a new leaf of its own (:func:`~heterolora_core.records.home.check_run_folder`).
        """
        return self.enqueue_many([config], sweep_id=sweep_id, folders=[folder])[0]

    def enqueue_many(self, configs: Iterable[dict[str, Any] | RunConfig], sweep_id: str | None = None,
                     folders: Iterable[str | None] | None = None, replacing: Iterable[bool] | None = None,
                     ) -> list[RunRecord]:
        """Queue several runs in order (one sweep), all or none: every folder is checked first
        (:func:`~heterolora_core.records.home.check_run_folder`), then, holding the index's write
        lock, the folders are written and indexed in one transaction. ``replacing[i]``: the run's
        folder holds an earlier (failed, cancelled) record of the same run, replaced; it is moved
        aside and removed only once the new run is indexed. On any failure (StoreBusy when the
        lock is held too long, a full disk) the new folders are removed, the replaced ones put
        back, and nothing is queued."""
        items = [config.to_dict() if isinstance(config, RunConfig) else dict(config) for config in configs]
        folders = list(folders) if folders is not None else [None] * len(items)
        replacing = list(replacing) if replacing is not None else [False] * len(items)
        if sweep_id:
            items = [{**data, SWEEP_KEY: sweep_id} for data in items]
        paths = [self.runs_root / new_run_id(data) if folder is None else
                 check_run_folder(self.home, folder, existing=replace)
                 for data, folder, replace in zip(items, folders, replacing)]
        for path, replace in zip(paths, replacing):
            if not replace:
                check_run_folder(self.home, path)
        check_separate(paths)
        created: list[RunRecord] = []
        made: list[Path] = []  # folders this call wrote into (removed again on failure)
        aside: list[tuple[Path, Path]] = []
        try:
            with self._tx() as db:
                for path, replace in zip(paths, replacing):
                    if replace and path.exists():
                        hidden = path.with_name(f".{path.name}.replaced-{uuid.uuid4().hex[:8]}")
                        os.replace(path, hidden)
                        aside.append((path, hidden))
                for data, path in zip(items, paths):
                    if RunRecord(path).exists():
                        raise StoreError(f"{path} already holds a run record")
                    made.append(path)
                    created.append(RunRecord.create(path, data, status=Status.QUEUED))
                seq = db.execute("SELECT COALESCE(MAX(queue_seq), 0) FROM runs").fetchone()[0]
                db.executemany("INSERT OR REPLACE INTO runs(path, run_id, created_at, queue_seq, sweep_id, status, "
                               "updated_at) VALUES (?,?,?,?,?,?,?)",
                               [(str(r.path), self.run_id_of(r.path), float(r.raw_summary().created_at or time.time()),
                                 seq + i + 1, sweep_id, "queued", time.time()) for i, r in enumerate(created)])
        except BaseException as exc:
            for path in made:
                shutil.rmtree(path, ignore_errors=True)
            for path, hidden in aside:
                os.replace(hidden, path)
            if isinstance(exc, OSError):  # a full disk, a read-only folder: one line, nothing queued
                raise StoreError(f"{_first_line(exc)}; nothing was queued") from None
            raise
        for _, hidden in aside:
            shutil.rmtree(hidden, ignore_errors=True)
        return created

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
        check_run_folder(self.home, stored.path, existing=True)  # one run's own leaf, never a root
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


def _index_wait() -> float:
    """:data:`INDEX_WAIT_SECONDS`, or ``$HETEROLORA_INDEX_WAIT`` when it is a number of seconds >= 0."""
    try:
        value = float(os.environ.get(INDEX_WAIT_ENV, INDEX_WAIT_SECONDS))
    except ValueError:
        return INDEX_WAIT_SECONDS
    return value if 0 <= value < float("inf") else INDEX_WAIT_SECONDS


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _index_problem(db_path: Path, wait: float) -> str | None:
    """Why the index file cannot be used (not a database, malformed), or None when it can (or is
    only locked, or missing)."""
    try:
        with closing(sqlite3.connect(db_path, timeout=wait)) as db:
            verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            db.execute("SELECT 1 FROM runs LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        return None if _is_lock_error(exc) else _first_line(exc)
    return None if verdict == "ok" else verdict


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
        # the store's roots hold runs, they are never one (a record file there is not a run's)
        is_root = here == root or (here.parent == root and here.name in STORE_ROOTS)
        if not is_root and (RunRecord.SUMMARY in filenames or RunRecord.CONFIG in filenames):
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
