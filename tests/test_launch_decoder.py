"""The Launch page offers the decoder objective and the SFT task, checked by the engine's one
check (:func:`heterolora_core.planning.check_run`) as the command line is."""
from __future__ import annotations

import json
import re

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from dashboard.components.forms import LaunchError, check_launch, launch_config, task_names
from heterolora_core.records.home import PROJECT_ROOT
from tiny_decoders import save_tiny_decoder

APP = str(PROJECT_ROOT / "dashboard" / "app.py")
ROWS = [{"prompt": "what color is the sky ?", "completion": " blue"},
        {"messages": [{"role": "user", "content": "say hello"}, {"role": "assistant", "content": "hello world"}]}]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return save_tiny_decoder(tmp_path_factory.mktemp("models") / "tiny-qwen", "qwen2", positions=128)


@pytest.fixture
def files(tmp_path):
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    for path in (train, dev):
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return train, dev


def test_the_form_checks_sft_runs_with_the_engine(decoder, files):
    train, dev = files
    assert task_names()[-1] == "sft"
    fields = dict(model=str(decoder), task="sft", train_file=str(train), dev_file=str(dev), mode="lora",
                  shortcuts=False, lora_targets=["q", "v"], rank=4)
    with pytest.raises(LaunchError, match="add --objective lm"):
        check_launch(launch_config(fields))
    plan = check_launch(launch_config({**fields, "objective": "lm"}))
    assert plan.head_params == 0 and plan.n_lora == 2 * 2  # 2 layers × q, v
    assert plan.trainable_params == 4 * (32 + 32) * 2 + 4 * (32 + 16) * 2  # q: 32 -> 32, v: 32 -> 16 (2 KV heads)


def test_the_launch_page_queues_an_sft_run_and_shows_a_bad_row_inline(home, decoder, files, monkeypatch, tmp_path):
    monkeypatch.setenv("HETEROLORA_DASHBOARD_WORKER", "0")
    st.cache_data.clear()
    train, dev = files
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="model").set_value(str(decoder))
    at.selectbox(key="task").set_value("sft").run()
    assert at.radio(key="objective").value == "lm" and at.radio(key="objective").disabled  # sft's only objective
    at.toggle(key="shortcuts").set_value(False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "say hello"}) + "\n")
    at.text_input(key="train_file").set_value(str(bad))
    at.text_input(key="dev_file").set_value(str(dev)).run()
    line = f"{bad}:2: row has a prompt but no completion"
    # the run's budget, and the sweep section's check of the form (shown as text: Markdown escapes undone)
    errors = [re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", e.value) for e in at.error]
    assert errors[0] == line and all(e.endswith(line) for e in errors), errors
    assert at.button(key="launch").disabled
    at.text_input(key="train_file").set_value(str(train)).run()
    assert not at.error and not at.exception, [e.value for e in at.error]
    at.button(key="launch").click().run()
    (folder,) = sorted((home / "runs").iterdir())
    config = json.loads((folder / "config.json").read_text())
    assert (config["task"], config["objective"], config["train_file"], config["dev_file"]) == (
        "sft", "lm", str(train), str(dev))
