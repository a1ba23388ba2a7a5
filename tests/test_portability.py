"""The tool's answer in the user's own training: ``recommend`` (LoraConfig keywords, axolotl) and
``export`` (a PEFT adapter folder, or the configuration files), checked against stock PEFT."""
from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification

from cli_helpers import cli_env, needs_glue, run_cli, save_tiny_bert, save_tiny_llama
from heterolora_core import HeteroLoraConfig, attach
from heterolora_core.adapters.checkpoint import adapter_tensors, export_peft, save_checkpoint
from heterolora_core.adapters.portable import (check_lora_config, lora_config_kwargs, pattern_key, peft_allocation,
                                               write_lora_config)
from heterolora_core.exporting import export_run
from heterolora_core.records.record import RunRecord, Status
from heterolora_core.records.store import RunStore
from heterolora_core.recommend import recommend
from heterolora_core.training.models import load_classifier
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import CONFIG_FILES
from tiny_models import random_batches, tiny_model


def peft_matches(key: str, names: list[str]) -> list[str]:
    """The modules a PEFT pattern key selects (PEFT's rule: ``(.*\\.)?(key)$``)."""
    return [n for n in names if re.match(rf"(.*\.)?({key})$", n)]


def lora_parameter_count(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)


def check_recommendation_in_peft(result, model) -> None:
    """Stock PEFT on a fresh ``model``: every pattern key selects exactly one module, each adapted
    module has the recommended rank, and the adapter parameters are exactly the stated count."""
    from peft import LoraConfig, get_peft_model

    kwargs = json.loads((result.record.path / CONFIG_FILES["json"]).read_text())
    names = [n for n, _ in model.named_modules() if n]
    for key in [*kwargs["rank_pattern"], *kwargs["alpha_pattern"]]:
        assert len(peft_matches(key, names)) == 1, key
    line = result.record.reallocations()[-1]
    peft_model = get_peft_model(model, LoraConfig(**kwargs))
    for path, candidate in result.allocation.candidates.items():
        lora_a = peft_model.get_submodule(f"base_model.model.{path}").lora_A["default"].weight
        assert lora_a.shape[0] == line.ranks[candidate] > 0
    assert sum(1 for r in line.ranks.values() if r > 0) == len(kwargs["target_modules"])
    assert lora_parameter_count(peft_model) == result.trainable_params


@needs_glue
def test_recommend_on_the_embedded_model_trains_exactly_the_budget(home):
    config = RunConfig(task="mrpc", mode="rank_static", budget_params=73_728, lora_targets=["q", "v"], rank=32, batch_size=8,
                       max_length=48)
    result = recommend(config, batches=2)
    assert result.trainable_params == 73_728  # 96 ranks of 768 (uniform q,v at rank 8 on 6 layers)
    check_recommendation_in_peft(result, load_classifier("embedded", 2))
    # the record: listed by the store, done, with the allocation as its one selection
    listed = {row.run_id: row for row in RunStore(home).list_runs()}
    row = listed[result.record.run_id]
    assert row.summary.status == Status.DONE and row.summary.trainable_params == 73_728
    assert row.config.mode == "rank_static" and row.config.shortcuts is False
    line = result.record.reallocations()[0]
    assert sum(r * 768 for r in line.ranks.values()) == 73_728
    assert len(line.scores) == 12 and max(line.ranks.values()) <= 32


def test_recommend_on_a_tiny_llama_trains_exactly_the_budget(home, tmp_path):
    model_dir = save_tiny_llama(tmp_path / "llama", layers=2)
    train = tmp_path / "train.jsonl"
    rows = [{"text": f"sentence number {i} is {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(64)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # q: 32 -> 32 (cost 64 per rank), v: 32 -> 16 (GQA, cost 48), ffn_out: 64 -> 32 (cost 96)
    config = RunConfig(model=str(model_dir), mode="rank_static", train_file=str(train), dev_file=str(train), lora_targets=["q", "v", "ffn_out"],
                       match_uniform_rank=2, rank=8, batch_size=8, max_length=16)
    result = recommend(config, batches=2)
    budget = 2 * 2 * (64 + 48 + 96)
    assert result.trainable_params == budget == 832
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    check_recommendation_in_peft(result, model)


def _tiny_bert_allocation(layers: int = 2):
    model = tiny_model("bert", layers=layers)
    reference = tiny_model("bert", layers=layers)
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=("q", "v"), shortcuts=False))
    adapters.set_ranks({"layer.0.lora.q": 3, "layer.1.lora.v": 1})
    allocation = peft_allocation(adapters)
    return reference, allocation, lora_config_kwargs(allocation, reference)


