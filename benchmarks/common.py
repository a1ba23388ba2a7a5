"""What every benchmark script shares: its command line's common options, where GLUE lives, and
how results are written (a table on stdout, JSON under ``benchmarks/results/``)."""
from __future__ import annotations

import argparse
import json
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


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")
