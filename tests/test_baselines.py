"""PEFT's AdaLoRA as a baseline mode: schedule, wiring (orthogonal regulariser, plain head), the
counted parameters after its budget allocation, the run record and predict."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from heterolora_core.methods import registry
from heterolora_core.methods.adalora import adalora_layers, adalora_parameter_counts, adalora_schedule, kept_ranks
from heterolora_core.methods.base import MethodContext
from heterolora_core.training.run_config import RunConfig
from tiny_models import random_batches, tiny_model


def test_schedule_keeps_three_phases_for_any_length():
    s = adalora_schedule(690)  # MRPC, batch 16, 3 epochs
    assert (s.tinit, s.tfinal, s.deltaT) == (104, 345, 1)
    for total in range(2, 60):
        s = adalora_schedule(total)
        assert s.tfinal >= 1 and 0 <= s.tinit < total - s.tfinal  # the final mask is always forced
    with pytest.raises(ValueError, match="at least 2 training steps"):
        adalora_schedule(1)


@pytest.mark.parametrize("changes, message", [
    (dict(adalora_target_r=40), "adalora-target-r must be in"),
    (dict(adalora_init_r=0), r"adalora-init-r must be at least 1 \(got 0\)"),
    (dict(shortcuts=True), "--no-shortcuts"),
    (dict(max_steps=1), "at least 2 training steps"),
])
def test_bad_settings_are_one_line_errors(changes, message):
    config = RunConfig(**{"mode": "adalora", "shortcuts": False, **changes})
    with pytest.raises(ValueError, match=message):
        config.validate()  # the one validation: generic ranges, then AdaLora.validate


def test_wiring_on_a_tiny_bert():
    model = tiny_model("bert", layers=3, hidden=32)  # eval mode: no dropout, so two forwards agree
    config = RunConfig(mode="adalora", shortcuts=False, lora_targets=["q", "v"], adalora_init_r=4, adalora_target_r=2)
    config.validate()
    run = registry.load("adalora").prepare(model, config, MethodContext(steps_per_epoch=5, total_steps=10))
    peft_model = run.model

    assert run.names["layer.0.lora.q"] == "bert.encoder.layer.0.attention.self.query"
    assert list(run.names)[-1] == "layer.2.lora.v" and len(run.names) == 6
    # the head stays a plain, frozen module (training unfreezes it); only A, E, B train
    assert type(peft_model.classifier) is torch.nn.Linear
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(any(f".{k}." in n for k in ("lora_A", "lora_E", "lora_B")) for n in trainable)

    # PEFT's orthogonal regulariser is in the loss: 0.1 * mean over factors of ||P P^T - I||_F
    batch = random_batches(1, batch_size=4)[0]
    loss = peft_model(**batch).loss
    plain = peft_model.get_base_model()(**batch).loss
    terms = []
    for name, p in peft_model.named_parameters():
        if ".lora_A." in name:
            terms.append(torch.linalg.norm(p @ p.T - torch.eye(p.shape[0])))
        elif ".lora_B." in name:
            terms.append(torch.linalg.norm(p.T @ p - torch.eye(p.shape[1])))
    assert loss.item() == pytest.approx(plain.item() + 0.1 * torch.stack(terms).mean().item(), rel=1e-5)

    # before any allocation every module counts at init_r: 6 modules x 4 x (32 + 32 + 1)
    counts = adalora_parameter_counts(peft_model)
    assert counts == {"trainable_params": 1560, "adalora_initial_params": 1560, "adalora_target_params": 780}
    assert set(kept_ranks(peft_model).values()) == {4}


def _write_pairs(path, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    words = ["cat", "dog", "sun", "rain", "car", "tree", "river", "book"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "text_pair", "label"])
        for _ in range(n):
            a, b = (words[int(i)] for i in torch.randint(0, len(words), (2,), generator=gen))
            label = int(a == b or torch.rand(1, generator=gen).item() < 0.3)
            writer.writerow([f"the {a} is here", f"a {b} was there", label])


def test_adalora_run_records_counted_params_and_predicts(tmp_path):
    from safetensors.torch import load_file

    from heterolora_core.adapters.checkpoint import WEIGHTS_FILE
    from heterolora_core.inference import load_run_for_inference, predict
    from heterolora_core.records.record import RunRecord
    from heterolora_core.training.trainer import run_training

    _write_pairs(tmp_path / "train.csv", 32, seed=0)
    _write_pairs(tmp_path / "dev.csv", 16, seed=1)
    config = RunConfig(mode="adalora", shortcuts=False, train_file=str(tmp_path / "train.csv"),
                       dev_file=str(tmp_path / "dev.csv"), train_limit=32, max_steps=6, max_length=32,
                       batch_size=8, device="cpu", logging_steps=2)
    record = run_training(config, tmp_path / "run", progress=False)
    summary = record.summary()
    assert summary.status == "done", summary.error
    assert summary.adalora_schedule == {"total_step": 6, "tinit": 1, "tfinal": 3, "deltaT": 1, "orth_reg_weight": 0.1}

    # independent count: kept triplets are the non-zero singular values of the saved factors
    tensors = load_file(str(record.path / RunRecord.ADAPTERS / WEIGHTS_FILE))
    counted, kept_total = 0, 0
    for key, E in tensors.items():
        if key.endswith(".lora_E.default"):
            A, B = tensors[key.replace("lora_E", "lora_A")], tensors[key.replace("lora_E", "lora_B")]
            kept = int((E != 0).sum())
            assert E.shape == (32, 1)  # PEFT masks, it does not shrink
            counted += kept * (A.shape[1] + B.shape[0] + 1)
            kept_total += kept
    assert summary.trainable_params == counted == 24 * 12 * 769 == 221_472
    assert summary.adalora_initial_params == 32 * 12 * 769 == 295_296
    assert summary.head_params == 384 * 2 + 2

    # the allocation, under our module names, for the dashboard
    lines = record.reallocations()
    final = lines[-1]
    assert final.extra["final"] is True and final.step == 6 and summary.num_reallocations == len(lines)
    assert sum(final.ranks.values()) == kept_total == final.extra["budget"]
    assert set(final.ranks) == {f"layer.{l}.lora.{t}" for l in range(6) for t in ("q", "v")}
    assert all(final.scores[n] == pytest.approx(r / 32) for n, r in final.ranks.items())
    assert final.enabled == [n for n, r in final.ranks.items() if r > 0]
    budgets = [line.extra["budget"] for line in lines]
    assert budgets == sorted(budgets, reverse=True)  # pruning only shrinks the total

    loaded = load_run_for_inference(record.path)
    out = predict(loaded, "the cat is here", "a cat was there")
    assert out["label"] in (0, 1) and sum(out["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert sum(int((layer.lora_E["default"] != 0).sum()) for _, layer in adalora_layers(loaded.model)) == kept_total
    json.dumps(summary.to_dict())  # the record stays plain JSON
    assert json.loads((record.path / RunRecord.SUMMARY).read_text())["trainable_params"] == 221_472
