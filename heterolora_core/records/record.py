"""Run records: the on-disk contract between training, the CLI, the dashboard and the benchmarks.

A run lives in one folder::

    config.json          everything needed to rerun it (RunConfig fields + versions + git commit)
    summary.json         status, parameter counts, scores, timings (:class:`RunSummary`); replaced atomically
    metrics.jsonl        one line per logging / eval step: step, epoch, loss, eval metrics
    reallocations.jsonl  one line per reallocation (:class:`ReallocationLine`): step, scores, enabled
    adapters/            trained adapters + head (safetensors), written when the run finishes

JSON-lines files are appended and flushed line by line, so a run killed at any moment leaves
valid lines up to that moment. ``summary.json`` is replaced atomically (write to a temporary file,
then ``os.replace``), so it is always whole.

Readers never trust a file: any file may be missing, truncated, full of random bytes or hold
values of the wrong type. :class:`RunSummary` and :class:`ReallocationLine` parse field by field
and keep what is sound; what is not is named in ``problems`` (and a line that is not sound at all
is skipped), so one bad record shows as such and takes nothing else down.

Torch-free: the dashboard, the store and the ``runs`` listing use it.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from heterolora_core.methods import registry
from heterolora_core.records.home import runs_dir
from heterolora_core.records.processes import process_alive, process_started_at, this_host
from heterolora_core.training.data import MAX_CLASSES
from heterolora_core.training.run_config import LIMITS, RunConfig
from heterolora_core.vocab import KINDS, ModuleName


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


STATUSES = tuple(s.value for s in Status)
ACTIVE_STATUSES = (Status.QUEUED.value, Status.RUNNING.value)
#: Largest file a reader opens whole (a summary or config is a few kB; anything larger is not ours).
MAX_JSON_BYTES = 4 * 2**20

# What a record can make a reader build, whatever it claims: the bounds below are checked as a
# record is parsed, before anything sized by it is allocated (a grid of a record's n_layers rows,
# a timeline of its modules x reallocations). A value past a bound is dropped and named in the
# summary's problems; a reallocation line naming more than a model can have is skipped.
#: Layers of the largest model a record can describe (the deepest models published have ~130).
MAX_LAYERS = 512
#: Candidates a reallocation line can name: every LoRA target and shortcut kind in every layer.
MAX_CANDIDATES = MAX_LAYERS * sum(len(kinds) for kinds in KINDS.values())
#: Longest module name kept from a reallocation line (``layer.511.shortcut.cross_attn`` is 28).
MAX_NAME_CHARS = 200
#: Cells (reallocation lines x distinct modules) a reader keeps from one reallocations file; a
#: longer record is thinned evenly (every k-th line, the last one always kept: :func:`read_reallocations`).
MAX_TIMELINE_CELLS = 500_000
#: Lines a reader keeps from one metrics file (thinned evenly beyond it, the last one kept).
MAX_METRICS_LINES = 200_000
#: Longest JSON-lines line a reader parses; a longer one is skipped without being held in memory
#: (a reallocation line of MAX_CANDIDATES scores, enabled and ranks is ~0.5 MB).
MAX_JSONL_LINE_BYTES = 4 * 2**20


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON next to ``path`` and move it into place (readers see old or new).
    Non-finite floats are refused: strict JSON readers reject ``NaN``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a full disk or a kill leaves no half-written temporary file
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on the disk holding {path.parent}: cannot write "
                                        f"{path.name}") from None
        raise


#: Free space under which a run's failure is put down to a full disk (its files cannot be written).
FULL_DISK_BYTES = 2**20


def full_disk(path: Path) -> str | None:
    """``"the disk holding <path> is full (N bytes free)"`` when less than :data:`FULL_DISK_BYTES`
    are free there, else None (also when it cannot be told)."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    return f"the disk holding {path} is full ({free:,} bytes free)" if free < FULL_DISK_BYTES else None


def file_stamp(path: Path) -> tuple[int, int]:
    """``(mtime_ns, size)`` of a file, ``(0, -1)`` when it cannot be read: a cheap key that changes
    when the file is rewritten (for caches of parsed records)."""
    try:
        stat = path.stat()
        return stat.st_mtime_ns, stat.st_size
    except OSError:
        return 0, -1


