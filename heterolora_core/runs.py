"""Run records: the on-disk contract between training, the CLI, the dashboard and the benchmarks.

A run lives in one folder::

    config.json          everything needed to rerun it (RunConfig fields + versions + git commit)
    summary.json         status, parameter counts, scores, timings; rewritten atomically
    metrics.jsonl        one line per logging / eval step: step, epoch, loss, eval metrics
    reallocations.jsonl  one line per reallocation: step, scores (name -> float), enabled (names)
    adapters/            trained adapters + head (safetensors), written when the run finishes

JSON-lines files are appended and flushed line by line, so a run killed at any moment leaves
valid lines up to that moment (a torn last line is skipped by the readers). ``summary.json`` is
replaced atomically (write to a temporary file, then ``os.replace``), so it is always whole.

This module imports nothing heavy (no torch): the dashboard and the ``runs`` listing use it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

STATUSES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATUSES = ("queued", "running")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_home() -> Path:
    """The data home: ``$HETEROLORA_HOME`` or the project's ``data/`` folder."""
    return Path(os.environ.get("HETEROLORA_HOME") or PROJECT_ROOT / "data").expanduser().resolve()


def runs_dir(home: Path | None = None) -> Path:
    return (home or data_home()) / "runs"


# ---------------------------------------------------------------------------------------------
# Run configuration
# ---------------------------------------------------------------------------------------------

MODES = ("lora", "static", "dynamic", "adalora")
RANKINGS = ("combined", "separated")
SCORE_NORMS = ("kind", "raw")
PROXIES = ("constant", "grad_norm", "snip", "synflow", "fisher", "alpha_test")
DEFAULT_MODEL = "embedded"


@dataclass
class RunConfig:
    """Everything that defines a training run. Field names are the ``config.json`` keys.

    ``enable_ratio`` and ``match_uniform_rank`` are two ways to state the budget of the search
    modes; ``match_uniform_rank`` wins when both are set. ``lora`` mode enables every candidate.
    """

    task: str = "mrpc"
    model: str = DEFAULT_MODEL
    mode: str = "dynamic"
    proxy: str = "grad_norm"
    rank: int = 8
    alpha: float | None = None  # None: 2 * rank (constant scaling alpha / r = 2 at every rank)
    enable_ratio: float = 0.25
    match_uniform_rank: int | None = None
    ranking: str = "combined"
    score_norm: str = "kind"
    shortcuts: bool = True
    lora_targets: list[str] = field(default_factory=lambda: ["q", "v"])
    seed: int = 0
    lr: float = 5e-4
    epochs: float = 3.0
    max_steps: int | None = None
    train_limit: int | None = None
    dev_limit: int | None = None
    realloc_every: float = 0.2
    proxy_batches: int | None = None  # None: score from ordinary training steps (see proxies.py)
    score_window: int = 8
    batch_size: int = 16
    max_length: int = 128
    eval_every: int | None = None  # None: once per epoch (and always at the end)
    logging_steps: int | None = None  # None: about eight loss points per run, at most every 10 steps
    device: str = "auto"
    bf16: bool = False
    train_file: str | None = None
    dev_file: str | None = None
    # AdaLoRA mode only (PEFT's AdaLoRA): rank at the start and average target rank at the end.
    adalora_init_r: int = 32
    adalora_target_r: int = 24

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Build from a ``config.json`` dict, ignoring keys that are not fields (versions, ...)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_cli_args(self) -> list[str]:
        """The ``python -m heterolora_core train`` arguments that reproduce this config."""
        args: list[str] = []
        defaults = RunConfig()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if f.name == "shortcuts":
                args.append("--shortcuts" if value else "--no-shortcuts")
            elif f.name == "bf16":
                if value:
                    args.append("--bf16")
            elif f.name == "lora_targets":
                args += [flag, ",".join(value)]
            elif value is None:
                if getattr(defaults, f.name) is not None:
                    raise ValueError(f"{f.name} cannot be None")
            else:
                args += [flag, str(value)]
        return args


# ---------------------------------------------------------------------------------------------
# Reading and writing one run
# ---------------------------------------------------------------------------------------------


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or unreadable."""
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the whole JSON objects of a JSON-lines file; a torn or corrupt line is skipped."""
    try:
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    yield obj
    except OSError:
        return


