"""What every benchmark script shares: its command line's common options, where GLUE lives, and
how results are written (a table on stdout, JSON under ``benchmarks/results/``)."""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from heterolora_core.records.home import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "benchmarks" / "results"


def parser(doc: str, out_name: str) -> argparse.ArgumentParser:
    """An argument parser described by the first line of ``doc``, with ``--out`` defaulting to
    ``benchmarks/results/<out_name>``; sets ``GLUE_DIR`` to ``../shared/glue`` when unset."""
    os.environ.setdefault("GLUE_DIR", str(PROJECT_ROOT.parent / "shared" / "glue"))
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / out_name, help=f"JSON results (default: benchmarks/results/{out_name})")
    return p


def _number_list(kind: type, text: str, positive: bool) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not values or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated {'positive ' if positive else ''}finite "
                                         f"{kind.__name__}s, got {text!r}")
    return values


def int_list(text: str) -> list[int]:
    """argparse type: ``"0,1,2"`` -> [0, 1, 2] (a one-line error otherwise)."""
    return _number_list(int, text, positive=False)


def positive_int_list(text: str) -> list[int]:
    """argparse type: ``"1024,2048"`` -> [1024, 2048], every value > 0."""
    return _number_list(int, text, positive=True)


def positive_float_list(text: str) -> list[float]:
    """argparse type: ``"2e-4,5e-4"`` -> [0.0002, 0.0005], every value finite and > 0."""
    return _number_list(float, text, positive=True)


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")
