"""Scoring statistics in O((d_in + d_out)·k): exact reformulations equal the full-G values on
every family, the sketch's ‖G‖ stays within its stated error on known matrices, and nothing the
collector holds is a d_out × d_in matrix."""
from __future__ import annotations

import math

import pytest
import torch

from heterolora_core import HeteroLoraConfig, attach
from heterolora_core.adapters.modules import AdapterModule, Base
from heterolora_core.search.proxies import collect_gradients, compute_scores, ensure_probes
from heterolora_core.search.statistics import (MEMORY_FRACTION, AutoStatistics, ExactStatistics, SketchStatistics,
                                               auto_sketch_rank, gram_fisher, make_statistics)
from heterolora_core.vocab import ModuleName
from tiny_models import FAMILY_KINDS, random_batches, tiny_model


def _attached(kind: str, rank: int = 4):
    model = tiny_model(kind, layers=2, hidden=32)
    targets = ("q", "v", "ffn_gate", "ffn_out") if kind in ("llama", "qwen2", "mistral") else ("q", "v", "ffn_out")
    adapters = attach(model, HeteroLoraConfig(rank=rank, lora_targets=targets, shortcuts=True, init_seed=0))
    return model, adapters


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_fisher_and_snip_without_G_equal_the_full_G_path(kind):
    """fisher from token Gram matrices and snip's factor gradients from δ and x equal the values
    computed from the full G, to float tolerance, on a tiny model of every family."""
    model, adapters = _attached(kind)
    torch.manual_seed(1)
    for module in adapters.modules_in_order():  # a trained-looking B, so snip uses B itself
        torch.nn.init.normal_(module.lora_B, std=0.05)
    ensure_probes(adapters, 0)
    batches = random_batches(3, batch_size=3)
    exact = collect_gradients(model, adapters, batches, statistics=ExactStatistics(factors=True))
    sketch = collect_gradients(model, adapters, batches, statistics=SketchStatistics(rank=16, factors=True))
    for module in adapters.modules_in_order():
        name = module.name
        assert sketch.fisher(name) == pytest.approx(exact.fisher(name), rel=1e-4, abs=1e-12), name
        for got, want in zip(sketch.factor_products(module), exact.factor_products(module)):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-7), name
    for proxy in ("snip", "fisher"):
        a = compute_scores(proxy, model, adapters, batches=batches, scoring="exact")
        b = compute_scores(proxy, model, adapters, batches=batches, scoring="sketch", sketch_rank=16)
        assert b == pytest.approx(a, rel=1e-4)


def test_gram_fisher_is_the_squared_norm_of_the_gradient():
    torch.manual_seed(0)
    grad, x = torch.randn(40, 7), torch.randn(40, 11)
    assert float(gram_fisher(grad, x)) == pytest.approx(float((grad.T @ x).pow(2).sum()), rel=1e-5)


