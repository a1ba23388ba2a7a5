"""Hostile records and data files, round 3 (issue 21, items 2, 6, 8 and 9): what a record claims is
bounded before anything is allocated, a data file cannot exhaust memory or block, and text from a
record is shown as text (never markdown, HTML or terminal control codes).

Where the harm is memory, the check runs in a subprocess under ``RLIMIT_AS`` (1.5 GiB of address
space): a regression fails with a MemoryError there instead of swapping the machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli_helpers import REPO, cli_env, run_cli

MEMORY_BOUND = 1536 * 2**20
HUGE = 100_000_000


def run_bounded(code: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter whose address space is capped at :data:`MEMORY_BOUND`."""
    prelude = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_BOUND}, {MEMORY_BOUND}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HETEROLORA_DASHBOARD_WORKER": "0", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


# -- item 2: one record cannot make a reader build a grid of the size it claims ----------------------

def write_hostile_allocation(record, lines: int = 30_000) -> None:
    """A synthetic 6-layer run's record with: ``n_layers`` 10^8 in its summary, a reallocation line
    naming ``layer.100000000.lora.q`` and an unknown kind with a rank of 10^15, then ``lines``
    lines that each name one more module (``layer.{i % 512}.{group}.{kind}``, 5,632 names in all)."""
    summary = json.loads((record.path / "summary.json").read_text())
    summary["n_layers"] = HUGE
    (record.path / "summary.json").write_text(json.dumps(summary))
    kinds = [("lora", k) for k in ("q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out")] + [
        ("shortcut", k) for k in ("res_attn", "res_ffn", "cross_attn", "cross_ffn")]
    with open(record.path / "reallocations.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 999, "scores": {f"layer.{HUGE}.lora.q": 1.0, "layer.3.lora.evil": 2.0},
                             "enabled": [f"layer.{HUGE}.lora.q", "layer.3.lora.evil"],
                             "ranks": {f"layer.{HUGE}.lora.q": 10**15, "layer.1.lora.q": 10**15}}) + "\n")
        for i in range(lines):
            group, kind = kinds[(i // 512) % len(kinds)]
            name = f"layer.{i % 512}.{group}.{kind}"
            fh.write(json.dumps({"step": 1000 + i, "scores": {name: 1.0}, "enabled": [name]}) + "\n")


ALLOCATION_VIEW = """
import json, sys
from pathlib import Path
from heterolora_core.analysis import allocation as alloc
from heterolora_core.records.record import RunRecord

record = RunRecord(sys.argv[1])
lines = record.reallocations()
frequency = alloc.enable_frequency(lines)
n_layers = alloc.n_layers_of(frequency["module"], record.raw_summary().n_layers)
lora = alloc.frequency_grid(frequency, "lora", n_layers)
timeline = alloc.timeline(lines)
summary = alloc.score_summary(alloc.score_distribution(lines))
print(json.dumps({"n_layers": n_layers, "lora_rows": len(lora), "lines": len(lines), "last_step": lines[-1].step,
                  "modules": len(timeline.enabled.index), "kinds": len(summary),
                  "huge_named": any("100000000" in m or "evil" in m for m in timeline.enabled.index)}))
"""


def test_a_record_claiming_a_huge_model_builds_nothing_of_that_size(make_run):
    """Before: n_layers 10^8 made a 10^8-row grid, and 30,000 lines x 5,632 modules a 170M-cell
    timeline (a MemoryError under the bound). Now a layer past 512 or an unknown kind is dropped,
    n_layers past 512 is dropped from the summary, and the lines are thinned evenly to at most
    500,000 cells, the last line kept."""
    record = make_run("huge", n_reallocations=2, mode="dynamic")
    write_hostile_allocation(record)
    result = run_bounded(ALLOCATION_VIEW, str(record.path))
    assert result.returncode == 0, result.stderr[-2000:]
    view = json.loads(result.stdout)
    # 30,003 lines (2 + the hostile one + 30,000) x 5,632 modules: every 256th line would be 118 x 5,632
    # > 500,000 cells; every 512th is lines 0, 512, ..., 29,696 (59) and the last one
    assert view["lines"] == 60
    assert view["last_step"] == 1000 + 29_999  # the final allocation is always kept
    # kept: line 0 (the synthetic run: 35 modules in layers 0-5), lines 512k (module 512k - 3: layer 509,
    # kind k - 1 mod 11) and the last (module 29,999: layer 303, kind 'o'); n_layers 10^8 is dropped
    assert view["n_layers"] == 510 and view["lora_rows"] == 510 and not view["huge_named"]
    assert view["modules"] == 35 + 11 + 1 and view["kinds"] == 11


def test_a_summary_n_layers_past_any_model_is_named_as_a_problem(make_run):
    from heterolora_core.records.record import RunRecord

    record = make_run("claims", n_reallocations=1, mode="static")
    data = json.loads((record.path / "summary.json").read_text())
    data.update(n_layers=HUGE, num_labels=10**12, label_names=[str(i) for i in range(20_000)])
    (record.path / "summary.json").write_text(json.dumps(data))
    summary = RunRecord(record.path).raw_summary()
    assert summary.n_layers is None and summary.num_labels is None and summary.label_names is None
    assert [p.split(" has ")[0] for p in summary.problems] == [
        "summary.json: n_layers", "summary.json: num_labels", "summary.json: label_names"]


ALLOCATION_PAGE = """
import json, sys
from streamlit.testing.v1 import AppTest

at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
at.switch_page("views/allocation.py").run()
at.selectbox(key="allocation_run").set_value(sys.argv[2]).run()
print(json.dumps({"exceptions": [e.message for e in at.exception], "captions": [c.value for c in at.caption]}))
"""


@pytest.mark.slow
def test_the_allocation_page_draws_a_hostile_record_within_bounds(make_run, home):
    """The issue's case under Streamlit's AppTest: the page that took the server past 7 GB opens
    under a 1.5 GiB bound, says 510 layers (not 10^8) and that it thinned the record."""
    make_run("ordinary", n_reallocations=3)
    write_hostile_allocation(make_run("huge", n_reallocations=2))
    result = run_bounded(ALLOCATION_PAGE, str(REPO / "dashboard" / "app.py"), "huge", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    page = json.loads(result.stdout.strip().splitlines()[-1])
    assert page["exceptions"] == []
    facts = next(c for c in page["captions"] if "layers" in c)
    assert "510 layers · 60 reallocations" in facts  # as the engine test above counts them
    assert any("every 512th of its 30,003 reallocations is drawn" in c for c in page["captions"]), page["captions"]


def test_reallocation_lines_past_any_model_are_dropped_name_by_name():
    from heterolora_core.records.record import ReallocationLine

    line = ReallocationLine.from_dict({
        "step": 4, "scores": {f"layer.{HUGE}.lora.q": 1.0, "layer.2.lora.evil": 1.0, "layer.2.lora.v": 0.5,
                              "x" * 201: 1.0},
        "enabled": [f"layer.{HUGE}.lora.q", "layer.2.lora.v"],
        "ranks": {"layer.2.lora.v": 10**15, "layer.2.lora.q": 8, f"layer.{HUGE}.lora.q": 4}})
    assert line.scores == {"layer.2.lora.v": 0.5} and line.enabled == ["layer.2.lora.v"]
    assert line.ranks == {"layer.2.lora.q": 8}  # 10^15 is past the rank limit (4,096)
    too_many = {f"layer.{i % 512}.lora.{k}": 1.0 for i in range(512) for k in "qkvo"} | {"extra": 1.0}
    assert len(too_many) == 2049 and ReallocationLine.from_dict({"scores": too_many, "enabled": []}) is not None
    wider = {f"x{i}": 1.0 for i in range(512 * 11 + 1)}  # more names than any model's candidates: not a line
    assert ReallocationLine.from_dict({"scores": wider, "enabled": []}) is None