def open_regular(path: Path):
    """``path`` opened for binary reading; OSError when it is not a regular file. Opened without
    blocking, so a FIFO or device put where a record file belongs never hangs a reader."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object in ``path``, None), or (None, why not) when it is missing, not a regular
    file, too large, undecodable, not JSON, or not an object."""
    try:
        if path.is_symlink():
            return None, f"{path.name} is a symbolic link"
        with open_regular(path) as fh:
            if os.fstat(fh.fileno()).st_size > MAX_JSON_BYTES:
                return None, f"{path.name} is larger than {MAX_JSON_BYTES // 2**20} MiB"
            data = json.loads(fh.read(MAX_JSON_BYTES + 1).decode("utf-8"))
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except OSError as exc:
        return None, f"{path.name} is unreadable ({exc.strerror or exc})"
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"{path.name} is unreadable ({type(exc).__name__})"
    if not isinstance(data, dict):
        return None, f"{path.name} holds {type(data).__name__}, not an object"
    return data, None


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, line by line; a torn, undecodable or non-object line
    is skipped (bytes are decoded per line, so random bytes cost only their own line)."""
    try:
        with open_regular(path) as fh:
            for raw in _bounded_lines(fh, MAX_JSONL_LINE_BYTES):
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    continue
                if isinstance(obj, dict):
                    yield obj
    except OSError:
        return


def _bounded_lines(fh, limit: int) -> Iterator[bytes]:
    """The lines of a binary file, each at most ``limit`` bytes; a longer line is read past in
    chunks of ``limit`` bytes and skipped (never held whole)."""
    while raw := fh.readline(limit + 1):
        if len(raw) > limit and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = fh.readline(limit + 1)
            continue
        yield raw


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


# ---------------------------------------------------------------------------------------------
# summary.json
# ---------------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    """The schema of ``summary.json``: a run's state and results. Every field but ``status`` is
    optional (None: not known, or not written yet)."""

    status: str = Status.QUEUED.value
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None  # the training process, while it runs
    pid_started_at: float | None = None  # its start time (psutil's create_time): a signal guard
    host: str | None = None  # the machine the training process runs on (its pid means nothing elsewhere)
    error: str | None = None  # why a run failed or was cancelled
    progress: float | None = None  # 0..1
    step: int | None = None
    max_steps: int | None = None
    eta_seconds: float | None = None
    metric: str | None = None  # the headline metric's key (accuracy, matthews_correlation, pearson)
    best_score: float | None = None  # headline metric, best evaluation (a fraction: 0.85, not 85)
    final_score: float | None = None  # headline metric, last evaluation
    trainable_params: int | None = None  # enabled adapter parameters (head excluded)
    head_params: int | None = None
    num_reallocations: int | None = None
    planned_reallocations: int | None = None
    wall_seconds: float | None = None
    search_seconds: float | None = None
    train_seconds: float | None = None
    process_seconds: float | None = None
    num_labels: int | None = None
    label_names: list[str] | None = None
    is_regression: bool | None = None
    train_rows: int | None = None
    dev_rows: int | None = None
    n_layers: int | None = None
    device: str | None = None
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    parallel_runs: int | None = None
    adalora_initial_params: int | None = None
    adalora_target_params: int | None = None
    adalora_init_r: int | None = None
    adalora_schedule: dict[str, Any] | None = None
    chat_prompts: bool | None = None  # causal-LM runs: prompts rendered with the chat template (predict does too)
    #: keys a reader does not know (newer or foreign writers); kept, not interpreted
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    #: what a reader had to drop, one line each (not written back)
    problems: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "problems"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSummary":
        """Parse field by field: a value of the wrong type is dropped and named in ``problems``."""
        out = cls(status="")
        for key, value in data.items():
            if key not in _FIELD_PARSERS:
                out.extra[key] = value
                continue
            parsed = None if value is None else _FIELD_PARSERS[key](value)
            if value is not None and parsed is None:
                out.problems.append(f"summary.json: {key} has an unusable value {short_repr(value)}")
                continue
            setattr(out, key, parsed)
        if out.status not in STATUSES:
            if "status" not in data or out.status:
                out.problems.append(f"summary.json: unknown status {short_repr(data.get('status'))}")
            out.status = Status.FAILED.value
            out.error = out.error or "the record's status is missing or not one the project writes"
        return out

    def to_dict(self) -> dict[str, Any]:
        """Known fields that are set, then the extra keys (what ``summary.json`` holds)."""
        data = {name: getattr(self, name) for name in self.field_names() if getattr(self, name) is not None}
        return {**self.extra, **data}

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (``...`` marks a cut): what a message quotes of a
    value read from a file, however large the value. A container is cut before it is printed whole."""
    try:
        text = repr(value) if not isinstance(value, (list, dict, tuple)) else _bounded_repr(value, limit)
    except RecursionError:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:max(limit - 3, 1)] + "..."