def test_padding_tokens_do_not_count_against_the_exact_fisher():
    """A batch of 40 tokens with only 10 carrying a gradient (padding: zero rows) is short enough
    for the exact Gram fisher at k = 4 (4k = 16); 40 live tokens are not, and get the sketch's
    estimate. The sketches are the same with or without the zero rows."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    module = SimpleNamespace(name="layer.0.lora.q", d_in=11, d_out=7)
    grad, x = torch.randn(40, 7), torch.randn(40, 11)
    padded = grad.clone()
    padded[10:] = 0.0
    short, long_, live_only = SketchStatistics(rank=4), SketchStatistics(rank=4), SketchStatistics(rank=4)
    short.add(module, padded, x)
    long_.add(module, grad, x)
    live_only.add(module, padded[:10], x[:10])
    assert short.fisher(module.name) == pytest.approx(float((padded.T @ x).pow(2).sum()), rel=1e-5)
    assert long_.fisher(module.name) == pytest.approx(float(long_.YZ[module.name].pow(2).sum()) / 8, rel=1e-6)
    assert long_.fisher(module.name) != pytest.approx(float((grad.T @ x).pow(2).sum()), rel=1e-3)
    assert torch.allclose(short.YZ[module.name], live_only.YZ[module.name], atol=1e-5)
    assert torch.allclose(short.W[module.name], live_only.W[module.name], atol=1e-5)
    # 30 of 40 live: more than 4k, and kept in place (zero rows add nothing), not gathered
    mostly, mostly_alone = SketchStatistics(rank=4), SketchStatistics(rank=4)
    mostly_padded = grad.clone()
    mostly_padded[30:] = 0.0
    mostly.add(module, mostly_padded, x)
    mostly_alone.add(module, grad[:30], x[:30])
    assert torch.allclose(mostly.YZ[module.name], mostly_alone.YZ[module.name], atol=1e-5)
    assert torch.allclose(mostly.W[module.name], mostly_alone.W[module.name], atol=1e-5)
    assert mostly.fisher(module.name) == pytest.approx(mostly_alone.fisher(module.name), rel=1e-5)


def test_candidates_reading_one_input_share_its_sketch_product_and_nothing_else():
    """q and v read the same x: the second reuses x [Ω | Φ] (one product, not two) and gets the
    sketches a collector of its own gives; a different input of the same shape, or the same
    input written in place, is multiplied afresh."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    q, v = (SimpleNamespace(name=f"layer.0.lora.{t}", d_in=12, d_out=9) for t in "qv")
    x = torch.randn(2, 20, 12).reshape(-1, 12)  # a view, as the hooks hand it over
    g_q, g_v = torch.randn(40, 9), torch.randn(40, 9)
    shared, alone = SketchStatistics(rank=3), SketchStatistics(rank=3)
    reused = []  # per call: was the cached product handed back?
    original = SketchStatistics._sketched_input

    def counting(self, x, omega_phi):
        before = self._last_input[2] if self._last_input is not None else None
        out = original(self, x, omega_phi)
        reused.append(out is before)
        return out

    SketchStatistics._sketched_input = counting
    try:
        shared.add(q, g_q, x)
        shared.add(v, g_v, x.reshape(-1, 12))  # a new view of the same storage
        alone.add(v, g_v, x.clone())
        assert reused == [False, True, False]
        assert torch.equal(shared.YZ[v.name], alone.YZ[v.name]) and torch.equal(shared.W[v.name], alone.W[v.name])
        other = torch.randn(40, 12)
        shared.add(v, g_v, other)
        x.mul_(2.0)  # same storage, new values
        shared.add(q, g_q, x)
        assert reused == [False, True, False, False, False]
    finally:
        SketchStatistics._sketched_input = original
    fresh = SketchStatistics(rank=3)
    fresh.add(q, g_q, x / 2.0)
    fresh.add(q, g_q, x)
    assert torch.allclose(shared.YZ[q.name], fresh.YZ[q.name], atol=1e-5)


def _known_matrix(sigma: torch.Tensor, d_out: int = 96, d_in: int = 128, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d_out, len(sigma), generator=gen))
    V, _ = torch.linalg.qr(torch.randn(d_in, len(sigma), generator=gen))
    return U @ torch.diag(sigma) @ V.T


SPECTRA = {
    "rank 1": torch.tensor([3.0]),
    "1/i": 1.0 / torch.arange(1, 81, dtype=torch.float32),
    "1/sqrt(i)": torch.arange(1, 81, dtype=torch.float32) ** -0.5,
    "flat": torch.ones(80),
}


@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("k", [8, 16])
def test_the_sketched_norm_lies_within_its_stated_error(spectrum, k):
    """Over 60 seeds: ‖G‖² is estimated without bias, with a relative standard deviation no larger
    than the plain Hutchinson bound sqrt(2 Σσ⁴ / k) / Σσ² (the docstring's statement), and far
    below it when the spectrum decays."""
    sigma = SPECTRA[spectrum]
    G = _known_matrix(sigma)
    module = AdapterModule(ModuleName.lora(0, "q"), Base.LINEAR, G.shape[1], G.shape[0], 4, 2.0)
    truth = float(sigma.pow(2).sum())
    estimates = []
    for seed in range(60):
        stats = SketchStatistics(rank=k, seed=seed)
        stats.add(module, G.T.contiguous(), torch.eye(G.shape[1]))  # one "batch" with δᵀx = G
        estimates.append(stats.grad_norm(module.name) ** 2)
    values = torch.tensor(estimates, dtype=torch.float64)
    rel_std = float(values.std()) / truth
    bound = math.sqrt(2 * float(sigma.pow(4).sum()) / k) / truth
    assert abs(float(values.mean()) / truth - 1) <= 3 * rel_std / math.sqrt(60) + 0.01  # no bias
    assert rel_std <= 1.25 * bound + 1e-6
    if spectrum in ("rank 1", "1/i"):
        assert rel_std <= 0.4 * bound  # the control variate removes most of it


