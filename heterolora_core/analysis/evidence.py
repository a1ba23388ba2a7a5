"""What kind of evidence a finished run is: where it was measured, and whether it is a real result.

Two runs of one configuration and seed are the same evidence only when they ran on the same kind
of device with the same numerics: a GPU's kernels and a CPU's give different scores for the same
seed (the committed MRPC grid: uniform q,v rank 8, seed 0, 80.88 on the GPU, 79.90 on the CPU), and
so can a new torch minor release. :class:`Evidence` is that kind; the Results page keeps kinds apart
unless asked to pool them (and then says which configurations mix).

A *short run* (:func:`is_short_run`) stops before one pass over its training data or evaluates on
part of the dev split: the dashboard's default short run (32 steps, 200 dev rows) shows where the
budget goes, and its score, near the majority class, is no result. Short runs are marked as such
wherever runs are listed and left out of Results unless asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heterolora_core.records.record import RunSummary
from heterolora_core.training.run_config import RunConfig

SHORT_RUN = "short run"
NOT_RECORDED = "device not recorded"


@dataclass(frozen=True, order=True)
class Evidence:
    """Where a result was measured: the kind of device (``GPU``, ``CPU``, or
    :data:`NOT_RECORDED` for records older than the field) and torch's ``major.minor`` (None when
    the record does not say)."""

    device: str
    torch: str | None = None

    @property
    def tokens(self) -> tuple[str, ...]:
        """Label tokens: ``("GPU", "torch 2.11")``."""
        return (self.device, f"torch {self.torch}" if self.torch else "torch ?")

    @property
    def text(self) -> str:
        return " · ".join(self.tokens)


def device_kind(summary_device: Any, config_device: Any = None) -> str:
    """``cuda``/``cuda:1`` -> ``GPU``, ``cpu`` -> ``CPU``, ``mps`` -> ``MPS``; the config's explicit
    device when the summary has none; else :data:`NOT_RECORDED`."""
    for value in (summary_device, config_device):
        text = str(value or "").lower()
        if text.startswith("cuda"):
            return "GPU"
        if text in ("cpu", "mps"):
            return text.upper()
    return NOT_RECORDED


def torch_minor(versions: Any) -> str | None:
    """``{"torch": "2.13.0+cpu"}`` -> ``"2.13"``; None when not recorded or not a version."""
    version = versions.get("torch") if isinstance(versions, dict) else None
    if not isinstance(version, str):
        return None
    parts = version.split("+")[0].split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]) else None


def evidence_of(config: RunConfig | None, summary: RunSummary, versions: Any = None) -> Evidence:
    """The :class:`Evidence` of a run from its summary's device, its config's device and the
    package versions its config.json records."""
    return Evidence(device_kind(summary.device, config.device if config is not None else None), torch_minor(versions))


def is_short_run(config: RunConfig | None, summary: RunSummary) -> bool:
    """True when the run evaluates on part of the dev split (``dev_limit``) or stops (``max_steps``)
    before one pass over its training rows (the summary's ``train_rows``, else ``train_limit``;
    a step cap with neither known counts as short)."""
    if config is None:
        return False
    if config.dev_limit is not None:
        return True
    if config.max_steps is None:
        return False
    rows = summary.train_rows or config.train_limit
    return rows is None or config.max_steps * config.batch_size < rows
