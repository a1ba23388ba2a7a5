"""heterolora_core.analysis.labels (names that say what differs) and .evidence (kinds of device,
short runs), and the Results grouping that keeps kinds of evidence apart: hand-made configs and
records, hand-computed numbers."""
from pathlib import Path

import pytest

from heterolora_core.analysis import results as R
from heterolora_core.analysis.evidence import Evidence, device_kind, evidence_of, is_short_run, torch_minor
from heterolora_core.analysis.labels import (MAX_LABEL, comparison_subject, describe_config, distinguishing_fields,
                                             short_labels)
from heterolora_core.records.record import RunSummary
from heterolora_core.records.store import StoredRun
from heterolora_core.training.run_config import RunConfig

BUDGET_A = dict(task="mrpc", lr=5e-4, shortcuts=False)
ALL6 = ["q", "k", "v", "o", "ffn_in", "ffn_out"]


def test_short_labels_name_only_the_fields_that_differ():
    configs = {
        "static": RunConfig(mode="rank_static", lora_targets=ALL6, rank=32, budget_params=73728, **BUDGET_A),
        "random": RunConfig(mode="rank_random", lora_targets=ALL6, rank=32, budget_params=73728, **BUDGET_A),
        "uniform-all": RunConfig(mode="lora", lora_targets=ALL6, rank=2, **BUDGET_A),
        "uniform-qv": RunConfig(mode="lora", rank=8, **BUDGET_A),
    }
    labels = short_labels(configs, include_seed=False)
    assert {k: v.short for k, v in labels.items()} == {
        "static": "rank_static · all targets · r32", "random": "rank_random · all targets · r32",
        "uniform-all": "lora · all targets · r2", "uniform-qv": "lora · q,v · r8"}
    # the rank rule every rank run shares tells nothing the method does not: it is in the full name only
    assert "rank rule spectrum" in labels["static"].full and "rank rule" not in labels["static"].short
    assert labels["uniform-qv"].full == "mrpc · lora · q,v · r8 · lr 5e-4"
    assert comparison_subject(configs.values()) == "methods"


def test_uniform_lora_with_and_without_shortcuts_never_read_alike():
    labels = short_labels({"all35": RunConfig(mode="lora", rank=8), "qv": RunConfig(mode="lora", rank=8, shortcuts=False)})
    assert (labels["all35"].short, labels["qv"].short) == ("q,v + shortcuts", "q,v")
    assert "q,v + shortcuts" in describe_config(RunConfig(mode="lora"))


def test_labels_are_unique_short_and_keep_the_full_description():
    seeds = {f"run{s}": RunConfig(mode="dynamic", proxy=p, seed=s) for s in range(2) for p in ("snip",)}
    same = short_labels({**seeds, "copy": RunConfig(mode="dynamic", proxy="snip", seed=0)},
                        tiebreak={"run0": "abc123", "run1": "def456", "copy": "fff000"})
    assert same["run0"].short == "seed 0 · abc123" and same["copy"].short == "seed 0 · fff000"
    assert same["run1"].short == "seed 1"
    # a long combination is cut at MAX_LABEL, with the search space compacted before anything is cut
    long_ = {"k0": RunConfig(task="mrpc", mode="dynamic", proxy="grad_norm", ranking="separated", lr=1e-3, max_steps=40),
             "k1": RunConfig(task="rte", mode="lora", shortcuts=False),
             "k2": RunConfig(task="mrpc", mode="dynamic", proxy="snip")}
    cut = short_labels(long_, include_seed=False)
    assert all(len(v.short) <= MAX_LABEL for v in cut.values())
    assert cut["k0"].short == "mrpc · dynamic · q,v+sc · grad_norm · separated · lr 1e-3…"
    assert cut["k1"].short == "rte · lora · q,v · lr 5e-4"  # no step cap: the default, no token
    assert cut["k0"].full == "mrpc · dynamic · q,v + shortcuts · grad_norm · separated · r8 · 25% · lr 1e-3 · 40 steps"
    # extras (the device) appear where they differ; marks always
    ev = short_labels({"a": RunConfig(), "b": RunConfig()}, extras={"a": ("GPU",), "b": ("CPU",)},
                      include_seed=False, marks={"b": ("short run",)})
    assert (ev["a"].short, ev["b"].short) == ("mrpc · dynamic · q,v + shortcuts · r8 · GPU",
                                              "mrpc · dynamic · q,v + shortcuts · r8 · CPU · short run")


