"""Heterogeneous ranks: allocations hand-computed from given spectra and scores, exact budget
counts, masked components that get no gradient and no update, rank changes that keep the
optimizer state, the PEFT round trip, and the rank modes end to end."""
from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import cli_env, needs_glue, run_cli, save_tiny_bert
from heterolora_core import HeteroLoraConfig, attach
from heterolora_core.adapters.checkpoint import export_peft
from heterolora_core.methods.callbacks import MaskedRankGuard
from heterolora_core.planning import plan_budget
from heterolora_core.records.record import RunRecord
from heterolora_core.search.ranks import proportional, shuffled, spent, water_fill
from heterolora_core.training.run_config import RunConfig
from tiny_models import random_batches, tiny_model

GROUPS = {"a": "lora", "b": "lora", "c": "lora", "s": "shortcut"}


def test_water_fill_by_hand():
    """σ² per component: a 16, 4, 1 (energy 21); b 4, 1 (5); c 0 -> LoRA group mean 26/3;
    s 9, 9 (18) -> shortcut group mean 18. Normalised: a 1.846, .462, .115; b .462, .115; s .5, .5;
    every cost 10. Budget 50 = 5 ranks, greedily: a1 (1.846), s1 (.5), s2 (.5), a2 (.462, before
    b1 by order), b1 (.462) -> a 2, b 1, c 0, s 2."""
    spectra = {"a": [4.0, 2.0, 1.0], "b": [2.0, 1.0], "c": [0.0], "s": [3.0, 3.0]}
    costs = {n: 10 for n in spectra}
    assert water_fill(spectra, costs, GROUPS, 50, r_max=3) == {"a": 2, "b": 1, "c": 0, "s": 2}
    # r_min first: 1 each (40), then one more rank: s's next gain (.5) beats a's (.462), b's (.115), c's (0)
    assert water_fill(spectra, costs, GROUPS, 50, r_max=3, r_min=1) == {"a": 1, "b": 1, "c": 1, "s": 2}
    with pytest.raises(ValueError, match="over the budget"):
        water_fill(spectra, costs, GROUPS, 30, r_max=3, r_min=1)


def test_water_fill_respects_costs_and_spends_what_fits():
    # x costs 3 per rank, y costs 5; equal spectra: gain per parameter favours x
    spectra = {"x": [1.0] * 4, "y": [1.0] * 4}
    costs, groups = {"x": 3, "y": 5}, {"x": "lora", "y": "lora"}
    ranks = water_fill(spectra, costs, groups, budget=17, r_max=4)
    assert ranks == {"x": 4, "y": 1} and spent(ranks, costs) == 17  # x fills to r_max, y takes what fits


def test_proportional_by_hand():
    # scores 3 : 1 : 0, equal costs 2, budget 16 = 8 ranks -> 6, 2, 0
    ranks = proportional({"p": 3.0, "q": 1.0, "r": 0.0}, {"p": 2, "q": 2, "r": 2}, budget=16, r_max=8)
    assert ranks == {"p": 6, "q": 2, "r": 0}
    capped = proportional({"p": 3.0, "q": 1.0, "r": 0.0}, {"p": 2, "q": 2, "r": 2}, budget=16, r_max=5)
    assert capped["p"] == 5 and spent(capped, {"p": 2, "q": 2, "r": 2}) <= 16


def test_shuffled_keeps_the_histogram_of_each_cost_class():
    ranks = {"a": 8, "b": 0, "c": 4, "d": 2, "f1": 3, "f2": 1}
    costs = {"a": 768, "b": 768, "c": 768, "d": 768, "f1": 1920, "f2": 1920}
    for seed in range(5):
        out = shuffled(ranks, costs, seed)
        assert sorted(out[n] for n in "abcd") == [0, 2, 4, 8] and sorted((out["f1"], out["f2"])) == [1, 3]
        assert spent(out, costs) == spent(ranks, costs)
    assert any(shuffled(ranks, costs, s) != ranks for s in range(5))


@pytest.mark.parametrize("targets, budget", [(["q", "v"], 73_728), (["q", "v"], 221_184),
                                             (["q", "k", "v", "o", "ffn_in", "ffn_out"], 73_728),
                                             (["q", "k", "v", "o", "ffn_in", "ffn_out"], 221_184)])
def test_the_budget_is_exact_on_the_embedded_model(targets, budget):
    plan = plan_budget(RunConfig(mode="rank_static", rank=32, lora_targets=targets, shortcuts=False,
                                 budget_params=budget))
    assert plan.trainable_params == budget  # 768 and 1920 per rank: every budget here is reachable
    assert "uniform LoRA" in plan.uniform_equivalent


