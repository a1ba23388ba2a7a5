"""Sweeps: many runs as one experiment, defined as data.

A sweep file (YAML or JSON) names the base settings, the axes to vary and, optionally, explicit
rows; :func:`load_sweep` checks it and :func:`expand` turns it into the runs it names::

    sweep: proxy-sweep-mrpc            # the experiment's id (the runs' sweep_id); stable, so a rerun resumes
    folder: "results/{sweep}/{row}/seed{seed}"   # optional: where each record goes, under the data home
    base: {task: mrpc, mode: dynamic, rank: 32, enable_ratio: 0.25, max_steps: 200}
    axes: {proxy: [grad_norm, snip, constant], seed: [0, 1, 2]}
    order: [seed, row]                 # optional nesting, outermost first (default: axes, then rows)
    rows:                              # optional; each row is RunConfig overrides plus
      - {row: qv, lora_targets: [q, v]}        #   row: an id (default r0, r1, ...), label: a name,
      - {row: all, lora_targets: [q, k, v, o, ffn_in, ffn_out], only: {proxy: [grad_norm]}}
                                       #   only: restrict axes for this row, report: free-form notes

Every key of ``base``, ``axes`` and the rows is a :class:`~heterolora_core.training.run_config.RunConfig`
field (or ``repeat``, an axis of repetitions with no setting of its own); anything else, an empty
axis, or a value the run's validation refuses is a one-line ValueError and nothing is queued.
The runs are product(rows, axes) in the given order.

Resuming: :func:`plan_sweep` looks at what is already on disk. A run whose folder holds a finished
record with the same settings is skipped, one that is queued or running is left alone, a failed,
cancelled or dead one is rerun (its folder is replaced), and a finished record with other settings
is an error (results would mix). Without a ``folder`` template, runs of the same sweep id with the
same settings count as the same run.

:func:`proxy_sweep` is the Launch page's case: one run per (seed, proxy), everything else equal.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from heterolora_core.records.home import inside
from heterolora_core.records.launchers import Launcher
from heterolora_core.records.record import ACTIVE_STATUSES, RunRecord, Status
from heterolora_core.records.store import RunStore
from heterolora_core.records.worker import Worker, ensure_worker
from heterolora_core.training.run_config import RunConfig

TOP_KEYS = ("sweep", "folder", "base", "axes", "order", "rows", "description")
ROW_KEYS = ("row", "label", "only", "report")
REPEAT = "repeat"
#: Fields that do not change a run's result: a stored run may differ in them and still count.
IGNORED_FIELDS = ("device", "logging_steps")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def new_sweep_id(prefix: str = "sweep") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


@dataclass
class Sweep:
    """Runs of one experiment, in launch order; ``folders`` (relative to the data home) is None
    for the store's default folders; ``rows`` names each run's row."""

    sweep_id: str
    configs: list[dict[str, Any]]
    folders: list[str] | None = None
    rows: list[str] = field(default_factory=list)


def proxy_sweep(base: dict[str, Any] | RunConfig, proxies: Sequence[str], seeds: Sequence[int] = (0,)) -> Sweep:
    """One run per (seed, proxy), everything else as ``base``; the runs of the first seed come
    first, so the first comparison completes early. ValueError without a proxy or seed."""
    data = base.to_dict() if isinstance(base, RunConfig) else dict(base)
    if not proxies:
        raise ValueError("choose at least one proxy for the sweep")
    if not seeds:
        raise ValueError("choose at least one seed for the sweep")
    configs = [{**data, "proxy": proxy, "seed": int(seed)} for seed in seeds for proxy in proxies]
    return Sweep(new_sweep_id(), configs)


# ----------------------------------------------------------------------------------------------
# Sweep files
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepRow:
    """One row of a sweep file: its id, label, RunConfig overrides, axis restrictions, notes."""

    row: str
    label: str
    overrides: dict[str, Any]
    only: dict[str, list[Any]]
    report: dict[str, Any]


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file."""

    sweep: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    rows: tuple[SweepRow, ...]
    order: tuple[str, ...]
    folder: str | None = None
    description: str = ""


