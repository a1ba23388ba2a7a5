"""A LoRA-only selection exports as a PEFT adapter that stock PEFT loads to the same logits."""
import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from heterolora_core import HeteroLoraConfig, attach
from heterolora_core.adapters.checkpoint import export_peft
from tiny_models import random_batches, tiny_model


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_peft_round_trip(tmp_path, kind):
    from peft import PeftModel

    base_dir = tmp_path / "base"
    tiny_model(kind, layers=3).save_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir).eval()
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=("q", "v", "ffn_out"), shortcuts=False))
    torch.manual_seed(0)
    for module in adapters.modules_in_order():
        torch.nn.init.normal_(module.lora_B, std=0.2)
    head = model.classifier if kind == "bert" else model.score
    with torch.no_grad():
        head.weight.add_(torch.randn_like(head.weight))  # a trained head travels in modules_to_save
    chosen = ["layer.0.lora.v", "layer.1.lora.q", "layer.2.lora.ffn_out"]
    adapters.set_enabled(chosen)
    inputs = {k: v for k, v in random_batches(1)[0].items() if k != "labels"}
    with torch.no_grad():
        ours = model(**inputs).logits

    out = export_peft(model, adapters, tmp_path / "peft", base_model_name_or_path=str(base_dir))
    config = json.loads((out / "adapter_config.json").read_text())
    assert len(config["target_modules"]) == 3
    assert set(config["rank_pattern"].values()) == {4} and set(config["alpha_pattern"].values()) == {8.0}
    assert config["modules_to_save"] == ["classifier" if kind == "bert" else "score"]

    fresh = AutoModelForSequenceClassification.from_pretrained(base_dir).eval()
    peft_model = PeftModel.from_pretrained(fresh, out).eval()
    with torch.no_grad():
        theirs = peft_model(**inputs).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_export_refuses_enabled_shortcuts(tmp_path):
    model = tiny_model("bert", layers=2)
    adapters = attach(model, HeteroLoraConfig(rank=4, shortcuts=True))
    with pytest.raises(ValueError, match="PEFT has no shortcut modules"):
        export_peft(model, adapters, tmp_path)
    adapters.set_enabled(adapters.names_in_group("lora"))
    export_peft(model, adapters, tmp_path / "ok")  # disabled shortcuts are fine
