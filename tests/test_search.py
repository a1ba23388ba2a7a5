"""Selection from hand-computed scores, budgets, and a reallocation loop on a tiny model."""
import pytest
import torch

from heterolora_core import HeteroLoraConfig, attach
from heterolora_core.planning import plan_budget
from heterolora_core.search.budget import Allocation, Budget, resolve
from heterolora_core.search.reallocator import Reallocator
from heterolora_core.search.selection import normalize_scores, select
from heterolora_core.training.run_config import RunConfig
from tiny_models import random_batches, tiny_model

GROUPS = {"a": "lora", "b": "lora", "c": "lora", "d": "lora", "s1": "shortcut", "s2": "shortcut", "s3": "shortcut", "s4": "shortcut"}
# LoRA scores are 100x the shortcut scores: raw combined ranking only ever picks LoRA
SCORES = {"a": 400.0, "b": 300.0, "c": 200.0, "d": 100.0, "s1": 4.0, "s2": 1.0, "s3": 3.0, "s4": 2.0}


def test_combined_raw_reproduces_the_authors_scale_bias():
    alloc = Allocation(ratio=0.5, lora_on=2, shortcut_on=2, max_params=None)
    assert select(SCORES, GROUPS, alloc, "combined", "raw") == ["a", "b", "c", "d"]


def test_combined_normalised_per_kind():
    # per-kind means: LoRA 250, shortcut 2.5 -> a 1.6, b 1.2, c 0.8, d 0.4; s1 1.6, s3 1.2, s4 0.8, s2 0.4
    normed = normalize_scores(SCORES, GROUPS, "kind")
    assert normed["a"] == pytest.approx(1.6) and normed["s3"] == pytest.approx(1.2)
    alloc = Allocation(ratio=0.5, lora_on=2, shortcut_on=2, max_params=None)
    chosen = select(SCORES, GROUPS, alloc, "combined", "kind", seed=0)
    # top 4 of {a 1.6, s1 1.6, b 1.2, s3 1.2, ...}
    assert sorted(chosen) == ["a", "b", "s1", "s3"]


def test_separated_takes_each_quota_from_its_own_group():
    alloc = Allocation(ratio=0.25, lora_on=1, shortcut_on=3, max_params=None)
    assert select(SCORES, GROUPS, alloc, "separated", "raw") == ["a", "s1", "s3", "s4"]


def test_ties_are_broken_by_the_seed():
    flat = {n: 1.0 for n in GROUPS}
    alloc = Allocation(ratio=0.5, lora_on=2, shortcut_on=2, max_params=None)
    draws = {tuple(select(flat, GROUPS, alloc, "combined", "kind", seed=s)) for s in range(20)}
    assert len(draws) > 5  # random control: different sets for different seeds
    assert select(flat, GROUPS, alloc, "combined", seed=7) == select(flat, GROUPS, alloc, "combined", seed=7)
    assert all(len(d) == 4 for d in draws)


def test_parameter_cap_skips_modules_that_do_not_fit():
    costs = {n: (300 if n == "a" else 100) for n in GROUPS}
    alloc = Allocation(ratio=0.5, lora_on=2, shortcut_on=2, max_params=350)
    # a (300) fits; b would make 400 > 350; c, d likewise; s1 fits at 400? no: 300 + 100 = 400 > 350
    assert select(SCORES, GROUPS, alloc, "combined", "raw", costs=costs) == ["a"]


def test_budget_counts_follow_the_method_doc():
    costs = {f"l{i}": 10 for i in range(12)} | {f"s{i}": 10 for i in range(23)}
    groups = {n: ("lora" if n.startswith("l") else "shortcut") for n in costs}
    alloc = resolve(Budget(enable_ratio=0.25), costs, groups, rank=32)
    assert (alloc.lora_on, alloc.shortcut_on) == (3, 6)  # floor(3) + round(5.75)
    # match uniform rank 24 of the 12 LoRA modules at search rank 32: 12*24/32 = 9 modules
    alloc = resolve(Budget(match_uniform_rank=24), costs, groups, rank=32)
    assert alloc.max_params == 12 * 10 * 24 // 32 and alloc.total_on == 9
    with pytest.raises(ValueError, match="enables nothing"):
        resolve(Budget(enable_ratio=0.01), costs, groups, rank=32)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Budget(enable_ratio=1.5)


def test_73728_budget_equality_on_the_embedded_model():
    uniform = plan_budget(RunConfig(model="embedded", lora_targets=["q", "v"], shortcuts=False, rank=8, mode="lora"))
    hetero = plan_budget(RunConfig(model="embedded", lora_targets=["q", "v"], shortcuts=False, rank=32,
                                   enable_ratio=0.25))
    assert uniform.trainable_params == hetero.trainable_params == 73_728
    assert (uniform.n_enabled, hetero.n_enabled) == (12, 3)
    assert uniform.head_params == 384 * 2 + 2
    budget_b = plan_budget(RunConfig(model="embedded", lora_targets=["q", "v"], shortcuts=True, rank=32,
                                     match_uniform_rank=24))
    assert (budget_b.n_candidates, budget_b.n_enabled, budget_b.trainable_params) == (35, 9, 221_184)
    assert budget_b.uniform_equivalent == "uniform LoRA q,v at rank 24 (221,184)"


def test_73728_on_the_real_loaded_embedded_model():
    from heterolora_core.training.models import load_classifier

    model = load_classifier("embedded", num_labels=2)
    adapters = attach(model, HeteroLoraConfig(rank=32, lora_targets=("q", "v")))
    adapters.set_enabled(adapters.names()[:3])
    assert adapters.num_trainable() == 73_728
    assert sum(p.numel() for p in adapters.adapter_parameters()) == 4 * 73_728


@pytest.mark.parametrize("ranking", ["combined", "separated"])
def test_reallocation_loop_records_the_right_counts(ranking):
    model = tiny_model("bert", layers=4)
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=("q", "v"), shortcuts=True, init_seed=0))
    records = []
    reallocator = Reallocator(model, adapters, "grad_norm", Budget(enable_ratio=0.25), ranking=ranking,
                              seed=0, on_record=records.append)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batches = random_batches(12, seed=5)
    reallocator.reallocate(0, batches=batches[:2])  # step 0: extra passes (nothing trained yet)
    for step, batch in enumerate(batches, start=1):
        with reallocator.training_window():  # scores for the next reallocation come from here
            model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 3 == 0:
            assert len(reallocator.collector) == len(adapters.names())
            reallocator.reallocate(step)
    assert [r.step for r in records] == [0, 3, 6, 9, 12]
    for record in records:
        assert set(record.scores) == set(adapters.names())
        lora = [n for n in record.enabled if ".lora." in n]
        shortcut = [n for n in record.enabled if ".shortcut." in n]
        assert len(record.enabled) == 2 + 4  # floor(0.25 * 8) + round(0.25 * 15)
        if ranking == "separated":
            assert (len(lora), len(shortcut)) == (2, 4)
        ranked = sorted(record.scores, key=lambda n: -record.scores[n])
        if ranking == "separated":  # the top-scoring module of each group is always on
            assert next(n for n in ranked if ".lora." in n) in record.enabled
            assert next(n for n in ranked if ".shortcut." in n) in record.enabled
    assert adapters.enabled() == records[-1].enabled
    assert len({tuple(r.enabled) for r in records}) > 1  # the allocation moves during training
