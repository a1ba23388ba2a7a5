"""The search space on stock Hugging Face models: counts, names, function preservation, placement
of the shortcut terms, the per-module switch."""
import pytest
import torch

from heterolora_core import HeteroLoraConfig, attach
from heterolora_core.adapters.families import UnsupportedModelError
from tiny_models import FAMILY_KINDS, random_batches, tiny_model

ALL_TARGETS = ("q", "k", "v", "o", "ffn_in", "ffn_out")


def test_candidate_counts_and_names_bert_4_layers():
    model = tiny_model("bert", layers=4)
    adapters = attach(model, HeteroLoraConfig(rank=8, lora_targets=("q", "v"), shortcuts=True))
    names = adapters.names()
    assert len(adapters.names_in_group("lora")) == 8
    assert len(adapters.names_in_group("shortcut")) == 15  # 4 kinds x 4 layers - cross_ffn of layer 0
    assert len(names) == 23
    assert names[:6] == ["layer.0.lora.q", "layer.0.lora.v", "layer.0.shortcut.res_attn",
                         "layer.0.shortcut.res_ffn", "layer.0.shortcut.cross_attn", "layer.1.lora.q"]
    assert "layer.0.shortcut.cross_ffn" not in names and "layer.3.shortcut.cross_ffn" in names


def test_attach_freezes_base_and_counts_parameters_exactly():
    model = tiny_model("bert", layers=2, hidden=32)
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=("q", "v", "ffn_in"), shortcuts=("res_attn",)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heterolora.") for n in trainable)
    # q, v: 4 * (32 + 32); ffn_in: 4 * (32 + 64); res_attn: 4 * 64; two layers
    assert adapters.num_trainable() == 2 * (256 + 256 + 384 + 256)
    adapters.set_enabled(["layer.1.lora.ffn_in", "layer.0.shortcut.res_attn"])
    assert adapters.enabled() == ["layer.0.shortcut.res_attn", "layer.1.lora.ffn_in"]
    assert adapters.num_trainable() == 384 + 256
    with pytest.raises(ValueError, match="unknown adapter module"):
        adapters.set_enabled(["layer.9.lora.q"])


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_function_preservation(kind):
    model = tiny_model(kind)
    batch = random_batches(1)[0]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        reference = model(**inputs).logits
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=ALL_TARGETS, shortcuts=True))
    with torch.no_grad():
        all_on_b_zero = model(**inputs).logits
        adapters.set_enabled([])
        all_off = model(**inputs).logits
        adapters.enable_all()
        for module in adapters.modules_in_order():
            torch.nn.init.normal_(module.lora_B, std=0.2)
        nonzero_b = model(**inputs).logits
        adapters.set_enabled([])
        nonzero_b_all_off = model(**inputs).logits
    assert (all_on_b_zero - reference).abs().max().item() <= 1e-5
    assert (all_off - reference).abs().max().item() <= 1e-5
    assert (nonzero_b_all_off - reference).abs().max().item() <= 1e-5
    assert (nonzero_b - reference).abs().max().item() > 1e-3


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_each_shortcut_kind_changes_the_function(kind):
    """Every kind, alone, reaches the output (no hook silently unused)."""
    model = tiny_model(kind, layers=2)
    batch = random_batches(1)[0]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=(), shortcuts=True))
    for module in adapters.modules_in_order():
        torch.nn.init.normal_(module.lora_B, std=0.3)
    with torch.no_grad():
        adapters.set_enabled([])
        base = model(**inputs).logits
        for name in adapters.names():
            adapters.set_enabled([name])
            assert (model(**inputs).logits - base).abs().max().item() > 1e-4, name


def _capture(module, pre=True):
    store = {}
    if pre:
        handle = module.register_forward_pre_hook(lambda m, args: store.__setitem__("x", args[0].detach().clone()))
    else:
        handle = module.register_forward_hook(lambda m, args, out: store.__setitem__("x", out.detach().clone()))
    return store, handle