def test_the_sketch_spectrum_finds_the_leading_singular_values():
    sigma = torch.tensor([10.0, 6.0, 3.0, 1.0] + [0.05] * 40)
    G = _known_matrix(sigma)
    module = AdapterModule(ModuleName.lora(0, "v"), Base.LINEAR, G.shape[1], G.shape[0], 4, 2.0)
    stats = SketchStatistics(rank=16, seed=3)
    stats.add(module, G.T.contiguous(), torch.eye(G.shape[1]))
    assert torch.allclose(stats.spectrum(module.name)[:4], sigma[:4], rtol=0.05)


def _llama_like(hidden: int = 64, intermediate: int = 176):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=100, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=0)
    model = tf.AutoModelForSequenceClassification.from_config(config).eval()
    targets = ("q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out")
    return model, attach(model, HeteroLoraConfig(rank=4, lora_targets=targets, shortcuts=True, init_seed=0))


def test_no_sketch_statistic_is_a_full_gradient_matrix():
    model, adapters = _llama_like()
    stats = collect_gradients(model, adapters, random_batches(2), statistics=SketchStatistics(rank=8, factors=True))
    full = {(m.d_out, m.d_in) for m in adapters.modules_in_order()} | {(m.d_in, m.d_out) for m in adapters.modules_in_order()}
    shapes = {name: tuple(t.shape) for name, t in stats.tensors().items()}
    assert len(stats) == len(adapters.names()) and shapes
    assert not [name for name, shape in shapes.items() if shape in full]
    for name, shape in shapes.items():  # every one is k, 2k, 2k + 1 or r wide
        assert min(shape) in (4, 8, 16, 17), (name, shape)
    exact = collect_gradients(model, adapters, random_batches(2), statistics=ExactStatistics())
    assert {tuple(t.shape) for t in exact.tensors().values()} <= full  # the check can fail


def test_auto_scoring_sketches_large_candidates_within_the_memory_budget():
    assert auto_sketch_rank(384, 384) is None  # MiniLM: the full G is small, kept exact
    assert [auto_sketch_rank(d, d) for d in (1024, 2048, 4096)] == [9, 20, 32]
    for d_in, d_out in ((1024, 1024), (2048, 5504), (4096, 4096), (4096, 1024)):
        k = auto_sketch_rank(d_in, d_out)
        assert (2 * k * d_out + (2 * k + 1) * d_in) <= MEMORY_FRACTION * d_in * d_out
    auto = make_statistics("auto")
    small = AdapterModule(ModuleName.lora(0, "q"), Base.LINEAR, 32, 32, 4, 2.0)
    large = AdapterModule(ModuleName.lora(0, "v"), Base.LINEAR, 1024, 1024, 4, 2.0)
    assert isinstance(auto, AutoStatistics)
    assert isinstance(auto.collector_for(small), ExactStatistics)
    assert isinstance(auto.collector_for(large), SketchStatistics) and auto.collector_for(large).rank == 9
    with pytest.raises(ValueError, match="unknown scoring 'fast'"):
        make_statistics("fast")


def test_bf16_inputs_give_fp32_statistics():
    module = AdapterModule(ModuleName.lora(0, "q"), Base.LINEAR, 48, 40, 4, 2.0)
    stats = SketchStatistics(rank=8)
    torch.manual_seed(0)
    grad, x = torch.randn(300, 40), torch.randn(300, 48)
    stats.add(module, grad.bfloat16(), x.bfloat16())
    assert {t.dtype for t in stats.tensors().values()} == {torch.float32}
    assert math.isfinite(stats.grad_norm(module.name)) and stats.fisher(module.name) > 0


def test_a_window_scored_with_the_sketch_selects_like_the_exact_window():
    """The reallocator's default window statistics on a tiny model: sketch and exact scores of
    the same window agree on the ranking."""
    from scipy.stats import spearmanr

    model, adapters = _llama_like(hidden=96, intermediate=256)
    batches = random_batches(4, batch_size=6, seq_len=12)
    exact = compute_scores("grad_norm", model, adapters, batches=batches, scoring="exact")
    sketch = compute_scores("grad_norm", model, adapters, batches=batches, scoring="sketch", sketch_rank=16)
    names = list(exact)
    assert spearmanr([exact[n] for n in names], [sketch[n] for n in names]).correlation >= 0.95