def test_distinguishing_fields_skip_defaults_of_minor_fields_and_count_methods_that_read_them():
    a, b = RunConfig(mode="dynamic", score_norm="raw"), RunConfig(mode="dynamic")
    assert distinguishing_fields([a, b]) == ["score_norm"]
    assert short_labels({"a": a, "b": b})["b"].short == "mrpc · dynamic · q,v + shortcuts · r8"  # nothing differs but the default
    # a proxy differs only between searching methods: uniform LoRA's ignored proxy does not count
    assert distinguishing_fields([RunConfig(mode="lora", proxy="snip"), RunConfig(mode="dynamic")]) == ["mode"]


def test_evidence_kinds_and_short_runs():
    assert [device_kind(d) for d in ("cuda", "cuda:1", "cpu", None)] == ["GPU", "GPU", "CPU", "device not recorded"]
    assert device_kind(None, "cuda:0") == "GPU"
    assert torch_minor({"torch": "2.13.0+cpu"}) == "2.13" and torch_minor({"torch": "nightly"}) is None
    summary = RunSummary.from_dict({"status": "done", "device": "cuda", "train_rows": 3668})
    assert evidence_of(RunConfig(), summary, {"torch": "2.11.0"}) == Evidence("GPU", "2.11")
    assert is_short_run(RunConfig(max_steps=32, train_limit=256, dev_limit=200), summary)  # part of dev
    assert is_short_run(RunConfig(max_steps=32, batch_size=16), summary)  # 512 of 3,668 rows
    assert not is_short_run(RunConfig(max_steps=230, batch_size=16), summary)  # 3,680 rows: a full pass
    assert not is_short_run(RunConfig(train_limit=4000), summary)  # SST-2's first 4,000 rows, 3 epochs
    assert is_short_run(RunConfig(max_steps=10), RunSummary.from_dict({"status": "done"}))  # rows unknown


def run(final, seed, device, short=False, **config):
    fields = {"task": "mrpc", "mode": "lora", "rank": 8, "shortcuts": False, "seed": seed, **config}
    if short:
        fields["dev_limit"] = 200
    return StoredRun(run_id=f"{device}-{seed}-{final}-{sorted(config.items())}", path=Path("/x"), created_at=0.0,
                     sweep_id=None, queue_seq=None, config=RunConfig.from_dict(fields),
                     summary=RunSummary.from_dict({"status": "done", "final_score": final, "best_score": final,
                                                   "metric": "accuracy", "device": device}),
                     versions={"torch": "2.13.0"})


def test_results_keep_devices_apart_and_pair_only_within_one():
    gpu = [run(f, s, "cuda") for s, f in enumerate([0.80, 0.81, 0.79])]
    cpu = [run(f, s, "cpu") for s, f in enumerate([0.78, 0.77, 0.82])]
    alloc_cpu = [run(f, s, "cpu", mode="rank_static", rank=32) for s, f in enumerate([0.81, 0.80, 0.84])]
    short = [run(0.685, 0, "cpu", short=True, mode="dynamic")]
    rows = gpu + cpu + alloc_cpu + short
    split = R.group_by_config(rows)
    assert len(split) == 3  # uniform on GPU, uniform on CPU, the allocation on CPU; the short run left out
    assert R.short_runs_left_out(rows) == 1
    reference = next(g.key for g in split if g.evidence.device == "CPU" and g.config.mode == "lora")
    table = R.results_table(split, reference).set_index("key")
    alloc_key = next(g.key for g in split if g.config.mode == "rank_static")
    assert table.loc[alloc_key, "delta_mean"] == pytest.approx(0.08 / 3)  # (+0.03 +0.03 +0.02) / 3
    gpu_key = next(g.key for g in split if g.evidence.device == "GPU")
    assert table.loc[gpu_key, "verdict"] == R.OTHER_EVIDENCE and table["delta_mean"].notna().sum() == 1
    assert len(R.comparable(table.reset_index())) == 2
    # pooled on request: one uniform group of two kinds, each seed the mean of its GPU and CPU runs
    pooled = R.group_by_config(rows, split_evidence=False)
    uniform = next(g for g in pooled if g.config.mode == "lora")
    assert uniform.mixed and uniform.final == pytest.approx({0: 0.79, 1: 0.79, 2: 0.805})
    assert len(R.group_by_config(rows, include_short=True)) == 4
    # the default reference is plain LoRA on the kind of device with the most runs
    assert R.default_reference(split) == reference