@dataclass
class PlannedRun:
    """One run of a sweep: its row, settings, axis values and record folder (relative to the home;
    None: the store picks one)."""

    row: SweepRow
    config: RunConfig
    values: dict[str, Any]
    folder: str | None


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (``.yaml``, ``.yml`` or ``.json``); ValueError with one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read sweep file {path}: {type(exc).__name__}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path.name} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {first}") from None
    return parse_sweep(data, source=path.name)


def parse_sweep(data: Any, source: str = "sweep") -> SweepSpec:
    """Check a sweep given as a mapping (see the module docstring)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a sweep file holds a mapping with {', '.join(TOP_KEYS)}")
    _known(data, TOP_KEYS, f"{source}: unknown key")
    sweep = data.get("sweep")
    if not isinstance(sweep, str) or not _ID_RE.match(sweep):
        raise ValueError(f"{source}: 'sweep' must be an id of letters, digits, '.', '_' or '-', got {sweep!r}")
    fields = set(RunConfig.field_names())
    base = _mapping(data.get("base", {}), f"{source}: base")
    _known(base, fields, f"{source}: base: not a run setting")
    axes = _mapping(data.get("axes", {}), f"{source}: axes")
    _known(axes, fields | {REPEAT}, f"{source}: axes: not a run setting")
    for name, values in axes.items():
        if name == REPEAT and isinstance(values, int) and not isinstance(values, bool) and values >= 1:
            axes[name] = list(range(values))
        elif not isinstance(values, list) or not values:
            raise ValueError(f"{source}: axis {name!r} must be a non-empty list of values")
    rows = _rows(data.get("rows"), fields, axes, source)
    order = data.get("order") or [*axes, "row"]
    if not isinstance(order, list) or sorted(order) != sorted([*axes, "row"]):
        raise ValueError(f"{source}: 'order' must list every axis and 'row' once ({', '.join([*axes, 'row'])})")
    folder = data.get("folder")
    if folder is not None and (not isinstance(folder, str) or not folder.strip() or Path(folder).is_absolute()):
        raise ValueError(f"{source}: 'folder' must be a relative path template, got {folder!r}")
    return SweepSpec(sweep, base, axes, rows, tuple(order), folder, str(data.get("description") or ""))


def _known(mapping: dict, allowed, what: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        raise ValueError(f"{what} {unknown[0]!r}")


def _mapping(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _rows(value: Any, fields: set[str], axes: dict, source: str) -> tuple[SweepRow, ...]:
    if value is None:
        return (SweepRow("all", "all", {}, {}, {}),)
    if not isinstance(value, list) or not value:
        raise ValueError(f"{source}: 'rows' must be a non-empty list")
    rows, seen = [], set()
    for i, item in enumerate(value):
        item = _mapping(item, f"{source}: row {i + 1}")
        _known(item, fields | set(ROW_KEYS), f"{source}: row {i + 1}: not a run setting")
        row_id = str(item.get("row", f"r{i}"))
        if not _ID_RE.match(row_id) or row_id in seen:
            raise ValueError(f"{source}: row {i + 1}: 'row' must be a unique id, got {row_id!r}")
        seen.add(row_id)
        only = _mapping(item.get("only", {}), f"{source}: row {row_id}: only")
        for name, values in only.items():
            if name not in axes or not isinstance(values, list) or not values:
                raise ValueError(f"{source}: row {row_id}: 'only' restricts an axis to a non-empty list; {name!r} is not one")
        overrides = {k: v for k, v in item.items() if k in fields}
        rows.append(SweepRow(row_id, str(item.get("label", row_id)), overrides, only,
                             _mapping(item.get("report", {}), f"{source}: row {row_id}: report")))
    return tuple(rows)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def folder_of(spec: SweepSpec, row: str, config: RunConfig, values: dict[str, Any] | None = None) -> str | None:
    """A run's folder from the sweep's template: every setting of the run, its axis values (such as
    ``repeat``), ``row`` and ``sweep`` are variables; floats are written as ``format(x, "g")``."""
    if not spec.folder:
        return None
    variables = {**{k: _text(v) for k, v in config.to_dict().items()},
                 **{k: _text(v) for k, v in (values or {}).items()}, "row": row, "sweep": spec.sweep}
    try:
        return spec.folder.format(**variables)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"folder template {spec.folder!r}: unknown variable {exc}") from None


def expand(spec: SweepSpec) -> list[PlannedRun]:
    """The runs a sweep names, in its order; ValueError naming the row of an invalid run."""
    loops = {name: (list(spec.rows) if name == "row" else spec.axes[name]) for name in spec.order}
    runs = []
    for combo in itertools.product(*loops.values()):
        chosen = dict(zip(spec.order, combo))
        row = chosen.pop("row")
        if any(chosen[name] not in allowed for name, allowed in row.only.items()):
            continue
        settings = {**spec.base, **{k: v for k, v in chosen.items() if k != REPEAT}, **row.overrides}
        config = RunConfig.from_dict(settings).normalised()
        try:
            config.validate()
        except ValueError as exc:
            raise ValueError(f"row {row.row} ({', '.join(f'{k}={_text(v)}' for k, v in chosen.items())}): {exc}") from None
        runs.append(PlannedRun(row, config, chosen, folder_of(spec, row.row, config, chosen)))
    if not runs:
        raise ValueError(f"sweep {spec.sweep} names no run (every row's 'only' excludes every axis value)")
    folders = [r.folder for r in runs if r.folder is not None]
    if len(set(folders)) != len(folders):
        raise ValueError("the folder template gives two runs the same folder; add the varying axes to it")
    return runs


# ----------------------------------------------------------------------------------------------
# Resuming and queueing
# ----------------------------------------------------------------------------------------------

def same_settings(stored: RunConfig, wanted: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Result-relevant fields where ``stored`` differs from ``wanted`` (floats compared with a
    tolerance), as ``{field: (stored, wanted)}``."""
    have, want = stored.to_dict(), wanted.to_dict()
    diffs = {}
    for key, value in want.items():
        if key in IGNORED_FIELDS:
            continue
        old = have.get(key)
        close = (isinstance(value, float) and isinstance(old, (int, float)) and not isinstance(old, bool)
                 and math.isclose(float(old), value))
        if old != value and not close:
            diffs[key] = (old, value)
    return diffs


