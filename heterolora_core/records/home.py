"""The data home: where every file the project writes lives.

``$HETEROLORA_HOME`` or the project's ``data/`` folder. Runs launched from the CLI or the dashboard
go to ``<home>/runs/``; benchmark records live under ``<home>/results/``. The run store deletes,
renames and writes only inside the home, after resolving symbolic links (:func:`inside`).
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUNS_DIR = "runs"
RESULTS_DIR = "results"


def data_home() -> Path:
    """``$HETEROLORA_HOME`` or the project's ``data/`` folder, absolute."""
    return Path(os.environ.get("HETEROLORA_HOME") or PROJECT_ROOT / "data").expanduser().resolve()


def runs_dir(home: Path | None = None) -> Path:
    return (home or data_home()) / RUNS_DIR


def inside(path: str | os.PathLike, home: str | os.PathLike) -> bool:
    """True when ``path``, with every symbolic link resolved, lies strictly inside ``home``."""
    try:
        resolved = Path(path).resolve(strict=False)
        root = Path(home).resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return resolved != root and resolved.is_relative_to(root)