def process_alive(pid: int | None, started_at: float | None = None) -> bool:
    """True when ``pid`` is a live (non-zombie) process that started no later than the run.

    ``started_at`` guards against pid reuse: a process created after the run started is
    another program.
    """
    if not pid:
        return False
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil ships with accelerate
        try:
            os.kill(int(pid), 0)
            return True
        except (OSError, ValueError):
            return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started_at is not None and proc.create_time() > float(started_at) + 2.0:
            return False
        return True
    except (psutil.Error, ValueError):
        return False


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
    def create(cls, path: str | os.PathLike, config: dict[str, Any], status: str = "queued") -> "RunRecord":
        """Make the folder with ``config.json`` and an initial ``summary.json``.

        Refuses a folder that already holds a run (nothing that was saved is overwritten).
        """
        record = cls(path)
        if (record.path / cls.SUMMARY).exists() or (record.path / cls.CONFIG).exists():
            raise FileExistsError(f"{record.path} already holds a run record")
        record.path.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(record.path / cls.CONFIG, config)
        _atomic_write_json(record.path / cls.SUMMARY, {"status": status, "created_at": time.time()})
        return record

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace ``config.json`` (atomic): a queued record's config, completed when it is claimed."""
        _atomic_write_json(self.path / self.CONFIG, config)

    def update_summary(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``summary.json`` (atomic). A field set to None is removed."""
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown status {fields['status']!r}; expected one of {STATUSES}")
        summary = read_json(self.path / self.SUMMARY) or {}
        for key, value in fields.items():
            if value is None:
                summary.pop(key, None)
            else:
                summary[key] = value
        _atomic_write_json(self.path / self.SUMMARY, summary)
        return summary

    def _append(self, name: str, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with open(self.path / name, "a") as fh:
            fh.write(line)
            fh.flush()

    def append_metrics(self, **fields: Any) -> None:
        self._append(self.METRICS, fields)

    def append_reallocation(self, step: int, scores: dict[str, float], enabled: list[str], **extra: Any) -> None:
        self._append(self.REALLOCATIONS, {"step": int(step), "scores": scores, "enabled": list(enabled), **extra})

    # -- reading ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / self.CONFIG).exists() or (self.path / self.SUMMARY).exists()

    def config(self) -> dict[str, Any]:
        return read_json(self.path / self.CONFIG) or {}

    def raw_summary(self) -> dict[str, Any]:
        return read_json(self.path / self.SUMMARY) or {}

    def summary(self) -> dict[str, Any]:
        """The summary with the *effective* status: a ``running`` run whose process is gone is
        reported as ``failed`` (with the reason in ``error``)."""
        summary = self.raw_summary()
        if not summary:
            summary = {"status": "failed", "error": "summary.json is missing or unreadable"}
        if summary.get("status") == "running" and not process_alive(summary.get("pid"), summary.get("started_at")):
            summary = dict(summary)
            summary["status"] = "failed"
            summary.setdefault("error", f"process {summary.get('pid')} ended without finishing the run")
        return summary

    def metrics(self) -> list[dict[str, Any]]:
        return list(iter_jsonl(self.path / self.METRICS))

    def reallocations(self) -> list[dict[str, Any]]:
        return list(iter_jsonl(self.path / self.REALLOCATIONS))

    def mark_failed_if_dead(self) -> bool:
        """Persist ``failed`` for a running run whose process is gone. Returns True if it did."""
        raw = self.raw_summary()
        if raw.get("status") == "running" and not process_alive(raw.get("pid"), raw.get("started_at")):
            self.update_summary(status="failed", error=self.summary().get("error"), pid=None)
            return True
        return False


def new_run_id(config: dict[str, Any]) -> str:
    """``YYYYmmdd-HHMMSS-<task>-<mode>[-<proxy>]-<6 hex>``: sortable by creation time."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parts = [stamp, str(config.get("task", "run")), str(config.get("mode", ""))]
    if config.get("mode") in ("static", "dynamic"):
        parts.append(str(config.get("proxy", "")))
    parts.append(uuid.uuid4().hex[:6])
    return "-".join(p.replace("/", "_") for p in parts if p)


def find_runs(home: Path | None = None, root: Path | None = None) -> list[RunRecord]:
    """Every run folder under ``root`` (default: ``<home>/runs``), searched recursively, newest
    first by creation time."""
    base = root or runs_dir(home)
    if not base.exists():
        return []
    records = [RunRecord(p.parent) for p in base.rglob(RunRecord.CONFIG)]
    return sorted(records, key=lambda r: r.raw_summary().get("created_at", 0.0), reverse=True)
