"""Shared fixtures: a temporary data home and a synthetic run-record factory."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")
#: The worker runs this instead of the engine's CLI in tests that only exercise the queue.
FAKE_TRAIN_CMD = f"{sys.executable} -m heterolora_testing.synthetic train"


@pytest.fixture(autouse=True, scope="session")
def offline_hub():
    """No test reaches the network: the Hugging Face hub, datasets and evaluate stay offline."""
    saved = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update({k: "1" for k in OFFLINE})
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh data home, exported as ``HETEROLORA_HOME``."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HETEROLORA_HOME", str(path))
    return path


@pytest.fixture
def make_run(home):
    """``make_run(run_id, **kwargs)`` writes a synthetic record under ``<home>/runs/`` (see
    :func:`heterolora_testing.synthetic.write_synthetic_run`); each call is one second newer than the last."""
    from heterolora_testing.synthetic import write_synthetic_run

    clock = {"t": time.time() - 1000}

    def factory(run_id: str, **kwargs):
        clock["t"] += 1
        kwargs.setdefault("created_at", clock["t"])
        return write_synthetic_run(home / "runs" / run_id, **kwargs)

    return factory
