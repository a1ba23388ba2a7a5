"""Shared fixtures: a temporary data home, a synthetic run-record factory, a stand-in budget planner."""
from __future__ import annotations

import math
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

#: The worker runs this instead of the engine's CLI in tests that only exercise the queue.
FAKE_TRAIN_CMD = f"{sys.executable} -m dashboard.synthetic train"


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
    :func:`dashboard.synthetic.write_synthetic_run`); each call is one second newer than the last."""
    from dashboard.synthetic import write_synthetic_run

    clock = {"t": time.time() - 1000}

    def factory(run_id: str, **kwargs):
        clock["t"] += 1
        kwargs.setdefault("created_at", clock["t"])
        return write_synthetic_run(home / "runs" / run_id, **kwargs)

    return factory


@dataclass(frozen=True)
class FakeBudgetPlan:
    n_candidates: int
    n_lora: int
    n_shortcut: int
    n_enabled: int
    trainable_params: int
    head_params: int
    per_module_params: dict = field(default_factory=dict)
    uniform_equivalent: str = ""
    uniform_rank: float = 0.0


def fake_plan_budget(model, lora_targets, shortcuts, rank, enable_ratio=None, match_uniform_rank=None, mode="dynamic", num_labels=2):
    """The engine's ``plan_budget`` contract for the embedded model (6 layers, each module rank*768),
    without loading torch."""
    if model != "embedded":
        raise ValueError(f"model folder {model} does not exist")
    if int(rank) < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank}")
    n_lora = 6 * len(lora_targets)
    n_shortcut = 23 if shortcuts else 0
    if mode == "lora":
        n_enabled = n_lora + n_shortcut
    elif match_uniform_rank:
        n_enabled = min(n_lora + n_shortcut, (n_lora + n_shortcut) * int(match_uniform_rank) // int(rank))
    else:
        if not 0 < float(enable_ratio) <= 1:
            raise ValueError(f"enable ratio must be in (0, 1], got {enable_ratio}")
        n_enabled = math.floor(enable_ratio * n_lora) + round(enable_ratio * n_shortcut)
    if n_enabled == 0:
        raise ValueError(f"the budget enables nothing: enable ratio {enable_ratio} at rank {rank}")
    trainable = n_enabled * rank * 768
    lora_unit = n_lora * 768
    return FakeBudgetPlan(n_lora + n_shortcut, n_lora, n_shortcut, n_enabled, trainable, 770, {},
                          f"uniform LoRA {','.join(lora_targets)} at rank {trainable / lora_unit:g} ({trainable:,})",
                          trainable / lora_unit)


@pytest.fixture
def fake_budget(monkeypatch):
    """Install :func:`fake_plan_budget` as ``heterolora_core.budget`` (the real one imports torch)."""
    module = types.ModuleType("heterolora_core.budget")
    module.plan_budget = fake_plan_budget
    module.BudgetPlan = FakeBudgetPlan
    monkeypatch.setitem(sys.modules, "heterolora_core.budget", module)
    return fake_plan_budget