def test_bert_shortcut_terms_enter_the_layernorm_sums():
    """Post-norm: LN1 sees h + attn + Δres_attn(h) + Δcross_ffn(u_prev); LN2 sees u + ffn + Δres_ffn(u) + Δcross_attn(h)."""
    model = tiny_model("bert", layers=2)
    batch = random_batches(1)[0]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=(), shortcuts=True))
    for module in adapters.modules_in_order():
        torch.nn.init.normal_(module.lora_B, std=0.3)
    layer1 = model.bert.encoder.layer[1]
    ln1_in, h1 = _capture(layer1.attention.output.LayerNorm)
    ln2_in, h2 = _capture(layer1.output.LayerNorm)
    layer_in, h3 = _capture(layer1)
    u0_store, h4 = _capture(model.bert.encoder.layer[0].attention.output, pre=False)
    u1_store, h5 = _capture(layer1.attention.output, pre=False)
    with torch.no_grad():
        adapters.set_enabled([])
        model(**inputs)
        ln1_base, h_base, u0 = ln1_in["x"], layer_in["x"], u0_store["x"]
        adapters.set_enabled(["layer.1.shortcut.res_attn", "layer.1.shortcut.cross_ffn"])
        model(**inputs)
        expected = (adapters.module("layer.1.shortcut.res_attn").delta(h_base)
                    + adapters.module("layer.1.shortcut.cross_ffn").delta(u0))
        assert torch.allclose(ln1_in["x"] - ln1_base, expected, atol=1e-5)
        adapters.set_enabled([])
        model(**inputs)
        ln2_base, u1 = ln2_in["x"], u1_store["x"]
        adapters.set_enabled(["layer.1.shortcut.res_ffn", "layer.1.shortcut.cross_attn"])
        model(**inputs)
        expected = (adapters.module("layer.1.shortcut.res_ffn").delta(u1)
                    + adapters.module("layer.1.shortcut.cross_attn").delta(h_base))
        assert torch.allclose(ln2_in["x"] - ln2_base, expected, atol=1e-5)
    for h in (h1, h2, h3, h4, h5):
        h.remove()


def test_pre_norm_res_attn_joins_the_residual_but_not_the_attention_input():
    model = tiny_model("llama", layers=2)
    batch = random_batches(1)[0]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=(), shortcuts=True))
    for module in adapters.modules_in_order():
        torch.nn.init.normal_(module.lora_B, std=0.3)
    layer = model.model.layers[1]
    norm1_in, h1 = _capture(layer.input_layernorm)
    norm2_in, h2 = _capture(layer.post_attention_layernorm)
    out_store, h3 = _capture(layer, pre=False)
    with torch.no_grad():
        adapters.set_enabled([])
        model(**inputs)
        h, u, out = norm1_in["x"], norm2_in["x"], out_store["x"]
        adapters.set_enabled(["layer.1.shortcut.res_attn"])
        model(**inputs)
        assert torch.equal(norm1_in["x"], h)  # attention still reads Norm1(h_l)
        assert torch.allclose(norm2_in["x"] - u, adapters.module("layer.1.shortcut.res_attn").delta(h), atol=1e-5)
        adapters.set_enabled(["layer.1.shortcut.cross_attn"])
        model(**inputs)
        assert torch.allclose(out_store["x"] - out, adapters.module("layer.1.shortcut.cross_attn").delta(h), atol=1e-5)
    for hd in (h1, h2, h3):
        hd.remove()


def test_disabled_module_is_frozen_in_adamw_and_resumes():
    model = tiny_model("bert", layers=2)
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=("q", "v"), shortcuts=True))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    batches = random_batches(3)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    step(batches[0])  # every module trained once: every module has AdamW state
    frozen = adapters.module("layer.1.lora.v")
    state_before = {k: v.clone() for k, v in optimizer.state[frozen.lora_B].items()}
    a_before, b_before = frozen.lora_A.detach().clone(), frozen.lora_B.detach().clone()
    assert b_before.abs().sum() > 0
    adapters.set_enabled([n for n in adapters.names() if n != frozen.name])
    step(batches[1])
    assert frozen.lora_A.grad is None and frozen.lora_B.grad is None
    assert torch.equal(frozen.lora_A, a_before) and torch.equal(frozen.lora_B, b_before)
    for key, value in optimizer.state[frozen.lora_B].items():
        assert torch.equal(value, state_before[key]), key
    other = adapters.module("layer.0.lora.q")
    assert int(optimizer.state[other.lora_B]["step"]) == 2
    adapters.enable_all()
    step(batches[2])  # resumes from its weights and state
    assert int(optimizer.state[frozen.lora_B]["step"]) == int(state_before["step"]) + 1
    assert not torch.equal(frozen.lora_B, b_before)


def test_unsupported_architecture_names_the_supported_ones():
    import transformers as tf

    config = tf.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=100)
    model = tf.GPT2ForSequenceClassification(config)
    with pytest.raises(UnsupportedModelError, match="supported: bert, roberta, opt, llama, qwen2, mistral"):
        attach(model, HeteroLoraConfig())


def test_unknown_target_and_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        HeteroLoraConfig(rank=0)
    with pytest.raises(ValueError, match="unknown LoRA target"):
        HeteroLoraConfig(lora_targets=("query",))
    with pytest.raises(ValueError, match="ffn_gate"):
        attach(tiny_model("bert", layers=1), HeteroLoraConfig(lora_targets=("ffn_gate",)))


def test_detach_restores_the_model():
    model = tiny_model("opt_post")
    batch = random_batches(1)[0]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        reference = model(**inputs).logits
    adapters = attach(model, HeteroLoraConfig(rank=4, shortcuts=True))
    for module in adapters.modules_in_order():
        torch.nn.init.normal_(module.lora_B, std=0.3)
    adapters.detach()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)
