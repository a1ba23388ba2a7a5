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
                                       #   only: restrict axes for this row, report: free-form notes,
                                       #   folder: this row's own folder template (records kept elsewhere)

Every key of ``base``, ``axes`` and the rows is a :class:`~heterolora_core.training.run_config.RunConfig`
field (or ``repeat``, an axis of repetitions with no setting of its own); anything else, an empty
axis, a key given twice, or a value the run's validation refuses is a one-line ValueError and
nothing is queued. The runs are product(rows, axes) in the given order.

Bounds, so that a file or a paste cannot exhaust the process that reads it: a sweep names at most
:data:`MAX_SWEEP_RUNS` runs, counted (:func:`count_runs`) before any is built; a YAML file is
checked as a graph before it is built, so aliases that would expand past :data:`MAX_SWEEP_VALUES`
values (an alias or merge-key bomb of a few hundred bytes) are refused in time and memory linear in
the text; error messages quote at most a short excerpt of any value. A ``folder`` template's
fields are plain names (``{seed}``, never ``{seed.__class__}``), and every run's folder is checked
by the one rule of :func:`~heterolora_core.records.home.check_run_folder` (one run's own leaf)
before the first run is queued.

Resuming: :func:`plan_sweep` looks at what is already on disk. A run whose folder holds a finished
record with the same settings is skipped, one that is queued or running is left alone, a failed,
cancelled or dead one is rerun (its folder is replaced), and a finished record with other settings
is an error (results would mix). Without a ``folder`` template, runs of the same sweep id with the
same settings count as the same run.

The Launch page defines the same thing: its form's settings as the base and axes of
comma-separated values (:func:`form_sweep`, the settings of :data:`FORM_AXES`), or a sweep file
pasted or uploaded (:func:`read_sweep`); :func:`proxy_sweep`, one run per (seed, proxy), is one
case of it. Every way ends in :func:`queue_sweep` (or the CLI's :func:`prepare` and :func:`submit`).
"""
from __future__ import annotations

import itertools
import json
import math
import re
import string
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from heterolora_core.methods import registry
from heterolora_core.records.home import StoreError, check_folder_name, check_run_folder, check_separate
from heterolora_core.records.launchers import Launcher
from heterolora_core.records.record import ACTIVE_STATUSES, RunRecord, Status, short_repr
from heterolora_core.records.store import RunStore
from heterolora_core.records.worker import Worker, ensure_worker
from heterolora_core.training.run_config import RunConfig

TOP_KEYS = ("sweep", "folder", "base", "axes", "order", "rows", "description")
ROW_KEYS = ("row", "label", "only", "report", "folder")
REPEAT = "repeat"
#: Fields that do not change a run's result: a stored run may differ in them and still count.
IGNORED_FIELDS = ("device", "logging_steps")
#: The largest sweep file read (a grid of hundreds of rows is a few kB).
MAX_SWEEP_BYTES = 2**20
#: The most runs one sweep may name, counted before any run is built (split a larger one).
MAX_SWEEP_RUNS = 10_000
#: The most values (YAML nodes) a sweep file may hold once its aliases are expanded: a plain file
#: of hundreds of rows holds a few thousand; an alias bomb of a few hundred bytes, billions.
MAX_SWEEP_VALUES = 100_000
#: The longest excerpt of a value or message a sweep error quotes.
EXCERPT = 80
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def new_sweep_id(prefix: str = "sweep") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


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
    folder: str | None = None


#: The one row of a sweep file without ``rows``.
DEFAULT_ROW = SweepRow("all", "all", {}, {}, {})


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

    def to_dict(self) -> dict[str, Any]:
        """The sweep as a sweep file's mapping (:func:`parse_sweep` reads it back to the same runs);
        base settings equal to the RunConfig defaults are left out."""
        defaults = RunConfig().to_dict()
        data: dict[str, Any] = {"sweep": self.sweep}
        if self.description:
            data["description"] = self.description
        if self.folder:
            data["folder"] = self.folder
        data["base"] = {k: v for k, v in self.base.items() if k not in defaults or defaults[k] != v}
        data["axes"] = {k: list(v) for k, v in self.axes.items()}
        data["order"] = list(self.order)
        if self.rows != (DEFAULT_ROW,):
            data["rows"] = [{"row": r.row, **({"label": r.label} if r.label != r.row else {}), **r.overrides,
                             **({"only": r.only} if r.only else {}), **({"report": r.report} if r.report else {}),
                             **({"folder": r.folder} if r.folder else {})}
                            for r in self.rows]
        return data

    def to_yaml(self) -> str:
        """:meth:`to_dict` as the text of a sweep file."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)


@dataclass
class PlannedRun:
    """One run of a sweep: its row, settings, axis values and record folder (relative to the home;
    None: the store picks one)."""

    row: SweepRow
    config: RunConfig
    values: dict[str, Any]
    folder: str | None

    def where(self) -> str:
        """``row all (seed=0, rank=8)``: the run in words, for messages."""
        return f"row {self.row.row} ({_values(self.values)})"


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (``.yaml``, ``.yml`` or ``.json``); ValueError with one line."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SWEEP_BYTES:
            raise ValueError(f"sweep file {path} is larger than {MAX_SWEEP_BYTES // 2**20} MiB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read sweep file {path}: {type(exc).__name__}") from None
    return read_sweep(text, path.name)


def read_sweep(text: str | bytes, name: str = "sweep.yaml") -> SweepSpec:
    """Check a sweep file's text (pasted or uploaded on the Launch page): JSON when ``name`` ends in
    ``.json``, else YAML (which reads JSON too); ValueError with one line."""
    if isinstance(text, bytes):
        if len(text) > MAX_SWEEP_BYTES:
            raise ValueError(f"{name} is larger than {MAX_SWEEP_BYTES // 2**20} MiB")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{name} is not UTF-8 text") from None
    if len(text) > MAX_SWEEP_BYTES:
        raise ValueError(f"{name} is larger than {MAX_SWEEP_BYTES // 2**20} MiB")
    as_json = name.lower().endswith(".json")
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys) if as_json else yaml.load(text, Loader=_SweepLoader)
    except _Refused as exc:
        raise ValueError(f"{name}: {exc}") from None
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{name} is not valid {'JSON' if as_json else 'YAML'}: {first[:200]}") from None
    return parse_sweep(data, source=name)


class _Refused(Exception):
    """A sweep file refused while it is read (a key twice, aliases that expand too far)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's mapping, refusing a key given twice (JSON keeps the last one silently)."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Refused(f"key {short_repr(twice, EXCERPT)} appears twice in one object")
    return data


class _SweepLoader(yaml.SafeLoader):
    """YAML's safe loader with the document checked before it is built (:func:`_check_yaml`): a
    key given twice in one mapping and aliases that expand past :data:`MAX_SWEEP_VALUES` values
    are refused, so an alias bomb costs what its text costs."""

    def construct_document(self, node):
        _check_yaml(node)
        return super().construct_document(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_yaml(root: yaml.Node) -> None:
    """Walk the composed YAML graph once per node (an alias is the same node object again),
    summing each node's expanded size; _Refused for a recursive alias, more than
    :data:`MAX_SWEEP_VALUES` expanded values, or a key twice in one mapping."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        children = _yaml_children(node)
        if closing:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_SWEEP_VALUES:
                raise _Refused(f"its aliases expand to more than {MAX_SWEEP_VALUES:,} values (line "
                               f"{node.start_mark.line + 1}); write the values out, or use fewer aliases")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise _Refused(f"an alias refers to the value that holds it (line {node.start_mark.line + 1})")
        if isinstance(node, yaml.MappingNode):
            _check_keys(node)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_keys(node: yaml.MappingNode) -> None:
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise _Refused(f"key {short_repr(key_node.value, EXCERPT)} appears twice in one mapping "
                               f"(line {key_node.start_mark.line + 1})")
            seen.add(key)


def parse_sweep(data: Any, source: str = "sweep") -> SweepSpec:
    """Check a sweep given as a mapping (see the module docstring)."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a sweep file holds a mapping with {', '.join(TOP_KEYS)}")
    _known(data, TOP_KEYS, f"{source}: unknown key")
    sweep = data.get("sweep")
    if not isinstance(sweep, str) or not _ID_RE.match(sweep):
        raise ValueError(f"{source}: 'sweep' must be an id of letters, digits, '.', '_' or '-', got "
                         f"{short_repr(sweep, EXCERPT)}")
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
        seen: set[str] = set()
        for value in axes[name]:
            text = _value_key(value)
            if text in seen:
                raise ValueError(f"{source}: axis {name!r} lists {text[:EXCERPT]} twice")
            seen.add(text)
    rows = _rows(data.get("rows"), fields, axes, source)
    order = data.get("order") or [*axes, "row"]
    if not isinstance(order, list) or sorted(order) != sorted([*axes, "row"]):
        raise ValueError(f"{source}: 'order' must list every axis and 'row' once ({', '.join([*axes, 'row'])})")
    folder = data.get("folder")
    variables = fields | set(axes) | {"row", "sweep"}
    _check_template(folder, variables, f"{source}: 'folder'")
    for row in rows:
        _check_template(row.folder, variables, f"{source}: row {row.row}: 'folder'")
    spec = SweepSpec(sweep, base, axes, rows, tuple(order), folder, str(data.get("description") or ""))
    check_size(spec, source)
    return spec


def _value_key(value: Any) -> str:
    """A value as JSON text, for telling values apart (an axis's duplicates, a row's ``only``):
    ``1``, ``1.0``, ``true`` and ``"1"`` are four values."""
    return json.dumps(value, sort_keys=True, default=str)


def _check_template(template: Any, variables: set[str], what: str) -> None:
    """A folder template is a relative path whose ``{fields}`` are plain variable names (no
    attribute or index access such as ``{seed.__class__}``, no nested fields, no conversions)."""
    if template is None:
        return
    if not isinstance(template, str) or not template.strip() or Path(template).is_absolute():
        raise ValueError(f"{what} must be a relative path template, got {short_repr(template, EXCERPT)}")
    shown = f"folder template {short_repr(template, EXCERPT)}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{shown}: {exc}") from None
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if not field_name.isidentifier() or conversion or (spec and "{" in spec):
            raise ValueError(f"{shown}: {{{short_repr(field_name, 40)[1:-1]}}} is not a variable; write {{name}} "
                             f"with a run setting, an axis, row or sweep as the name")
        if field_name not in variables:
            raise ValueError(f"{shown}: unknown variable {field_name!r}")


def count_runs(spec: SweepSpec) -> int:
    """How many runs the sweep names (each row's product of its axes' allowed values), counted
    without building any."""
    total = 0
    for row in spec.rows:
        runs = 1
        for name, values in spec.axes.items():
            allowed = row.only.get(name)
            if allowed is not None:
                keys = {_value_key(v) for v in allowed}
                runs *= sum(1 for v in values if _value_key(v) in keys)
            else:
                runs *= len(values)
        total += runs
    return total


def check_size(spec: SweepSpec, source: str = "sweep") -> int:
    """The sweep's run count; ValueError (one line) past :data:`MAX_SWEEP_RUNS`."""
    runs = count_runs(spec)
    if runs > MAX_SWEEP_RUNS:
        shown = f"{runs:,}" if runs < 10**15 else f"about 10^{len(str(runs)) - 1}"
        raise ValueError(f"{source}: the sweep names {shown} runs; a sweep may name at most {MAX_SWEEP_RUNS:,} "
                         f"(split it into several)")
    return runs


def _known(mapping: dict, allowed, what: str) -> None:
    unknown = sorted(str(k)[:EXCERPT] for k in mapping if k not in allowed)
    if unknown:
        raise ValueError(f"{what} {unknown[0]!r}")


def _mapping(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _rows(value: Any, fields: set[str], axes: dict, source: str) -> tuple[SweepRow, ...]:
    if value is None:
        return (DEFAULT_ROW,)
    if not isinstance(value, list) or not value:
        raise ValueError(f"{source}: 'rows' must be a non-empty list")
    rows, seen = [], set()
    for i, item in enumerate(value):
        item = _mapping(item, f"{source}: row {i + 1}")
        _known(item, fields | set(ROW_KEYS), f"{source}: row {i + 1}: not a run setting")
        row_id = item.get("row", f"r{i}")
        row_id = row_id if isinstance(row_id, str) else str(row_id) if isinstance(row_id, (int, float)) else row_id
        if not isinstance(row_id, str) or not _ID_RE.match(row_id) or row_id in seen:
            raise ValueError(f"{source}: row {i + 1}: 'row' must be a unique id, got {short_repr(row_id, EXCERPT)}")
        seen.add(row_id)
        only = _mapping(item.get("only", {}), f"{source}: row {row_id}: only")
        for name, values in only.items():
            if name not in axes or not isinstance(values, list) or not values:
                raise ValueError(f"{source}: row {row_id}: 'only' restricts an axis to a non-empty list; "
                                 f"{short_repr(name, EXCERPT)} is not one")
        overrides = {k: v for k, v in item.items() if k in fields}
        folder = item.get("folder")
        rows.append(SweepRow(row_id, str(item.get("label", row_id))[:200], overrides, only,
                             _mapping(item.get("report", {}), f"{source}: row {row_id}: report"), folder))
    return tuple(rows)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def folder_of(spec: SweepSpec, row: str, config: RunConfig, values: dict[str, Any] | None = None,
              template: str | None = None) -> str | None:
    """A run's folder from its row's template or else the sweep's: every setting of the run, its
    axis values (such as ``repeat``), ``row`` and ``sweep`` are variables; floats are written as
    ``format(x, "g")``."""
    template = template or spec.folder
    if not template:
        return None
    variables = {**{k: _text(v) for k, v in config.to_dict().items()},
                 **{k: _text(v) for k, v in (values or {}).items()}, "row": row, "sweep": spec.sweep}
    try:
        return template.format_map(variables)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ValueError(f"folder template {short_repr(template, EXCERPT)}: unknown variable "
                         f"{str(exc)[:EXCERPT]}") from None


def expand(spec: SweepSpec) -> list[PlannedRun]:
    """The runs a sweep names, in its order (counted first: at most :data:`MAX_SWEEP_RUNS`), each
    run's folder checked as a path (:func:`~heterolora_core.records.home.check_folder_name`: no
    ``..``, no store root; and not inside another run's of the sweep); ValueError
    naming the row of an invalid run."""
    check_size(spec, f"sweep {spec.sweep}")
    loops = {name: (list(spec.rows) if name == "row" else spec.axes[name]) for name in spec.order}
    only_keys = {row.row: {name: {_value_key(v) for v in allowed} for name, allowed in row.only.items()}
                 for row in spec.rows}
    runs = []
    for combo in itertools.product(*loops.values()):
        chosen = dict(zip(spec.order, combo))
        row = chosen.pop("row")
        if any(_value_key(chosen[name]) not in keys for name, keys in only_keys[row.row].items()):
            continue
        settings = {**spec.base, **{k: v for k, v in chosen.items() if k != REPEAT}, **row.overrides}
        config = RunConfig.from_dict(settings).normalised()
        try:
            config.validate()
            run = PlannedRun(row, config, chosen, folder_of(spec, row.row, config, chosen, row.folder))
            if run.folder is not None:
                check_folder_name(run.folder)
        except ValueError as exc:
            raise ValueError(f"row {row.row} ({_values(chosen)[:200]}): {str(exc)[:300]}") from None
        runs.append(run)
    if not runs:
        raise ValueError(f"sweep {spec.sweep} names no run (every row's 'only' excludes every axis value)")
    folders = [r.folder for r in runs if r.folder is not None]
    if len(set(folders)) != len(folders):
        raise ValueError("the folder template gives two runs the same folder; add the varying axes to it")
    check_separate(folders)
    if spec.folder is None:  # runs without folders are told apart by their settings alone
        seen: dict[str, PlannedRun] = {}
        for run in runs:
            first = seen.setdefault(run_key(run.config), run)
            if first is not run:
                rows = f"row {run.row.row} names" if first.row is run.row else f"rows {first.row.row} and {run.row.row} name"
                raise ValueError(f"{rows} the same run twice ({_values(first.values)} and "
                                 f"{_values(run.values)}); vary a setting, or give a folder template with the "
                                 f"varying axis in it")
    return runs


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_text(v)}" for k, v in values.items()) or "no axis"


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
        return existing.get(run_key(run.config), "todo")
    return record_state(home / run.folder, run.config)


def run_key(config: RunConfig) -> str:
    """A run's settings as text, without the fields that do not change its result."""
    return json.dumps({k: v for k, v in config.to_dict().items() if k not in IGNORED_FIELDS}, sort_keys=True, default=str)


def plan_sweep(store: RunStore, runs: list[PlannedRun], sweep_id: str) -> list[tuple[PlannedRun, str]]:
    """Each run with its state on disk (see :func:`run_state`), every run's folder checked first
    (:func:`~heterolora_core.records.home.check_run_folder`: a new run's must be free, a rerun's
    one run's own leaf), so a sweep with one bad run queues none, and ``--dry-run`` says so."""
    for run in runs:
        if run.folder is not None:
            _check_folder(store, run, existing=True)  # where it is, before its record is read
    existing: dict[str, str] = {}
    for stored in store.list_runs():
        if stored.sweep_id == sweep_id and stored.config is not None:
            state = {"done": "done", "queued": "busy", "running": "busy"}.get(stored.status, "rerun")
            key = run_key(stored.config)
            if existing.get(key) not in ("done", "busy"):
                existing[key] = state
    planned = [(run, run_state(store.home, run, existing)) for run in runs]
    for run, state in planned:
        if run.folder is not None and state == "todo":
            _check_folder(store, run, existing=False)
    return planned


def _check_folder(store: RunStore, run: PlannedRun, existing: bool) -> None:
    try:
        check_run_folder(store.home, run.folder, existing=existing)
    except StoreError as exc:
        raise ValueError(f"{run.where()[:200]}: {exc}") from None


def submit(store: RunStore, planned: list[tuple[PlannedRun, str]], sweep_id: str) -> list[RunRecord]:
    """Queue every run that is ``todo`` or ``rerun`` (a rerun's old record, one run's own folder
    inside the data home, is replaced), in order, all or none
    (:meth:`~heterolora_core.records.store.RunStore.enqueue_many`)."""
    chosen = [(run, state) for run, state in planned if state in ("todo", "rerun")]
    return store.enqueue_many([{**run.config.to_dict(), "sweep_row": run.row.row} for run, _ in chosen],
                              sweep_id=sweep_id, folders=[run.folder for run, _ in chosen],
                              replacing=[state == "rerun" and run.folder is not None for run, state in chosen])


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


# ----------------------------------------------------------------------------------------------
# The Launch page's sweeps: the form's settings as the base, axes of comma-separated values
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FormAxis:
    """A run setting the Launch page offers as a sweep axis: its RunConfig field, how one of its
    comma-separated values is read, a label, and whether it is a search method's setting."""

    name: str
    kind: type
    label: str
    search_only: bool = False


#: The axes of the Launch page's sweep: the budget is ``enable_ratio``, ``match_uniform_rank`` or
#: ``budget_params`` (adapter parameters, for the rank modes).
FORM_AXES: dict[str, FormAxis] = {a.name: a for a in (
    FormAxis("proxy", str, "proxy", search_only=True),
    FormAxis("seed", int, "seed"),
    FormAxis("rank", int, "rank r"),
    FormAxis("enable_ratio", float, "budget: enable ratio", search_only=True),
    FormAxis("match_uniform_rank", int, "budget: match uniform rank", search_only=True),
    FormAxis("budget_params", int, "budget: adapter parameters", search_only=True),
    FormAxis("lr", float, "learning rate"),
    FormAxis("task", str, "task"),
    FormAxis("model", str, "model"),
    FormAxis("mode", str, "mode"),
)}
#: The budget settings in RunConfig's order of precedence, lowest first (a higher one set hides the lower).
BUDGET_AXES = ("enable_ratio", "match_uniform_rank", "budget_params")


def parse_axis(name: str, text: str) -> list[Any]:
    """The values of a Launch-page axis from ``"0, 1, 2"``, read as the setting's type (duplicates
    dropped, order kept); ValueError with one line. Ranges are the run's validation's to check."""
    axis = FORM_AXES.get(name)
    if axis is None:
        raise ValueError(f"{name!r} cannot be swept here; choose from {', '.join(FORM_AXES)}")
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{axis.label}: give one or more comma-separated values")
    values = []
    for part in parts:
        try:
            value = axis.kind(part)
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(axis.kind, "a value")
            raise ValueError(f"{axis.label}: {part!r} is not {kind}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{axis.label}: {part!r} is not a finite number")
        if value not in values:
            values.append(value)
    return values


def form_sweep(sweep_id: str, base: dict[str, Any] | RunConfig, axes: dict[str, str]) -> SweepSpec:
    """The Launch page's sweep: ``base`` (the form's settings) with each axis's comma-separated
    values (``{"seed": "0, 1", "rank": "8, 32"}``), one run per combination, the first axis
    outermost. A swept budget setting is the budget (the settings that would take precedence over
    it are cleared); ValueError with one line for no axis, two budgets, a search setting swept for a method that
    does not search, or a bad value (the run's own validation, at :func:`expand`)."""
    data = base.to_dict() if isinstance(base, RunConfig) else dict(base)
    if not axes:
        raise ValueError("choose at least one setting to sweep")
    values = {name: parse_axis(name, text) for name, text in axes.items()}
    swept_budgets = [name for name in BUDGET_AXES if name in values]
    if len(swept_budgets) > 1:
        raise ValueError("sweep one budget: the enable ratio, the matched uniform rank or the adapter parameters")
    for name in BUDGET_AXES[BUDGET_AXES.index(swept_budgets[0]) + 1:] if swept_budgets else ():
        data[name] = None
    method = registry.find(data.get("mode"))
    idle = [FORM_AXES[n].label for n in values if FORM_AXES[n].search_only]
    if idle and "mode" not in values and method is not None and not method.searches:
        raise ValueError(f"{method.label} uses no proxy or budget: sweeping {idle[0]} would train the same run again")
    base_only = {k: v for k, v in data.items() if k not in values}
    return parse_sweep({"sweep": sweep_id, "base": base_only, "axes": values}, source="sweep")


def proxy_sweep(base: dict[str, Any] | RunConfig, proxies: Sequence[str], seeds: Sequence[int] = (0,)) -> SweepSpec:
    """One run per (seed, proxy), everything else as ``base``, under a new experiment id; the runs
    of the first seed come first, so the first comparison completes early. ValueError without a
    proxy or seed."""
    data = base.to_dict() if isinstance(base, RunConfig) else dict(base)
    if not proxies:
        raise ValueError("choose at least one proxy for the sweep")
    if not seeds:
        raise ValueError("choose at least one seed for the sweep")
    data = {k: v for k, v in data.items() if k not in ("proxy", "seed")}
    return parse_sweep({"sweep": new_sweep_id(), "base": data, "order": ["seed", "proxy", "row"],
                        "axes": {"seed": [int(s) for s in seeds], "proxy": list(proxies)}}, source="proxy sweep")


def state_counts(planned: list[tuple[PlannedRun, str]]) -> dict[str, int]:
    """How many of a sweep's runs are ``todo``, ``rerun`` (queued again), ``busy`` and ``done``."""
    states = [state for _, state in planned]
    return {s: states.count(s) for s in ("todo", "rerun", "busy", "done")}


def queue_sweep(store: RunStore, spec: SweepSpec) -> list[RunRecord]:
    """Expand a sweep, skip what is done or busy and queue the rest under its id (resumable: the
    Launch page's sweeps; ``python -m heterolora_core sweep FILE`` does the same in steps)."""
    return submit(store, plan_sweep(store, expand(spec), spec.sweep), spec.sweep)


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
    128 + the signal's number when SIGTERM / SIGINT stopped the worker, else 0."""
    deadline = time.monotonic() + 60 * deadline_minutes if deadline_minutes else None
    worker = Worker(store.home, slots=slots, gpus=gpus, stop_when_idle=True, deadline=deadline,
                    pause_file=pause_file, idle_exit=None, log=log, launcher=launcher)
    code = worker.serve()  # returns at once when another worker holds the home's lock
    if code:  # SIGTERM / SIGINT: stop here rather than wait for (or start) another worker
        log(f"sweep {sweep_id}: stopped; its queued runs stay queued (run the sweep again with --wait to go on)")
        return code
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
