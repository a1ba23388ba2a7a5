"""The README's headline tables are what the Results page shows on the committed records: its default
view (devices kept apart, short runs left out, plain LoRA as the reference, only what pairs with it)
and the view with the CPU's uniform q,v rank 8 as the reference. Every cell of every README row is
compared with the page's own table, under Streamlit's AppTest."""
import re
import shutil

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from heterolora_core.analysis import results
from heterolora_core.records.home import PROJECT_ROOT
from heterolora_core.records.store import RunStore

APP = str(PROJECT_ROOT / "dashboard" / "app.py")
README = PROJECT_ROOT / "README.md"


def readme_table(name: str) -> list[dict[str, str]]:
    """The rows of the README table between ``<!-- name: ... -->`` and ``<!-- /name -->``."""
    text = README.read_text(encoding="utf-8")
    block = re.search(rf"<!-- {name}:.*?-->\n(.*?)<!-- /{name} -->", text, re.S)
    assert block, f"README has no {name} table"
    lines = [line for line in block.group(1).splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.fixture
def committed(tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(PROJECT_ROOT / "data" / "results", home / "results")
    monkeypatch.setenv("HETEROLORA_HOME", str(home))
    monkeypatch.setenv("HETEROLORA_DASHBOARD_WORKER", "0")
    st.cache_data.clear()
    st.cache_resource.clear()
    return home


def page_rows(at: AppTest) -> dict[str, dict]:
    # the results table (the page's study section, when the records hold a study, draws its own first)
    table = next(d.value for d in at.dataframe if {"configuration", "delta"} <= set(d.value.columns))
    return {row["configuration"]: row for row in table.to_dict("records")}


def assert_rows_match(readme: list[dict[str, str]], shown: dict[str, dict]) -> None:
    assert readme
    for row in readme:
        assert row["configuration"] in shown, f"{row['configuration']!r} is not on the page"
        page = shown[row["configuration"]]
        assert row["final score (mean ± std)"] == page["final"]
        assert int(row["seeds"]) == page["n_seeds"]
        assert row["Δ vs reference [95%]"] == page["delta"]
        assert row["verdict"] == page["verdict"]
        assert int(row["trainable params"].replace(",", "")) == round(page["trainable_params"])


def uniform_qv_r8(home, device: str) -> str:
    """The key of plain LoRA, uniform q,v rank 8, lr 5e-4 on MRPC measured on ``device``."""
    groups = results.group_by_config(RunStore(home).list_runs())
    return next(g.key for g in groups if g.evidence.device == device and g.config.mode == "lora"
                and g.config.lora_targets == ["q", "v"] and not g.config.shortcuts and g.config.rank == 8
                and g.config.lr == 5e-4 and g.config.task == "mrpc")


def test_the_readme_headline_is_the_results_page_against_the_gpu_reference(committed):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/results.py").run()
    at.selectbox(key="results_reference").set_value(uniform_qv_r8(committed, "GPU")).run()
    assert not at.exception, [e.message for e in at.exception]
    shown = page_rows(at)
    assert_rows_match(readme_table("headline"), shown)
    # the view holds one kind of device and no short run: every row pairs with the reference (the
    # results table's verdicts, not those of the study section drawn above it)
    assert {row["verdict"] for row in shown.values()} <= {"reference", "better", "worse", "noise", "n/a (1 seed)"}
    assert not any(w for w in at.warning)  # nothing is pooled across devices by default


def test_the_readme_rank_table_is_the_results_page_against_the_cpu_reference(committed):
    cpu_qv_r8 = uniform_qv_r8(committed, "CPU")
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/results.py").run()
    at.selectbox(key="results_reference").set_value(cpu_qv_r8).run()
    assert not at.exception, [e.message for e in at.exception]
    assert_rows_match(readme_table("ranks"), page_rows(at))