def record_state(path: Path, wanted: RunConfig) -> str:
    """What the record folder ``path`` holds for a run of ``wanted``: ``todo`` (nothing), ``done``,
    ``busy`` (queued or running) or ``rerun`` (failed, cancelled, dead); ValueError when a finished
    record holds other settings (results would mix)."""
    record = RunRecord(path)
    if not record.exists():
        return "todo"
    status = record.summary().status  # a dead 'running' run reads as failed
    if status == Status.DONE:
        stored, problem = record.run_config()
        diffs = same_settings(stored, wanted) if stored else {"config.json": (problem, "readable")}
        if diffs:
            shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diffs.items())
            raise ValueError(f"{path} holds a finished run with other settings ({shown})")
        return "done"
    return "busy" if status in ACTIVE_STATUSES else "rerun"


def run_state(home: Path, run: PlannedRun, existing: dict[str, str]) -> str:
    """:func:`record_state` of the run's folder; for runs without a folder template, the state of
    this sweep's run with the same settings (``existing``: config key -> state)."""
    if run.folder is None:
        return existing.get(_key(run.config), "todo")
    return record_state(home / run.folder, run.config)


def _key(config: RunConfig) -> str:
    return json.dumps({k: v for k, v in config.to_dict().items() if k not in IGNORED_FIELDS}, sort_keys=True, default=str)