def _bounded_repr(value: Any, limit: int) -> str:
    """repr of a (possibly deeply shared) container, stopping once ``limit`` characters are out."""
    out: list[str] = []
    size = 0

    def walk(v: Any) -> None:
        nonlocal size
        if size > limit:
            return
        if isinstance(v, (list, tuple)):
            out.append("[")
            size += 1
            for i, item in enumerate(v):
                if size > limit:
                    return
                if i:
                    out.append(", ")
                    size += 2
                walk(item)
            out.append("]")
            size += 1
        elif isinstance(v, dict):
            out.append("{")
            size += 1
            for i, (k, item) in enumerate(v.items()):
                if size > limit:
                    return
                text = ("" if not i else ", ") + repr(k)[:limit] + ": "
                out.append(text)
                size += len(text)
                walk(item)
            out.append("}")
            size += 1
        else:
            text = repr(v)[:limit + 1]
            out.append(text)
            size += len(text)

    walk(value)
    return "".join(out)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= 100_000 else None


def _count(value: Any) -> int | None:
    n = _integer(value)
    return n if n is not None and n >= 0 else None


def _count_to(limit: int):
    """A parser of whole numbers 0..``limit`` (a size read from a record: larger is unusable)."""
    return lambda value: n if (n := _count(value)) is not None and n <= limit else None