def _one_module_model(rank: int = 8):
    model = tiny_model("bert", layers=1, hidden=32)
    adapters = attach(model, HeteroLoraConfig(rank=rank, lora_targets=("v",), shortcuts=False, init_seed=0))
    module = adapters.module("layer.0.lora.v")
    with torch.no_grad():
        torch.nn.init.normal_(module.lora_B, std=0.1)
    return model, adapters, module


def _step(model, optimizer, guard, batch):
    model(**batch).loss.backward()
    guard.on_pre_optimizer_step(None, None, None, optimizer=optimizer)
    optimizer.step()
    guard.on_optimizer_step(None, None, None, optimizer=optimizer)
    optimizer.zero_grad(set_to_none=True)


def test_a_masked_component_gets_no_gradient_and_no_update():
    model, adapters, module = _one_module_model()
    module.set_rank(3)
    assert module.num_params == 3 * (32 + 32) and adapters.num_trainable() == 3 * 64
    batch = random_batches(1)[0]
    model(**batch).loss.backward()
    assert module.lora_A.grad[3:].abs().sum() == 0 and module.lora_B.grad[:, 3:].abs().sum() == 0
    assert module.lora_A.grad[:3].abs().sum() > 0
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.AdamW([module.lora_A, module.lora_B], lr=0.1, weight_decay=0.5)
    guard = MaskedRankGuard(adapters)
    frozen_A, frozen_B = module.lora_A[3:].detach().clone(), module.lora_B[:, 3:].detach().clone()
    active_A = module.lora_A[:3].detach().clone()
    for _ in range(3):
        _step(model, optimizer, guard, batch)
    assert torch.equal(module.lora_A[3:], frozen_A) and torch.equal(module.lora_B[:, 3:], frozen_B)
    assert not torch.equal(module.lora_A[:3], active_A)  # the active part trains
    state = optimizer.state[module.lora_A]
    assert state["exp_avg"][3:].abs().sum() == 0 and state["exp_avg_sq"][3:].abs().sum() == 0


def test_a_rank_change_keeps_the_optimizer_state():
    model, adapters, module = _one_module_model()
    batch = random_batches(1)[0]
    optimizer = torch.optim.AdamW([module.lora_A, module.lora_B], lr=0.05)
    guard = MaskedRankGuard(adapters)
    for _ in range(2):  # full rank 8
        _step(model, optimizer, guard, batch)
    state = optimizer.state[module.lora_A]
    before = (module.lora_A[4:].detach().clone(), state["exp_avg"][4:].clone(), state["exp_avg_sq"][4:].clone())
    module.set_rank(4)
    for _ in range(3):  # components 4..7 masked: values and moments stay
        _step(model, optimizer, guard, batch)
    assert torch.equal(module.lora_A[4:], before[0])
    assert torch.equal(state["exp_avg"][4:], before[1]) and torch.equal(state["exp_avg_sq"][4:], before[2])
    module.set_rank(8)  # they resume from where they were
    _step(model, optimizer, guard, batch)
    assert not torch.equal(module.lora_A[4:], before[0])
    module.set_rank(0)
    assert not module.enabled and adapters.num_trainable() == 0


def test_a_heterogeneous_rank_selection_exports_to_stock_peft(tmp_path):
    from peft import PeftModel

    model = tiny_model("bert", layers=2, hidden=32, seed=3)
    adapters = attach(model, HeteroLoraConfig(rank=8, lora_targets=("q", "v"), shortcuts=False, init_seed=0))
    torch.manual_seed(5)
    for m in adapters.modules_in_order():
        torch.nn.init.normal_(m.lora_B, std=0.2)
    adapters.set_ranks({"layer.0.lora.q": 2, "layer.0.lora.v": 8, "layer.1.lora.q": 0, "layer.1.lora.v": 5})
    batch = {k: v for k, v in random_batches(1)[0].items() if k != "labels"}
    with torch.no_grad():
        ours = model(**batch).logits
    folder = export_peft(model, adapters, tmp_path / "adapter")
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert sorted(saved["rank_pattern"].values()) == [2, 5, 8]
    fresh = tiny_model("bert", layers=2, hidden=32, seed=3)
    loaded = PeftModel.from_pretrained(fresh, str(folder)).eval()
    with torch.no_grad():
        theirs = loaded(**batch).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_ranks"))


