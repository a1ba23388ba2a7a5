"""Zero-cost proxies: values checked against independent autograd computations."""
import math

import pytest
import torch

from heterolora_core import HeteroLoraConfig, attach
from heterolora_core.search.proxies import alpha_test_scores, compute_scores, scores_from_gradients
from heterolora_core.search.statistics import ExactStatistics
from tiny_models import random_batches, tiny_model

HIDDEN = 32


def _model(kind="bert", shortcuts=True, rank=4, targets=("q", "v")):
    model = tiny_model(kind, layers=2, hidden=HIDDEN)
    adapters = attach(model, HeteroLoraConfig(rank=rank, lora_targets=targets, shortcuts=shortcuts, init_seed=0))
    return model, adapters


def test_grad_norm_of_lora_equals_the_base_weight_gradient_norm():
    """For a LoRA module G = ∇_{ΔW} L = ∇_{W0} L: compare with autograd on W0 itself."""
    model, adapters = _model(shortcuts=False)
    batches = random_batches(3)
    scores = compute_scores("grad_norm", model, adapters, batches=batches)
    # independent: gradient of the summed loss w.r.t. the frozen projections' weights
    weights = {"layer.0.lora.q": model.bert.encoder.layer[0].attention.self.query.weight,
               "layer.1.lora.v": model.bert.encoder.layer[1].attention.self.value.weight}
    for w in weights.values():
        w.requires_grad_(True)
    total = sum(model(**b).loss for b in batches)
    grads = torch.autograd.grad(total, list(weights.values()))
    for (name, _), g in zip(weights.items(), grads):
        assert scores[name] == pytest.approx(float(g.norm()), rel=1e-4)


@pytest.mark.parametrize("kind", ["bert", "opt_post", "llama"])
def test_grad_norm_of_shortcuts_equals_autograd_through_an_identity_A(kind):
    """With r = d and A = I, ∇B L = s·G, so ‖G‖ = ‖∇B L‖ / s: an independent check of δ and x
    at every shortcut site, B = 0 as at initialisation."""
    model = tiny_model(kind, layers=2, hidden=HIDDEN)
    adapters = attach(model, HeteroLoraConfig(rank=HIDDEN, lora_targets=("v",), shortcuts=True))
    with torch.no_grad():
        for module in adapters.modules_in_order():
            module.lora_A.copy_(torch.eye(HIDDEN))
    batches = random_batches(2)
    scores = compute_scores("grad_norm", model, adapters, batches=batches)
    modules = adapters.modules_in_order()
    total = sum(model(**b).loss for b in batches)
    grads = torch.autograd.grad(total, [m.lora_B for m in modules])
    for module, g in zip(modules, grads):
        expected = float(g.norm()) / module.scaling
        assert expected > 0, module.name
        assert scores[module.name] == pytest.approx(expected, rel=1e-4), module.name


def test_snip_equals_factor_connection_sensitivity_when_B_is_trained():
    model, adapters = _model()
    torch.manual_seed(3)
    for module in adapters.modules_in_order():
        torch.nn.init.normal_(module.lora_B, std=0.1)
    batches = random_batches(2)
    scores = compute_scores("snip", model, adapters, batches=batches)
    modules = adapters.modules_in_order()
    params = [p for m in modules for p in (m.lora_A, m.lora_B)]
    grads = torch.autograd.grad(sum(model(**b).loss for b in batches), params)
    for i, module in enumerate(modules):
        gA, gB = grads[2 * i], grads[2 * i + 1]
        expected = float((module.lora_A.detach() * gA).abs().sum() + (module.lora_B.detach() * gB).abs().sum())
        assert scores[module.name] == pytest.approx(expected, rel=1e-4), module.name