def _string_list(value: Any) -> list[str] | None:
    return list(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _label_names(value: Any) -> list[str] | None:
    names = _string_list(value)
    return names if names is not None and len(names) <= MAX_CLASSES else None


_FIELD_PARSERS = {
    "status": _text, "created_at": _number, "started_at": _number, "finished_at": _number,
    "pid": lambda v: (_integer(v) if (_integer(v) or 0) > 0 else None), "pid_started_at": _number,
    "host": _text,
    "error": _text, "progress": lambda v: min(max(_number(v), 0.0), 1.0) if _number(v) is not None else None,
    "step": _count, "max_steps": _count, "eta_seconds": _number, "metric": _text, "best_score": _number,
    "final_score": _number, "trainable_params": _count, "head_params": _count, "num_reallocations": _count,
    "planned_reallocations": _count, "wall_seconds": _number, "search_seconds": _number,
    "train_seconds": _number, "process_seconds": _number, "num_labels": _count_to(MAX_CLASSES), "label_names": _label_names,
    "is_regression": lambda v: v if isinstance(v, bool) else None, "train_rows": _count, "dev_rows": _count,
    "n_layers": _count_to(MAX_LAYERS), "device": _text, "peak_rss_mb": _number, "peak_gpu_mb": _number,
    "parallel_runs": _count, "adalora_initial_params": _count, "adalora_target_params": _count,
    "adalora_init_r": _count, "adalora_schedule": lambda v: v if isinstance(v, dict) else None,
    "chat_prompts": lambda v: v if isinstance(v, bool) else None,
}


# ---------------------------------------------------------------------------------------------
# reallocations.jsonl
# ---------------------------------------------------------------------------------------------

@dataclass
class ReallocationLine:
    """One selection of a run: the step it followed, every module's score, the enabled set, and
    for rank-allocating methods each module's rank. ``extra`` keeps the line's other keys
    (``seconds``, ``uniform``, ``source``, ``budget``, ``final``)."""

    step: int
    scores: dict[str, float]
    enabled: list[str]
    ranks: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReallocationLine | None":
        """The line, or None when its step, scores or enabled set is not of the right shape or names
        more than :data:`MAX_CANDIDATES` modules (non-numeric scores, ranks outside 0..the rank
        limit and names a model cannot have (a layer past :data:`MAX_LAYERS`, an unknown kind, a
        name longer than :data:`MAX_NAME_CHARS`) are dropped one by one)."""
        step = _count(data.get("step", 0))
        scores, enabled, ranks = data.get("scores") or {}, data.get("enabled") or [], data.get("ranks")
        if step is None or not isinstance(scores, dict) or _string_list(enabled) is None:
            return None
        if max(len(scores), len(enabled), len(ranks) if isinstance(ranks, dict) else 0) > MAX_CANDIDATES:
            return None
        clean = {str(k): float(v) for k, v in scores.items() if _number(v) is not None and _possible_name(str(k))}
        if ranks is not None:
            rank_of = _count_to(LIMITS["rank"])
            ranks = {str(k): int(v) for k, v in ranks.items() if rank_of(v) is not None and _possible_name(str(k))
                     } if isinstance(ranks, dict) else None
        extra = {k: v for k, v in data.items() if k not in ("step", "scores", "enabled", "ranks")}
        return cls(step, clean, [n for n in enabled if _possible_name(n)], ranks, extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "scores": self.scores, "enabled": self.enabled}
        if self.ranks is not None:
            out["ranks"] = self.ranks
        return {**out, **self.extra}


def _possible_name(name: str) -> bool:
    """False for a module name no model can have: longer than :data:`MAX_NAME_CHARS`, or a
    candidate name (``layer.{i}.{group}.{kind}``) past :data:`MAX_LAYERS` or of an unknown kind.
    Other names are kept (a reader shows them as they are and the analysis skips them)."""
    if len(name) > MAX_NAME_CHARS:
        return False
    parsed = ModuleName.parse(name)
    return parsed is None or (parsed.layer < MAX_LAYERS and parsed.kind in KINDS[parsed.group])


def metrics_line(data: dict[str, Any]) -> dict[str, float] | None:
    """A ``metrics.jsonl`` line with its numeric values only; None without any."""
    clean = {str(k): float(v) for k, v in data.items() if _number(v) is not None}
    return clean or None


class Thinned(NamedTuple):
    """What a bounded reader kept of a JSON-lines file: ``lines`` (in file order), ``recorded``
    (every sound line the file holds) and ``every`` (1: all kept; k: every k-th line, the last one
    always kept)."""

    lines: list
    recorded: int
    every: int


def thin_evenly(items: Iterable[Any], too_many: Callable[[int], bool]) -> Thinned:
    """Keep every k-th item of ``items`` (and the last), k the smallest power of two for which
    ``too_many(len(kept))`` is False; one pass, memory bounded by what is kept. ``too_many`` may
    change its answer as items are read (a budget of cells over the modules seen so far)."""
    kept: list[tuple[int, Any]] = []
    every, count, last = 1, 0, None
    for item in items:
        last = (count, item)
        if count % every == 0:
            kept.append(last)
            while len(kept) > 1 and too_many(len(kept)):
                every *= 2
                kept = [(i, x) for i, x in kept if i % every == 0]
        count += 1
    if last is not None and kept[-1][0] != last[0]:
        kept.append(last)
    return Thinned([x for _, x in kept], count, every)


def read_reallocations(path: Path) -> Thinned:
    """The sound lines of a ``reallocations.jsonl`` (:class:`ReallocationLine`), bounded: at most
    :data:`MAX_CANDIDATES` distinct module names over the file (later new names are dropped) and
    at most :data:`MAX_TIMELINE_CELLS` lines x names (a longer record is thinned evenly)."""
    names: set[str] = set()

    def lines() -> Iterator[ReallocationLine]:
        for line in map(ReallocationLine.from_dict, iter_jsonl(path)):
            if line is None:
                continue
            new = (set(line.scores) | set(line.enabled)) - names
            if len(names) + len(new) > MAX_CANDIDATES:
                room = MAX_CANDIDATES - len(names)
                allowed = names | set(sorted(new)[:max(room, 0)])
                line = ReallocationLine(line.step, {k: v for k, v in line.scores.items() if k in allowed},
                                        [n for n in line.enabled if n in allowed], line.ranks, line.extra)
                new = allowed - names
            names.update(new)
            yield line

    return thin_evenly(lines(), lambda kept: kept * max(1, len(names)) > MAX_TIMELINE_CELLS)


def read_metrics(path: Path) -> Thinned:
    """The numeric lines of a ``metrics.jsonl`` (:func:`metrics_line`), at most
    :data:`MAX_METRICS_LINES` (a longer file is thinned evenly, the last line kept)."""
    lines = (line for line in map(metrics_line, iter_jsonl(path)) if line is not None)
    return thin_evenly(lines, lambda kept: kept > MAX_METRICS_LINES)


# ---------------------------------------------------------------------------------------------
# One run folder
# ---------------------------------------------------------------------------------------------

class RunRecord:
    """One run folder. Writers use ``create`` / ``update_summary`` / ``append_*``; readers use
    ``config`` / ``summary`` / ``metrics`` / ``reallocations``."""

    CONFIG = "config.json"
    SUMMARY = "summary.json"
    METRICS = "metrics.jsonl"
    REALLOCATIONS = "reallocations.jsonl"
    ADAPTERS = "adapters"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    # -- writing ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, config: dict[str, Any], status: str = Status.QUEUED,
               **summary: Any) -> "RunRecord":
        """Make the folder with ``config.json`` and an initial ``summary.json`` (``status``, the
        creation time and ``summary``'s fields, written at once).

        Refuses a folder that already holds a run (nothing that was saved is overwritten).
        ``queued`` is written only by the run store: a queued folder is a run waiting for its worker.
        """
        record = cls(path)
        if record.exists():
            raise FileExistsError(f"{record.path} already holds a run record")
        unknown = sorted(set(summary) - set(_FIELD_PARSERS))
        if unknown:
            raise ValueError(f"not summary fields: {', '.join(unknown)}")
        try:
            record.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only parent, a file in the way: one line naming the folder
            raise OSError(f"cannot create the run folder {record.path}: {exc.strerror or exc}") from None
        atomic_write_json(record.path / cls.CONFIG, config)
        first = RunSummary(status=str(status), created_at=time.time())
        for key, value in summary.items():
            setattr(first, key, value)
        atomic_write_json(record.path / cls.SUMMARY, first.to_dict())
        return record

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace ``config.json`` (atomic): a queued record's config, completed when it is claimed."""
        atomic_write_json(self.path / self.CONFIG, config)

    def update_summary(self, **fields: Any) -> RunSummary:
        """Merge ``fields`` (names of :class:`RunSummary` fields) into ``summary.json`` (atomic).
        A field set to None is removed. Unknown names are a programming error (ValueError)."""
        unknown = sorted(set(fields) - set(_FIELD_PARSERS))
        if unknown:
            raise ValueError(f"not summary fields: {', '.join(unknown)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown status {fields['status']!r}; expected one of {STATUSES}")
        data, _ = read_json(self.path / self.SUMMARY)
        summary = RunSummary.from_dict(data or {})
        for key, value in fields.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None  # NaN / inf scores are not results (and strict JSON has no NaN)
            setattr(summary, key, str(value) if isinstance(value, StrEnum) else value)
        atomic_write_json(self.path / self.SUMMARY, summary.to_dict())
        return summary

    def _append(self, name: str, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n"
        with open(self.path / name, "a") as fh:
            fh.write(line)
            fh.flush()

    def append_metrics(self, **fields: Any) -> None:
        """A metrics line; non-finite values (a NaN loss) are written as null."""
        self._append(self.METRICS, {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                    for k, v in fields.items()})

    def append_reallocation(self, step: int, scores: dict[str, float], enabled: list[str], **extra: Any) -> None:
        clean = {n: (float(s) if math.isfinite(float(s)) else None) for n, s in scores.items()}
        self._append(self.REALLOCATIONS, {"step": int(step), "scores": clean, "enabled": list(enabled), **extra})

    # -- reading ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / self.CONFIG).exists() or (self.path / self.SUMMARY).exists()

    def config(self) -> dict[str, Any]:
        """``config.json`` as written ({} when missing or unreadable; :meth:`run_config` says why)."""
        data, _ = read_json(self.path / self.CONFIG)
        return data or {}

    def run_config(self) -> tuple[RunConfig | None, str | None]:
        """(the RunConfig, None), or (None, why it cannot be read: missing, corrupt, mistyped)."""
        data, problem = read_json(self.path / self.CONFIG)
        if data is None:
            return None, problem
        config = RunConfig.from_dict(data)
        try:
            config.check_types()
        except ValueError as exc:
            return None, f"config.json: {exc}"
        return config, None

    def versions(self) -> dict[str, str] | None:
        """The package versions config.json records (``{"torch": "2.13.0", ...}``: string values
        only; None when it records none)."""
        data, _ = read_json(self.path / self.CONFIG)
        versions = data.get("versions") if isinstance(data, dict) else None
        if not isinstance(versions, dict):
            return None
        return {str(k)[:64]: v[:64] for k, v in versions.items() if isinstance(v, str)} or None

    def raw_summary(self) -> RunSummary:
        """``summary.json`` as written (an empty ``failed`` summary, with the problem, when unreadable)."""
        data, problem = read_json(self.path / self.SUMMARY)
        if data is None:
            return RunSummary(status=Status.FAILED.value, error=problem, problems=[problem])
        return RunSummary.from_dict(data)

    def summary(self) -> RunSummary:
        """The summary with the *effective* status (see :func:`effective_summary`)."""
        return effective_summary(self.raw_summary())

    def metrics(self) -> list[dict[str, float]]:
        """The metrics lines (bounded: :func:`read_metrics`)."""
        return read_metrics(self.path / self.METRICS).lines

    def reallocations(self) -> list[ReallocationLine]:
        """The reallocation lines (bounded: :func:`read_reallocations`)."""
        return read_reallocations(self.path / self.REALLOCATIONS).lines

    def mark_failed_if_dead(self) -> bool:
        """Persist ``failed`` for a running run whose process is gone. Returns True if it did."""
        raw = self.raw_summary()
        if raw.status == Status.RUNNING and process_gone(raw):
            self.update_summary(status=Status.FAILED, error=self.summary().error, pid=None)
            return True
        return False


def process_identity() -> dict[str, Any]:
    """The summary fields naming the calling process as a run's training process."""
    return {"pid": os.getpid(), "pid_started_at": process_started_at(), "host": this_host()}


def runs_here(summary: RunSummary) -> bool:
    """True when the run's training process is (or was) on this machine, or no host is recorded."""
    return summary.host is None or summary.host == this_host()


def process_gone(summary: RunSummary, worker_pid: int | None = None) -> bool:
    """True when the training process of a ``running`` run is gone. Judged by its pid on its own
    machine; a run on another machine (a Ray node) is gone only when the worker that started it
    (``worker_pid``, a process on this machine, where the store lives) is gone."""
    if runs_here(summary):
        return not process_alive(summary.pid, summary.started_at)
    return bool(worker_pid) and not process_alive(worker_pid)


def readable_run(run_dir: str | os.PathLike, verb: str = "read") -> tuple["RunRecord", RunConfig]:
    """(the record, its config) of a run folder; ValueError with one line when the folder is no run
    or its config cannot be read (``run X cannot be <verb>: why``)."""
    record = RunRecord(run_dir)
    if not record.exists():
        raise ValueError(f"{run_dir} is not a run folder (no config.json)")
    config, problem = record.run_config()
    if config is None:
        raise ValueError(f"run {record.run_id} cannot be {verb}: {problem}")
    return record, config


def process_ended(pid: int | None) -> str:
    """Why a run marked running is failed when its process is gone."""
    if pid is None:
        return "the run is marked running but records no training process (it never started, or its record was cut short)"
    return f"process {pid} ended without finishing the run"


def effective_summary(raw: RunSummary) -> RunSummary:
    """A copy of ``raw`` with the *effective* status: a ``running`` run whose process is gone is
    reported as ``failed`` (with the reason in ``error``; see :func:`process_gone`)."""
    summary = dataclasses.replace(raw, extra=dict(raw.extra), problems=list(raw.problems))
    if summary.status == Status.RUNNING and process_gone(summary):
        summary.status = Status.FAILED.value
        summary.error = summary.error or process_ended(summary.pid)
    return summary


def new_run_id(config: dict[str, Any]) -> str:
    """``YYYYmmdd-HHMMSS-<task>-<mode>[-<proxy>]-<6 hex>``: sortable by creation time."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parts = [stamp, str(config.get("task", "run")), str(config.get("mode", ""))]
    method = registry.find(config.get("mode"))
    if method is not None and method.searches:
        parts.append(str(config.get("proxy", "")))
    parts.append(uuid.uuid4().hex[:6])
    return "-".join("".join(c if c.isalnum() or c in "-_." else "_" for c in p)[:40] for p in parts if p)


def find_runs(home: Path | None = None, root: Path | None = None) -> list[RunRecord]:
    """Every run folder under ``root`` (default: ``<home>/runs``), searched recursively without
    following symbolic links, newest first by creation time."""
    base = root or runs_dir(home)
    if not base.exists():
        return []
    records = [RunRecord(Path(dirpath)) for dirpath, _, files in os.walk(base) if RunRecord.CONFIG in files]
    return sorted(records, key=lambda r: r.raw_summary().created_at or 0.0, reverse=True)