@needs_glue
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rank_static", "rank_dynamic", "rank_random", "eva"])
def test_the_rank_modes_end_to_end(tiny_bert, tmp_path, mode):
    out = tmp_path / "run"
    shortcuts = "--no-shortcuts" if mode == "eva" else "--shortcuts"
    result = run_cli("train", "--model", str(tiny_bert), "--task", "mrpc", "--mode", mode, "--rank", "8",
                     "--budget-params", "3000", shortcuts, "--train-limit", "32", "--dev-limit", "16",
                     "--max-steps", "6", "--batch-size", "4", "--max-length", "32", "--realloc-every", "0.5",
                     "--out", str(out), "--no-progress", env=cli_env(tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-2000:]
    record = RunRecord(out)
    summary = record.summary()
    lines = record.reallocations()
    assert summary.status == "done" and lines and all(line.ranks for line in lines)
    final = lines[-1].ranks
    unit = 64  # tiny BERT: every candidate 32 -> 32
    if mode == "eva":
        assert sum(final.values()) == 8 * 4  # EVA keeps the total rank of uniform LoRA at --rank
    else:
        assert summary.trainable_params == sum(final.values()) * unit <= 3000
        assert summary.trainable_params > 3000 - unit  # as close to the budget as the costs allow
    if mode == "rank_dynamic":
        assert len(lines) == summary.planned_reallocations == 2  # 8 steps an epoch, f = 0.5, 6 steps: 0 and 4
    predicted = run_cli("predict", "--run", str(out), "--text", "a cat", "--text-pair", "a dog",
                        env=cli_env(tmp_path / "home"))
    assert predicted.returncode == 0 and "probabilities" in predicted.stdout, predicted.stderr[-1000:]


def test_the_controls_deal_the_static_allocation_as_they_say():
    """rank_random, rank_layers and rank_inverted deal rank_static's ranks: the same multiset on
    candidates of equal cost (the same parameter count); rank_layers keeps each kind's multiset;
    rank_inverted gives the largest ranks to the lowest scores."""
    from heterolora_core.search.budget import Budget
    from heterolora_core.search.reallocator import RankAllocator
    from heterolora_core.vocab import ModuleName

    results = {}
    for how in ("allocated", "random", "layers", "inverted"):
        model = tiny_model("bert", layers=3, hidden=32)
        adapters = attach(model, HeteroLoraConfig(rank=8, lora_targets=("q", "v"), shortcuts=True, init_seed=0))
        allocator = RankAllocator(model, adapters, "grad_norm", Budget(params=2000), deal=how, seed=1, scoring="exact")
        results[how] = allocator.reallocate(0, random_batches(3))
    static = results["allocated"].ranks
    for how in ("random", "layers", "inverted"):
        ranks = results[how].ranks
        assert sorted(ranks.values()) == sorted(static.values())
        assert spent(ranks, {n: 64 for n in ranks}) == spent(static, {n: 64 for n in static})
        assert results[how].scores == results["allocated"].scores  # the same scores, dealt otherwise

    def by_kind(ranks):
        kinds = {}
        for name, r in ranks.items():
            kinds.setdefault(ModuleName.parse(name).kind, []).append(r)
        return {k: sorted(v) for k, v in kinds.items()}

    assert by_kind(results["layers"].ranks) == by_kind(static)
    scores = results["allocated"].scores
    order = sorted(static, key=lambda n: (scores[n], n))  # every candidate here costs 64
    assert [results["inverted"].ranks[n] for n in order] == sorted(static.values(), reverse=True)

def test_inverted_and_layer_shuffled_ranks_by_hand():
    from heterolora_core.search.ranks import inverted, shuffled_across_layers

    ranks = {"layer.0.lora.q": 4, "layer.1.lora.q": 0, "layer.2.lora.q": 2, "layer.0.lora.v": 1, "layer.1.lora.v": 3,
             "layer.1.shortcut.res_ffn": 5}
    costs = {n: 10 for n in ranks} | {"layer.1.shortcut.res_ffn": 7}
    scores = {"layer.0.lora.q": 5.0, "layer.1.lora.q": 1.0, "layer.2.lora.q": 3.0, "layer.0.lora.v": 0.5,
              "layer.1.lora.v": 4.0, "layer.1.shortcut.res_ffn": 9.0}
    # cost 10, ascending score: v0 (0.5), q1 (1), q2 (3), v1 (4), q0 (5) get 4, 3, 2, 1, 0; the lone cost-7 keeps 5
    assert inverted(ranks, scores, costs) == {"layer.0.lora.v": 4, "layer.1.lora.q": 3, "layer.2.lora.q": 2,
                                              "layer.1.lora.v": 1, "layer.0.lora.q": 0, "layer.1.shortcut.res_ffn": 5}
    for seed in range(5):
        moved = shuffled_across_layers(ranks, costs, seed)
        assert sorted(moved[f"layer.{i}.lora.q"] for i in range(3)) == [0, 2, 4]
        assert sorted(moved[f"layer.{i}.lora.v"] for i in range(2)) == [1, 3]
        assert moved["layer.1.shortcut.res_ffn"] == 5
    assert len({tuple(shuffled_across_layers(ranks, costs, s).values()) for s in range(10)}) > 1