def test_a_pattern_key_that_matches_nothing_is_refused_before_writing(tmp_path):
    reference, allocation, kwargs = _tiny_bert_allocation()
    write_lora_config(kwargs, reference, tmp_path / "ok.json", "json", allocation)  # the allocation's own keys pass
    stray = pattern_key("bert.encoder.layer.7.attention.self.query")  # no layer 7 in a 2-layer model
    bad = {**kwargs, "rank_pattern": {**kwargs["rank_pattern"], stray: 4}}
    with pytest.raises(ValueError, match="matches no module"):
        write_lora_config(bad, reference, tmp_path / "bad.json", "json", allocation)
    assert not (tmp_path / "bad.json").exists()
    loose = {**kwargs, "alpha_pattern": {"query": 2.0, **kwargs["alpha_pattern"]}}  # not anchored: 2 queries
    with pytest.raises(ValueError, match="matches 2 modules"):
        check_lora_config(loose, reference, allocation)
    wrong_rank = {**kwargs, "rank_pattern": {k: 2 for k in kwargs["rank_pattern"]}}
    with pytest.raises(ValueError, match="would train at rank 2"):
        check_lora_config(wrong_rank, reference, allocation)


def test_axolotl_snippet_parses_with_the_allocation(tmp_path):
    reference, allocation, kwargs = _tiny_bert_allocation()
    path = write_lora_config(kwargs, reference, tmp_path / "lora.yaml", "axolotl", allocation)
    snippet = yaml.safe_load(path.read_text())
    assert set(snippet) == {"adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                            "lora_rank_pattern", "lora_alpha_pattern", "lora_modules_to_save"}
    assert snippet["adapter"] == "lora" and snippet["lora_modules_to_save"] == ["classifier"]
    assert snippet["lora_target_modules"] == ["bert.encoder.layer.0.attention.self.query",
                                              "bert.encoder.layer.1.attention.self.value"]
    assert list(snippet["lora_rank_pattern"].values()) == [3, 1]
    assert list(snippet["lora_alpha_pattern"].values()) == [6.0, 2.0]  # alpha/r = 8/4 kept per module
    assert snippet["lora_rank_pattern"] == kwargs["rank_pattern"]


# -------------------------------------------------------------------------------------------------
# export
# -------------------------------------------------------------------------------------------------

def fake_finished_run(folder, model_dir, mode: str, ranks: dict[str, int], shortcuts: bool = False,
                      targets=("q", "v", "ffn_out")) -> tuple[RunRecord, torch.Tensor]:
    """A run record as a finished run leaves it (trained B, a moved head, the final ranks), and its
    logits on a fixed batch computed with our adapters."""
    config = RunConfig(model=str(model_dir), mode=mode, rank=4, lora_targets=list(targets), shortcuts=shortcuts)
    record = RunRecord.create(folder, config.to_dict(), status=Status.DONE, num_labels=2)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=tuple(targets), shortcuts=shortcuts))
    torch.manual_seed(0)
    for module in adapters.modules_in_order():
        torch.nn.init.normal_(module.lora_B, std=0.2)
    head = model.classifier if hasattr(model, "classifier") else model.score
    with torch.no_grad():
        head.weight.add_(torch.randn_like(head.weight))
    adapters.set_ranks(ranks)
    save_checkpoint(record.path / RunRecord.ADAPTERS, model, adapter_tensors(adapters), adapters.enabled(),
                    None if adapters.all_at_full_rank() else adapters.ranks())
    with torch.no_grad():
        logits = model(**_inputs()).logits
    return record, logits


def _inputs():
    return {k: v for k, v in random_batches(1, seq_len=7)[0].items() if k != "labels"}


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_export_round_trip_loads_in_stock_peft_with_equal_logits(tmp_path, kind):
    from peft import PeftModel

    model_dir = (save_tiny_bert if kind == "bert" else save_tiny_llama)(tmp_path / kind, layers=2)
    ranks = {"layer.0.lora.q": 4, "layer.0.lora.ffn_out": 2, "layer.1.lora.v": 1, "layer.1.lora.q": 3}
    record, ours = fake_finished_run(tmp_path / "run", model_dir, "rank_dynamic", ranks)
    out = export_run(record.path, tmp_path / "peft", "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["rank_pattern"].values()) == [1, 2, 3, 4]
    fresh = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    peft_model = PeftModel.from_pretrained(fresh, out).eval()
    with torch.no_grad():
        theirs = peft_model(**_inputs()).logits
    assert (ours - theirs).abs().max().item() <= 1e-5
    # Σ r_i (d_in + d_out): q 4·64 + ffn_out 2·96 + q 3·64, and v 1·64 (BERT) or 1·48 (Llama: GQA, v is 32 -> 16)
    expected = {"bert": 256 + 192 + 192 + 64, "llama": 256 + 192 + 192 + 48}[kind]
    assert sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n) == expected
    # the configuration formats of the same run: the same modules and ranks, no weights
    kwargs = json.loads(export_run(record.path, tmp_path / "lora.json", "json").read_text())
    assert kwargs["rank_pattern"] == config["rank_pattern"] and sorted(kwargs["target_modules"]) == sorted(config["target_modules"])


