""""Use this allocation" on the Allocation and Runs pages: the download buttons of a finished
run, and the one-line reason where a file cannot be made (an enabled shortcut)."""
from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from cli_helpers import save_tiny_bert
from heterolora_core.records.home import PROJECT_ROOT
from test_portability import fake_finished_run

APP = str(PROJECT_ROOT / "dashboard" / "app.py")
LABELS = ["LoraConfig (JSON)", "axolotl snippet (YAML)", "PEFT adapter (zip)"]


@pytest.fixture(autouse=True)
def app_env(home, monkeypatch):
    monkeypatch.setenv("HETEROLORA_DASHBOARD_WORKER", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st.cache_data.clear()
    st.cache_resource.clear()


def prepared(page: str, select_key: str, run_id: str, toggle_key: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(f"views/{page}.py").run()
    at.selectbox(key=select_key).set_value(run_id).run()
    assert not [b for b in at.get("download_button") if b.proto.label in LABELS]  # nothing until asked
    at.toggle(key=toggle_key).set_value(True).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


@pytest.mark.parametrize("page, select_key, toggle_key", [("allocation", "allocation_run", "allocation_use-prepare"),
                                                          ("runs", "selected_run", "runs_use-prepare")])
def test_use_this_allocation_offers_the_three_files(home, tmp_path, page, select_key, toggle_key):
    model_dir = save_tiny_bert(tmp_path / "bert", layers=2)
    fake_finished_run(home / "runs" / "finished", model_dir, "rank_dynamic", {"layer.0.lora.q": 4, "layer.1.lora.v": 2})
    at = prepared(page, select_key, "finished", toggle_key)
    assert [b.proto.label for b in at.get("download_button") if b.proto.label in LABELS] == LABELS


def test_what_cannot_be_exported_says_why(home, tmp_path):
    model_dir = save_tiny_bert(tmp_path / "bert", layers=2)
    fake_finished_run(home / "runs" / "shortcut", model_dir, "dynamic",
                      {"layer.0.lora.q": 4, "layer.1.shortcut.cross_attn": 4}, shortcuts=True)
    at = prepared("allocation", "allocation_run", "shortcut", "allocation_use-prepare")
    assert not [b for b in at.get("download_button") if b.proto.label in LABELS]
    reasons = [c.value for c in at.caption if "would be lost" in c.value]
    assert len(reasons) == 3 and all("layer.1.shortcut.cross_attn" in r for r in reasons)


def test_a_recommendation_is_drawn_and_offers_its_configuration(home, tmp_path):
    import json

    from heterolora_core.recommend import recommend
    from heterolora_core.training.run_config import RunConfig

    model_dir = save_tiny_bert(tmp_path / "bert", layers=3)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i} is {'good' if i % 2 else 'bad'}", "label": i % 2}) + "\n"
                            for i in range(32)))
    result = recommend(RunConfig(model=str(model_dir), mode="rank_static", train_file=str(rows), dev_file=str(rows),
                                 lora_targets=["q", "v"], match_uniform_rank=2, rank=8, batch_size=8, max_length=16),
                       batches=2, out_dir=home / "runs" / "recommended")
    at = prepared("allocation", "allocation_run", "recommended", "allocation_use-prepare")
    assert any("Rank per layer" in s.value for s in at.subheader)
    heatmaps = json.loads(at.get("plotly_chart")[0].proto.spec)
    lora_ranks = heatmaps["data"][0]["z"]  # layers x (q, v)
    assert sorted(v for row in lora_ranks for v in row) == sorted(result.ranks.values())
    assert [b.proto.label for b in at.get("download_button") if b.proto.label in LABELS] == LABELS[:2]
    assert any("no trained weights" in c.value for c in at.caption)
