"""Hostile records and data files, round 3 (issue 21, items 2, 6, 8 and 9): what a record claims is
bounded before anything is allocated, a data file cannot exhaust memory or block, and text from a
record is shown as text (never markdown, HTML or terminal control codes).

Where the harm is memory, the check runs in a subprocess under ``RLIMIT_AS`` (1.5 GiB of address
space): a regression fails with a MemoryError there instead of swapping the machine.
"""
from __future__ import annotations

import json
import os
import re
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
    assert any("one reallocation in 512 of its 30,003 is drawn" in c for c in page["captions"]), page["captions"]


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


# -- items 6 and 9: a data file cannot exhaust memory, block, or end in a traceback ---------------

def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def data_files(tmp_path):
    """A good dev file and a factory of train files."""
    dev = _jsonl(tmp_path / "dev.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    return tmp_path, dev


@pytest.mark.parametrize("case", ["label", "label-csv", "digits", "names", "long-text", "long-line", "nested",
                                  "directory", "fifo"])
def test_a_data_file_is_refused_with_one_line_naming_it(data_files, case):
    from heterolora_core.training.data import DataError, check_task_source

    tmp, dev = data_files
    good = [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    train = tmp / "train.jsonl"
    if case == "label":
        _jsonl(train, good + [{"text": "c", "label": 3_000_000}])
        expected = f"label 3000000 at {train}:3; labels must be 0..N-1 with N ≤ 10,000"
    elif case == "label-csv":
        train = tmp / "train.csv"
        train.write_text("text,label\na,0\nb,1\nc,1000000000000\n")
        dev = tmp / "dev.csv"
        dev.write_text("text,label\na,0\nb,1\n")
        expected = f"label 1000000000000 at {train}:4; labels must be 0..N-1 with N ≤ 10,000"
    elif case == "digits":  # past Python's 4,300-digit int limit: was a bare ValueError quoting it all
        train = tmp / "train.csv"
        train.write_text("text,label\na,0\nb,1\nc," + "1" * 5000 + "\n")
        dev = tmp / "dev.csv"
        dev.write_text("text,label\na,0\nb,1\n")
        expected = f"{train}:4: label '{'1' * 56}... is not finite"
    elif case == "names":
        _jsonl(train, [{"text": "t", "label": f"class {i}"} for i in range(10_001)])
        dev = _jsonl(tmp / "dev.jsonl", [{"text": "t", "label": "class 0"}])
        expected = "the label column has 10,001 class names; at most 10,000"
    elif case == "long-text":
        _jsonl(train, [good[0], {"text": "x" * 1_000_001, "label": 1}])
        expected = f"{train}:2: 'text' has 1,000,001 characters; at most 1,000,000"
    elif case == "long-line":  # the 100 MB line, scaled down: past the line bound, never parsed whole
        _jsonl(train, [good[0], good[1], '{"text": "' + "y" * 16_000_001 + '", "label": 0}'])
        expected = f"{train}:3: line longer than 16,000,000 characters; a text may have at most 1,000,000"
    elif case == "nested":
        _jsonl(train, [good[0], '{"text": "n", "label": ' + "[" * 100_000 + "]" * 100_000 + "}"])
        expected = f"{train}:2: JSON nested too deeply; expected one flat object per line"
    elif case == "directory":
        train.mkdir()
        expected = f"data file {train} is a directory"
    else:
        os.mkfifo(train)  # never opened: opening a FIFO for reading would block until a writer comes
        expected = f"data file {train} is not a regular file"
    with pytest.raises(DataError) as caught:
        check_task_source("custom", train_file=train, dev_file=dev)
    assert str(caught.value) == expected


def bounded_cli(*args: str, home: Path, limit: int = 4 * 2**30, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m heterolora_core ARGS`` under an address-space bound (torch alone maps ~2.2 GiB)."""
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
            "from heterolora_core.cli import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=cli_env(home), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["label", "fifo", "nested"])
def test_train_refuses_a_hostile_data_file_in_one_line(data_files, case):
    """Before: the 3,000,000-class head (4.6 GB) ran out of memory, a FIFO "did not exist", deep
    nesting was a RecursionError with exit 1. Now each is one line and exit 2, nothing written."""
    tmp, dev = data_files
    train = tmp / "train.jsonl"
    if case == "label":
        _jsonl(train, [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 3_000_000}])
    elif case == "fifo":
        os.mkfifo(train)
    else:
        _jsonl(train, [{"text": "a", "label": 0}, '{"text": "n", "label": ' + "[" * 100_000 + "]" * 100_000 + "}"])
    result = bounded_cli("train", "--train-file", str(train), "--dev-file", str(dev), "--out", str(tmp / "out"),
                         "--max-steps", "1", "--no-progress", home=tmp / "home")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert {"label": "labels must be 0..N-1 with N ≤ 10,000", "fifo": "is not a regular file",
            "nested": "JSON nested too deeply"}[case] in result.stderr
    assert not (tmp / "out").exists()


# -- items 6 and 9: predict trusts no size from a record -------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished uniform-LoRA run on a tiny random BERT (2 layers, hidden 32), written by hand:
    config, summary (2 labels) and the adapters and head as the engine saves them."""
    from cli_helpers import save_tiny_bert
    from heterolora_core.adapters.checkpoint import adapter_tensors, save_checkpoint
    from heterolora_core.adapters.families import attach
    from heterolora_core.methods.base import search_space
    from heterolora_core.records.record import RunRecord
    from heterolora_core.training.models import load_classifier
    from heterolora_core.training.run_config import RunConfig

    import transformers as tf

    root = tmp_path_factory.mktemp("predict")
    model_dir = save_tiny_bert(root / "tiny")
    # a base model, as a pretrained encoder is: no classifier saved, the run's head is its own
    tf.BertModel(tf.BertConfig.from_pretrained(model_dir)).save_pretrained(model_dir)
    config = RunConfig(model=str(model_dir), mode="lora", rank=4, max_length=32)
    record = RunRecord.create(root / "run", config.to_dict(), status="done", num_labels=2)
    model = load_classifier(str(model_dir), 2)
    adapters = attach(model, search_space(config))
    save_checkpoint(record.path / "adapters", model, adapter_tensors(adapters), enabled=adapters.names())
    return record.path


def _copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


@pytest.mark.slow
def test_predict_trusts_no_size_from_a_record(finished_run, tmp_path):
    """A record's rank of 200,000, num_labels of 10^9 and a num_labels that does not match the
    saved head: each one line and exit 2 before anything is built from it (under a 4 GiB bound);
    the untouched run still predicts."""
    rank = _copy_run(finished_run, tmp_path / "rank")
    config = json.loads((rank / "config.json").read_text())
    (rank / "config.json").write_text(json.dumps({**config, "rank": 200_000}))
    labels = _copy_run(finished_run, tmp_path / "labels")
    summary = json.loads((labels / "summary.json").read_text())
    (labels / "summary.json").write_text(json.dumps({**summary, "num_labels": 10**9}))
    head = _copy_run(finished_run, tmp_path / "head")
    (head / "summary.json").write_text(json.dumps({**summary, "num_labels": 3}))
    expected = {
        rank: "error: run rank cannot be loaded: config.json: rank must be at most 4,096 (got 200,000)",
        labels: "error: run labels cannot be loaded: summary.json: num_labels has an unusable value 1000000000",
        head: "error: the run's saved head does not fit its model: head.weight has shape (2, 32), the "
              "model's is (3, 32) (num_labels in summary.json changed?)",
    }
    for folder, line in expected.items():
        result = bounded_cli("predict", "--run", str(folder), "--text", "a cat", home=tmp_path / "home")
        assert (result.returncode, result.stderr) == (2, line + "\n"), result.stderr[-2000:]
    result = bounded_cli("predict", "--run", str(finished_run), "--text", "a cat", home=tmp_path / "home")
    assert result.returncode == 0 and len(json.loads(result.stdout)["probabilities"]) == 2, result.stderr[-2000:]


# -- item 8: text from records is shown as text everywhere ------------------------------------------

PIXEL = "http://127.0.0.1:{port}/{what}.png"


def hostile_text(what: str, port: int = 9) -> str:
    """A Markdown image, an HTML link and Streamlit's colour syntax pointing at ``127.0.0.1:port``."""
    url = PIXEL.format(port=port, what=what)
    return f"![{what}]({url}) <a href='{url}'>{what}</a> <img src='{url}'> :red[{what}] ${what}$"


def write_hostile_runs(make_run, port: int = 9) -> dict[str, str]:
    """A failed run whose folder name, task, model and error are hostile, and a finished one with a
    hostile task (its label reaches legends, titles and hovers); returns their ids."""
    failed_id, done_id = "![folder](folder.png) <b>bold", "hostile-done"  # a folder name holds no "/"
    for run_id, status in ((done_id, "done"), (failed_id, "failed")):  # the failed one newest: pages open on it
        record = make_run(run_id, n_reallocations=3, status=status, best_score=0.8, final_score=0.8)
        config = json.loads((record.path / "config.json").read_text())
        config.update(task=hostile_text("task", port), model=hostile_text("model", port))
        (record.path / "config.json").write_text(json.dumps(config))
        if status == "failed":
            record.update_summary(error=hostile_text("error", port))
    return {"failed": failed_id, "done": done_id}


def _nodes(node):
    yield node
    children = getattr(node, "children", None)
    for child in (children.values() if isinstance(children, dict) else []):
        yield from _nodes(child)


def rendered_texts(at) -> tuple[list[str], list[str]]:
    """(every Markdown text the page renders (bodies, labels, help), rendered to HTML as CommonMark
    does, every Plotly figure's JSON)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark")
    html, figures = [], []
    for node in _nodes(at._tree):
        proto = getattr(node, "proto", None)
        if proto is None or not hasattr(proto, "DESCRIPTOR"):
            continue
        fields = proto.DESCRIPTOR.fields_by_name
        if "spec" in fields and getattr(node, "type", "") == "plotly_chart":
            figures.append(proto.spec)
        # bodies of the elements that render Markdown (st.json and st.code have bodies shown as text)
        markdown_fields = ("body", "label", "help") if proto.DESCRIPTOR.name in ("Markdown", "Alert", "Toast") else (
            "label", "help")
        for name in markdown_fields:
            if name in fields and isinstance(getattr(proto, name), str) and getattr(proto, name):
                html.append(md.render(getattr(proto, name)))
    return html, figures


def assert_shown_as_text(at) -> None:
    html, figures = rendered_texts(at)
    assert html
    for out in html:
        assert "<img" not in out and "<a " not in out, out
        # GitHub-flavoured Markdown (Streamlit's) also links bare URLs, escaped or not
        assert not re.search(r"(?i)https?://|www\.|@[a-z0-9]", out), out
    for spec in figures:
        assert "<a href" not in spec and "<img" not in spec and "<b>bold" not in spec, spec[:2000]


@pytest.mark.slow
def test_record_text_renders_as_text_on_every_page(make_run, home, monkeypatch):
    """Under AppTest: every Markdown body, label and help of the Runs, Allocation, Compare and
    Results pages with hostile records selected renders (as CommonMark) with no image and no link,
    and no figure carries an HTML tag from a record; the record's text is still shown, literally."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("HETEROLORA_DASHBOARD_WORKER", "0")
    st.cache_data.clear()
    st.cache_resource.clear()
    ids = write_hostile_runs(make_run)
    app = str(REPO / "dashboard" / "app.py")
    pages = [("runs", "selected_run", ids["failed"]), ("allocation", "allocation_run", ids["failed"]),
             ("compare", "compare_runs", [ids["failed"], ids["done"]]), ("results", None, None)]
    shown, figures = [], 0
    for page, key, value in pages:
        at = AppTest.from_file(app, default_timeout=120).run()
        at.switch_page(f"views/{page}.py").run()
        if key == "compare_runs":
            at.multiselect(key=key).set_value(value).run()
        elif key:
            at.selectbox(key=key).set_value(value).run()
        assert not at.exception, (page, [e.message for e in at.exception])
        assert_shown_as_text(at)
        shown += rendered_texts(at)[0]
        figures += len(rendered_texts(at)[1])
    assert figures >= 6  # curves, heatmaps, timelines, matrices, the forest plot: every one was checked
    # the text itself is on the page, as written (HTML-escaped by the renderer)
    for field in ("task", "model", "error"):
        literal = f"![{field}](http://127.0.0.1:9/{field}.png) &lt;a href='http://127.0.0.1:9/{field}.png'&gt;"
        assert any(literal in out.replace("\u2060", "") for out in shown), field  # word joiners aside


class PixelServer:
    """An HTTP server on 127.0.0.1 that answers every GET with a 1x1 GIF and remembers its paths:
    a request here is a record's URL the browser fetched."""

    GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")

    def __enter__(self) -> "PixelServer":
        import http.server
        import threading

        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the standard library's name)
                requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                self.end_headers()
                self.wfile.write(PixelServer.GIF)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


JS_LINKS_AND_IMAGES = """(port) => Array.from(document.querySelectorAll('img, a, image')).filter(e => {
  const u = e.getAttribute('src') || e.getAttribute('href') || e.getAttribute('xlink:href') || '';
  return u.includes('127.0.0.1:' + port) || u.includes('folder.png');
}).map(e => e.outerHTML.slice(0, 200) + ' IN ' + (e.closest('[data-testid]')?.outerHTML || '').slice(0, 500))"""


@pytest.mark.slow
def test_a_hostile_record_fetches_nothing_in_a_real_browser(make_run, home):
    """Debian's Chromium on the real app: the Runs, Allocation and Compare pages open on records
    whose folder name, task, model and error are Markdown images and HTML links to a local server.
    Before, the browser fetched them (a tracking pixel) and Plotly drew the links; now no request
    reaches the server, no image or link with those URLs is in the page, and the text is shown."""
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    from heterolora_testing.server import JS_PLOTS_DRAWN, StreamlitServer, chromium_path, launch_chromium

    if chromium_path() is None:
        pytest.skip("Debian's Chromium is not installed")
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HETEROLORA_DASHBOARD_WORKER": "0"}
    with PixelServer() as pixels:
        write_hostile_runs(make_run, port=pixels.port)
        with StreamlitServer(home, env=offline) as server, sync_playwright() as pw:
            browser = launch_chromium(pw)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(90_000)
                for name, plots in (("runs", 2), ("allocation", 3), ("compare", 3)):  # compare: one configuration
                    page.goto(f"{server.url}/{name}")
                    page.wait_for_selector(f'h1:has-text("{name.capitalize()}")')
                    page.wait_for_function(JS_PLOTS_DRAWN, arg=plots)
                    page.wait_for_timeout(500)  # an image would be requested by now
                    assert pixels.requests == [], (name, pixels.requests)
                    assert page.evaluate(JS_LINKS_AND_IMAGES, pixels.port) == [], name
                # the Allocation page's caption shows the record's task as it was written
                page.goto(f"{server.url}/allocation")
                page.wait_for_selector('h1:has-text("Allocation")')
                page.wait_for_function("(text) => document.body.innerText.replace(/\\u2060/g, '').includes(text)",
                                       arg=f"task ![task](http://127.0.0.1:{pixels.port}/task.png) <a href=")
                assert pixels.requests == []
            finally:
                browser.close()


def test_the_three_text_helpers_by_hand():
    from markdown_it import MarkdownIt

    from heterolora_core.analysis.text import markdown_text, plotly_text, terminal_text

    text = hostile_text("x") + "\nnext line \\ `code` *em* www.example.org mail@example.org"
    rendered = MarkdownIt("commonmark").render(markdown_text(text))
    assert rendered.replace("\u2060", "") == "<p>" + (text.replace("\n", " ").replace("&", "&amp;").replace(
        "<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")) + "</p>\n"
    assert not re.search(r"(?i)https?://|www\.|@[a-z0-9]", rendered)  # nothing GFM would link
    assert plotly_text("<a href='h'>a & b</a>\nc") == "&lt;a href='h'&gt;a &amp; b&lt;/a&gt; c"
    assert terminal_text("ok\x1b[2J\rFORGED\u202eevil\n") == "ok\\x1b[2J\\rFORGED\\u202eevil\\n"
    assert terminal_text("plain · ünïcode") == "plain · ünïcode"


def test_runs_prints_no_terminal_control_codes(home, make_run):
    """``runs`` used to print a record's escape sequences and carriage returns as they were."""
    record = make_run("evil\x1b]0;title\x07run", status="failed")  # config text fields refuse control codes
    record.update_summary(error="boom\r20990101-000000-mrpc-dynamic done  99.99  (forged)\x1b[31m")
    result = run_cli("runs", "--home", str(home), env=cli_env(home), timeout=120)
    assert result.returncode == 0, result.stderr
    assert not any(c in result.stdout for c in "\x1b\r\x07"), repr(result.stdout)
    assert "evil\\x1b]0;title\\x07run" in result.stdout
    assert "    boom\\r20990101-000000-mrpc-dynamic done  99.99  (forged)\\x1b[31m\n" in result.stdout


# -- item 9: a proxy sweep's seed past the limit on the Launch page ----------------------------------

@pytest.mark.slow
def test_a_proxy_sweep_seed_past_the_limit_is_one_line_on_the_launch_page(home, monkeypatch):
    """Before: seeds of 99999999999999999999 passed the form and the click raised an uncaught
    ValueError. Now the form says why, the button is off, and nothing is queued."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from heterolora_core.records.store import RunStore

    monkeypatch.setenv("HETEROLORA_DASHBOARD_WORKER", "0")
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120).run()
    at.text_input(key="sweep_seeds").set_value("0, 99999999999999999999").run()
    shown = [e.value.replace("\\", "") for e in at.error]  # Markdown-escaped on the page
    assert "seeds must be at most 2,147,483,647 (got 99,999,999,999,999,999,999)" in shown, shown
    assert at.button(key="launch_sweep").disabled and not at.exception
    assert RunStore(home).list_runs() == []


def test_the_worker_log_escapes_a_run_ids_control_codes(home):
    """The worker's log (printed by ``sweep --wait`` and a foreground worker) names run folders."""
    from heterolora_core.records.worker import Worker

    lines: list[str] = []
    Worker(home, slots=1, idle_exit=None, log=lines.append).log("starting evil\x1b[2J\rrun in slot 0")
    assert len(lines) == 1 and "\x1b" not in lines[0] and "\r" not in lines[0]
    assert lines[0].endswith(": starting evil\\x1b[2J\\rrun in slot 0")


def test_a_fifo_in_a_record_hangs_no_reader(home, make_run):
    """A FIFO where a record's summary, metrics or reallocations belong used to block every reader
    (``runs``, the store, the pages) for ever; now it is a damaged record, listed as such."""
    make_run("healthy")
    record = make_run("piped", n_reallocations=2)
    for name in ("summary.json", "metrics.jsonl", "reallocations.jsonl"):
        (record.path / name).unlink()
        os.mkfifo(record.path / name)
    listed = run_cli("runs", "--home", str(home), env=cli_env(home), timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "damaged record: summary.json is unreadable (not a regular file)" in listed.stdout
    code = ("import sys; from heterolora_core.records.record import RunRecord; r = RunRecord(sys.argv[1]); "
            "print(len(r.metrics()), len(r.reallocations()), r.raw_summary().status)")
    result = run_bounded(code, str(record.path), timeout=60)
    assert result.stdout.split() == ["0", "0", "failed"], result.stderr[-2000:]
