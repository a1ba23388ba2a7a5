"""Dynamic HeteroLoRA under ``torchrun --nproc_per_node 2`` on CPU (gloo): every rank enables the
same set at every reallocation although each rank scores its own batches, modules switched on
after the DDP wrapper was built do train, and the ranks' weights stay identical.

The ranks are observed through ``tests/ddp_probe.py``, which calls ``training.trainer.run_training`` in
each rank and saves what that rank saw."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from cli_helpers import REPO, cli_env, needs_glue, save_tiny_bert
from heterolora_core.records.record import RunRecord
from heterolora_core.search.reallocator import ReallocationSchedule
from heterolora_core.training.run_config import RunConfig

pytestmark = [needs_glue, pytest.mark.slow]

# 32 rows, batch 4 per rank, 2 ranks: 4 steps per epoch, a reallocation after every step (f = 0.25)
BASE = dict(task="mrpc", mode="dynamic", rank=4, train_limit=32, batch_size=4, max_length=32, max_steps=12,
            realloc_every=0.25, score_window=2, dev_limit=16, logging_steps=4, device="cpu", seed=0)
PROXIES = ("grad_norm", "constant")  # grad_norm: each rank's own scores; constant: a new random set each time


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("ddp")
    model = save_tiny_bert(root / "tiny_bert")
    pairs = []
    for proxy in PROXIES:
        config = root / f"{proxy}.json"
        config.write_text(json.dumps(RunConfig(model=str(model), proxy=proxy, **BASE).to_dict()))
        pairs += [str(config), str(root / f"run-{proxy}")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "ddp_probe.py"), str(root / "probe"), *pairs]
    result = subprocess.run(command, cwd=REPO, env=cli_env(root / "home"), capture_output=True, text=True, timeout=480)
    if result.returncode != 0:
        # pytest.fail keeps the whole text (an assert message is cut short): torchrun's own error
        # summary hides the rank's traceback, which is in stderr above it.
        pytest.fail(f"torchrun exited {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}"
                    f"\n--- stderr ---\n{result.stderr[-12000:]}", pytrace=False)
    runs = {}
    for i, proxy in enumerate(PROXIES):
        ranks = [torch.load(root / "probe" / f"run{i}-rank{r}.pt", weights_only=False) for r in (0, 1)]
        runs[proxy] = (ranks, RunRecord(root / f"run-{proxy}"))
    return runs


@pytest.mark.parametrize("proxy", PROXIES)
def test_every_rank_enables_the_same_set(ddp_runs, proxy):
    (rank0, rank1), record = ddp_runs[proxy]
    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    assert rank0["world_size"] == rank1["world_size"] == 2 and rank0["backend"] == "gloo"
    summary = record.summary()
    assert summary.status == "done"
    # 4 steps per epoch: the data is split in two
    steps_per_epoch = math.ceil(summary.train_rows / (BASE["batch_size"] * rank0["world_size"]))
    schedule = ReallocationSchedule(steps_per_epoch, summary.max_steps, BASE["realloc_every"])
    assert schedule.steps() == list(range(1, 12))
    assert summary.planned_reallocations == 1 + len(schedule) == 12
    expected_steps = [0] + schedule.steps()
    for rank in (rank0, rank1):
        assert [h["step"] for h in rank["history"]] == expected_steps
        # every reallocation happened on the DDP-wrapped model
        assert {h["model_type"] for h in rank["history"]} == {"DistributedDataParallel"}
    for h0, h1 in zip(rank0["history"], rank1["history"]):
        assert h0["enabled"] == h1["enabled"], h0["step"]
        assert h0["scores"] == h1["scores"], h0["step"]
    # one writer: the record holds rank 0's reallocations, once each
    assert [r.enabled for r in record.reallocations()] == [h["enabled"] for h in rank0["history"]]


def test_scores_are_averaged_across_ranks(ddp_runs):
    (rank0, rank1), _ = ddp_runs["grad_norm"]
    differed = 0
    for local0, local1, h in zip(rank0["local_scores"], rank1["local_scores"], rank0["history"]):
        differed += local0 != local1  # each rank scored its own share of the batches
        for name, score in h["scores"].items():
            assert score == pytest.approx((local0[name] + local1[name]) / 2, rel=1e-9, abs=1e-12)
    assert differed >= len(rank0["history"]) - 1


@pytest.mark.parametrize("proxy", PROXIES)
def test_ranks_end_with_identical_weights(ddp_runs, proxy):
    import torch

    (rank0, rank1), _ = ddp_runs[proxy]
    assert rank0["adapters"].keys() == rank1["adapters"].keys()
    for name, factors in rank0["adapters"].items():
        for factor in ("A", "B"):
            assert torch.equal(factors[factor], rank1["adapters"][name][factor]), (name, factor)
    for key, value in rank0["head"].items():
        assert torch.equal(value, rank1["head"][key]), key


@pytest.mark.parametrize("proxy", PROXIES)
def test_modules_enabled_under_ddp_train(ddp_runs, proxy):
    """B starts at zero: a module's B is non-zero at the end exactly when it was on for a step."""
    (rank0, rank1), _ = ddp_runs[proxy]
    history = rank0["history"]
    ever_on = set().union(*(h["enabled"] for h in history))
    for rank in (rank0, rank1):
        for name, factors in rank["adapters"].items():
            trained = bool(factors["B"].abs().max() > 0)
            assert trained == (name in ever_on), (rank["rank"], name)
    if proxy == "constant":
        # switched on only after the first selection, i.e. long after DDP wrapped the model
        late = ever_on - set(history[0]["enabled"])
        assert len(late) >= 2, late