def test_export_of_a_causal_lm_round_trips_in_stock_peft(tmp_path):
    """A language model (no classification head): CAUSAL_LM, nothing in modules_to_save."""
    import transformers as tf
    from peft import PeftModel

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=64, pad_token_id=0)
    tf.LlamaForCausalLM(config).save_pretrained(tmp_path / "lm")
    model = tf.LlamaForCausalLM.from_pretrained(tmp_path / "lm").eval()
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=("q", "v", "ffn_gate"), shortcuts=False))
    for module in adapters.modules_in_order():
        torch.nn.init.normal_(module.lora_B, std=0.2)
    adapters.set_ranks({"layer.0.lora.v": 2, "layer.1.lora.ffn_gate": 4, "layer.1.lora.q": 1})
    inputs = _inputs()
    with torch.no_grad():
        ours = model(**inputs).logits
    out = export_peft(model, adapters, tmp_path / "peft")
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["task_type"] == "CAUSAL_LM" and not saved.get("modules_to_save")
    peft_model = PeftModel.from_pretrained(tf.LlamaForCausalLM.from_pretrained(tmp_path / "lm").eval(), out).eval()
    with torch.no_grad():
        theirs = peft_model(**inputs).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_export_refuses_what_it_cannot_carry(tmp_path):
    model_dir = save_tiny_bert(tmp_path / "bert", layers=2)
    with_shortcut, _ = fake_finished_run(tmp_path / "sc", model_dir, "dynamic",
                                         {"layer.0.lora.q": 4, "layer.1.shortcut.cross_attn": 4}, shortcuts=True)
    for fmt in ("peft", "json", "axolotl"):
        with pytest.raises(ValueError, match="layer.1.shortcut.cross_attn would be lost"):
            export_run(with_shortcut.path, tmp_path / f"out-{fmt}", fmt)
        assert not (tmp_path / f"out-{fmt}").exists()
    running = RunRecord.create(tmp_path / "running", RunConfig(model=str(model_dir)).to_dict(), status=Status.RUNNING)
    with pytest.raises(ValueError, match="has no saved adapters"):
        export_run(running.path, tmp_path / "x.json", "json")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        export_run(with_shortcut.path, tmp_path / "taken", "peft")
    adalora = RunRecord.create(tmp_path / "ada", RunConfig(model=str(model_dir), mode="adalora",
                                                          shortcuts=False).to_dict(), status=Status.DONE)
    with pytest.raises(ValueError, match="keeps PEFT's own tensors"):
        export_run(adalora.path, tmp_path / "ada-out", "peft")


def test_cli_export_and_recommend_errors_are_one_line(tmp_path):
    env = cli_env(tmp_path / "home")
    (tmp_path / "taken.json").write_text("{}")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n" for i in range(8)))
    checks = [
        ("recommend", "--out", str(tmp_path / "taken.json")),
        ("recommend", "--mode", "dynamic"),
        ("recommend", "--budget-params", "5", "--task", "custom", "--train-file", str(tmp_path / "rows.jsonl"),
         "--dev-file", str(tmp_path / "rows.jsonl")),
        ("export", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")),
        ("export", "--run", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "onnx"),
    ]
    for args in checks:
        done = run_cli(*args, env=env, timeout=120)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert (tmp_path / "taken.json").read_text() == "{}"
    assert not (tmp_path / "home" / "runs").exists()  # nothing recorded for a refusal


def test_cli_recommend_static_prints_the_table_and_writes_axolotl(tmp_path):
    model_dir = save_tiny_bert(tmp_path / "bert", layers=2)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i} is {'good' if i % 2 else 'bad'}", "label": i % 2}) + "\n"
                            for i in range(32)))
    out = tmp_path / "lora.yaml"
    done = run_cli("recommend", "--model", model_dir, "--train-file", rows, "--dev-file", rows, "--mode", "static",
                   "--rank", "4", "--enable-ratio", "0.5", "--batches", "2", "--batch-size", "8", "--max-length", "16",
                   "--format", "axolotl", "--out", out, "--record", tmp_path / "home" / "runs" / "rec",
                   env=cli_env(tmp_path / "home"))
    assert done.returncode == 0, done.stderr
    table = done.stdout.splitlines()
    assert table[0].split() == ["layer", "q", "v"] and [line.split()[0] for line in table[1:4]] == ["0", "1", "sum"]
    assert sum(int(v) for v in table[3].split()[1:]) == 2 * 4  # half of 4 candidates on, at rank 4
    assert "trainable 512 adapter parameters in 2 modules" in done.stdout  # 2 x 4 x (32 + 32)
    snippet = yaml.safe_load(out.read_text())
    assert sorted(snippet["lora_rank_pattern"].values()) == [4, 4] and len(snippet["lora_target_modules"]) == 2