def test_fisher_is_the_sum_of_per_batch_squared_norms():
    model, adapters = _model(shortcuts=False)
    batches = random_batches(3)
    fisher = compute_scores("fisher", model, adapters, batches=batches)
    w = model.bert.encoder.layer[1].attention.self.query.weight
    w.requires_grad_(True)
    expected = sum(float(torch.autograd.grad(model(**b).loss, [w])[0].pow(2).sum()) for b in batches)
    assert fisher["layer.1.lora.q"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("proxy", ["grad_norm", "snip", "synflow", "fisher"])
def test_gradient_proxies_are_not_degenerate_at_initialisation(proxy):
    model, adapters = _model()
    assert all(not m.lora_B.any() for m in adapters.modules_in_order())  # B = 0
    scores = compute_scores(proxy, model, adapters, batches=random_batches(2))
    values = list(scores.values())
    assert all(math.isfinite(v) and v > 0 for v in values), scores
    assert len(set(values)) == len(values)  # not all equal; no ties at all here


def test_scoring_leaves_parameter_gradients_and_enabled_set_untouched():
    model, adapters = _model()
    adapters.set_enabled(["layer.0.lora.q"])
    for proxy in ("grad_norm", "synflow", "alpha_test"):
        compute_scores(proxy, model, adapters, batches=random_batches(1))
    assert adapters.enabled() == ["layer.0.lora.q"]
    assert all(p.grad is None for p in model.parameters())
    assert all(m.alpha_scale is None for m in adapters.modules_in_order())


def test_synflow_restores_every_weight_exactly():
    model, adapters = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compute_scores("synflow", model, adapters, batches=random_batches(1))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_alpha_test_finds_the_bisection_boundary():
    model, adapters = _model()
    with torch.no_grad():  # a sharp head, so that scaling a module moves the loss past the tolerance
        model.classifier.weight.mul_(40.0)
    batches = random_batches(2)
    tol = 0.01
    scores = alpha_test_scores(model, adapters, batches, tol=tol)

    def loss_at(module, alpha):
        module.alpha_scale = alpha
        try:
            with torch.no_grad():
                return sum(float(model(**b).loss) for b in batches) / len(batches)
        finally:
            module.alpha_scale = None

    assert set(scores.values()) <= {i / 10 for i in range(11)}
    assert len(set(scores.values())) > 1
    for name, alpha in scores.items():
        module = adapters.module(name)
        limit = loss_at(module, 1.0) * (1 + tol)
        assert loss_at(module, alpha) <= limit + 1e-9, name
        if alpha > 0:  # the grid point just below was tested and failed
            assert loss_at(module, round(alpha - 0.1, 10)) > limit, name


def test_scores_from_training_steps_match_extra_pass_scores():
    """The default: G accumulated inside ordinary training backward passes."""
    model, adapters = _model()
    batches = random_batches(2)
    reference = compute_scores("grad_norm", model, adapters, batches=batches)
    collector = ExactStatistics()
    with adapters.collecting(collector):
        for batch in batches:
            model(**batch).loss.backward()
    from_training = scores_from_gradients("grad_norm", adapters, collector)
    for name, value in reference.items():
        assert from_training[name] == pytest.approx(value, rel=1e-4), name


@pytest.mark.parametrize("kind", ["bert", "opt_post", "llama"])
def test_a_training_window_reaches_candidates_below_the_lowest_enabled_one(kind):
    """Only the top layer's v trains: every candidate still gets the δ it gets with everything on
    (B = 0, so the function is the same), and backward goes no lower than the lowest site: the
    embeddings' output never requires grad."""
    model = tiny_model(kind, layers=2, hidden=HIDDEN)
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=("q", "v"), shortcuts=True, init_seed=0))
    batches = random_batches(2)
    reference = compute_scores("grad_norm", model, adapters, batches=batches)
    adapters.set_enabled(["layer.1.lora.v"])
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))
    collector = ExactStatistics()
    with adapters.collecting(collector):
        for batch in batches:
            model(**batch).loss.backward()
    handle.remove()
    from_training = scores_from_gradients("grad_norm", adapters, collector)
    assert seen == [False, False]
    assert sorted(from_training) == sorted(reference) and len(reference) == len(adapters.names())
    for name, value in reference.items():
        assert from_training[name] == pytest.approx(value, rel=1e-4), name
    frozen = [p for n, p in model.named_parameters() if "heterolora" not in n and not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


def test_constant_and_unknown_proxy():
    model, adapters = _model()
    assert set(compute_scores("constant", model, adapters).values()) == {1.0}
    with pytest.raises(ValueError, match="unknown proxy 'jacob_cov'"):
        compute_scores("jacob_cov", model, adapters)