def plan_sweep(store: RunStore, runs: list[PlannedRun], sweep_id: str) -> list[tuple[PlannedRun, str]]:
    """Each run with its state on disk (see :func:`run_state`)."""
    existing: dict[str, str] = {}
    for stored in store.list_runs():
        if stored.sweep_id == sweep_id and stored.config is not None:
            state = {"done": "done", "queued": "busy", "running": "busy"}.get(stored.status, "rerun")
            key = _key(stored.config)
            if existing.get(key) not in ("done", "busy"):
                existing[key] = state
    return [(run, run_state(store.home, run, existing)) for run in runs]


def submit(store: RunStore, planned: list[tuple[PlannedRun, str]], sweep_id: str) -> list[RunRecord]:
    """Queue every run that is ``todo`` or ``rerun`` (a rerun's old folder, inside the data home,
    is removed first), in order."""
    records = []
    for run, state in planned:
        if state not in ("todo", "rerun"):
            continue
        if state == "rerun" and run.folder is not None:
            old = store.home / run.folder
            if not inside(old, store.home) or old.is_symlink():
                raise ValueError(f"{run.folder} is not a folder inside the data home; not replacing it")
            shutil.rmtree(old)
            store.sync()
        data = {**run.config.to_dict(), "sweep_row": run.row.row}
        records.append(store.enqueue(data, sweep_id=sweep_id, folder=run.folder))
    return records


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.001", "seed=[0, 1]"]`` -> ``{"lr": 0.001, "seed": [0, 1]}`` (values read as YAML)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in RunConfig.field_names():
            raise ValueError(f"--set takes FIELD=VALUE with a run setting as FIELD, got {item!r}")
        try:
            out[name.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"--set {name}: cannot read the value {value!r}") from None
    return out


def prepare(store: RunStore, path: str | Path, overrides: dict[str, Any] | None = None,
            ) -> tuple[SweepSpec, list[tuple[PlannedRun, str]]]:
    """Load, check and expand a sweep file (``overrides`` replace base settings and remove an axis
    of the same name), and say of each run whether it is still to do."""
    spec = load_sweep(path)
    if overrides:
        axes = {k: v for k, v in spec.axes.items() if k not in overrides}
        spec = SweepSpec(spec.sweep, {**spec.base, **overrides}, axes, spec.rows,
                         tuple(n for n in spec.order if n not in overrides), spec.folder, spec.description)
    runs = expand(spec)
    return spec, plan_sweep(store, runs, spec.sweep)


def drain(store: RunStore, sweep_id: str, slots: int | None = None, gpus: list[str] | None = None,
          deadline_minutes: float | None = None, pause_file: Path | None = None, log=print,
          launcher: Launcher | None = None) -> int:
    """Train the queued runs until the sweep's are finished: a worker in this process (its runs
    local processes, or Ray tasks with a :class:`~heterolora_core.records.ray_executor.RayLauncher`),
    or, when the home already has a worker, wait for it. Returns 1 when a run of the sweep failed,
    else 0."""
    deadline = time.monotonic() + 60 * deadline_minutes if deadline_minutes else None
    worker = Worker(store.home, slots=slots, gpus=gpus, stop_when_idle=True, deadline=deadline,
                    pause_file=pause_file, idle_exit=None, log=log, launcher=launcher)
    worker.serve()  # returns at once when another worker holds the home's lock
    while any(r.sweep_id == sweep_id and r.status in ACTIVE_STATUSES for r in store.list_runs()):
        if deadline is not None and time.monotonic() >= deadline:
            break
        if launcher is None:  # a local worker replaces one that died; Ray runs are not moved here
            ensure_worker(store.home)
        time.sleep(2.0)
    runs = [r for r in store.list_runs() if r.sweep_id == sweep_id]
    counts = {s: sum(1 for r in runs if r.status == s) for s in ("done", "failed", "cancelled", "queued", "running")}
    log(f"sweep {sweep_id}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 1 if counts["failed"] else 0
