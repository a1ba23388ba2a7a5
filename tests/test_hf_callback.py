"""HeteroLoraCallback: the engine's search inside a user's own Trainer / SFTTrainer."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import Trainer, TrainingArguments

from cli_helpers import save_tiny_bert
from heterolora_core import HeteroLoraCallback
from heterolora_core.records.record import RunRecord, Status
from heterolora_core.records.store import RunStore
from heterolora_core.search.reallocator import ReallocationSchedule
from heterolora_core.training.models import embedded_model_path, load_classifier
from heterolora_core.training.run_config import RunConfig
from heterolora_core.tasks.registry import task_for
from heterolora_core.training.trainer import run_training


def write_rows(path, n: int = 64) -> str:
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    rows = [{"text": f"the film was {words[i % 6]} and {words[(i * 5) % 6]} number {i}", "label": i % 2}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


SEARCH = dict(mode="dynamic", proxy="grad_norm", rank=4, enable_ratio=0.25, realloc_every=0.25, seed=3,
              score_window=2, lora_targets=["q", "v"], shortcuts=True)


def selections(record: RunRecord) -> list[tuple[int, list[str]]]:
    return [(line.step, line.enabled) for line in record.reallocations()]


@pytest.mark.slow
@pytest.mark.parametrize("mode, steps", [("dynamic", [0, 2, 4, 6, 8, 10, 12, 14]), ("static", [0])])
def test_a_plain_trainer_with_the_callback_selects_what_our_trainer_selects(home, tmp_path, mode, steps):
    """Dynamic: scored from the training steps' gradients (8 steps an epoch, every 1/4); static:
    from extra batches of the Trainer's own data, drawn as our trainer draws them."""
    search = {**SEARCH, "mode": mode}
    model_dir = save_tiny_bert(tmp_path / "bert", layers=2)
    data = write_rows(tmp_path / "train.jsonl")
    config = RunConfig(model=str(model_dir), train_file=data, dev_file=data, epochs=2, batch_size=8, max_length=16,
                       device="cpu", dev_limit=8, eval_every=10_000, **search).normalised()  # no evaluation mid-run
    ours = run_training(config, home / "runs" / "ours", progress=False)

    # the user's script: their model, data and TrainingArguments; the callback in five lines
    inputs = task_for(config).prepare(config)  # the same rows in the same order
    torch.manual_seed(config.seed)
    model = load_classifier(str(model_dir), 2)
    cb = HeteroLoraCallback(model, out=home / "runs" / "callback", **search)
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), learning_rate=config.lr, weight_decay=0.01,
                             lr_scheduler_type="constant", per_device_train_batch_size=8, num_train_epochs=2,
                             seed=3, data_seed=3, use_cpu=True, report_to=[], save_strategy="no", logging_steps=4,
                             remove_unused_columns=False, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=inputs.train_rows, data_collator=inputs.collator,
            callbacks=[cb]).train()

    theirs = RunRecord(home / "runs" / "callback")
    assert [step for step, _ in selections(theirs)] == steps
    assert selections(theirs) == selections(ours)
    for a, b in zip(theirs.reallocations(), ours.reallocations()):
        assert a.scores == pytest.approx(b.scores, rel=1e-4)
    listed = {row.run_id: row for row in RunStore(home).list_runs()}
    row = listed["callback"]
    assert row.summary.status == Status.DONE and row.summary.num_reallocations == len(steps)
    assert row.summary.trainable_params == ours.summary().trainable_params
    assert row.config.mode == mode and theirs.config()["source"] == "callback"
    assert (theirs.path / "adapters" / "adapters.safetensors").is_file()
    assert any("loss" in line for line in theirs.metrics())


def test_settings_are_checked_like_a_launch(tmp_path, home):
    model = load_classifier(str(save_tiny_bert(tmp_path / "bert", layers=1)), 2)
    bad = [({"mode": "dynamc"}, "unknown mode"), ({"enable_ratio": 1.5}, "enable ratio"),
           ({"lr": 1e-3}, "TrainingArguments"), ({"realloc_evry": 0.2}, "unknown setting"),
           ({"mode": "adalora", "shortcuts": False}, "PEFT's own modules"),
           ({"export": tmp_path / "x"}, "shortcuts=False")]
    for settings, message in bad:
        with pytest.raises(ValueError, match=message):
            HeteroLoraCallback(model, out=tmp_path / "never", **settings)
    assert not (tmp_path / "never").exists() and not hasattr(model, "heterolora")


def _sft_dataset(n: int):
    from datasets import Dataset

    words = ["alpha", "beta", "gamma", "delta"]
    return Dataset.from_dict({"prompt": [f"say {words[i % 4]} {i}" for i in range(n)],
                              "completion": [f" {words[(i + 1) % 4]} {words[(i + 2) % 4]}" for i in range(n)]})


def tiny_llama_lm(folder):
    """A random tiny Llama language model (GQA: v is 32 -> 16) saved to ``folder``, and the
    embedded model's tokenizer (its [SEP] as end of sequence)."""
    import transformers as tf

    tokenizer = tf.AutoTokenizer.from_pretrained(embedded_model_path())
    tokenizer.eos_token = "[SEP]"
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id)
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    return tokenizer


def sft_scores(folder, tokenizer, out, batch_size: int, accumulation: int, checkpointing: bool):
    """Every reallocation's (step, scores) of a one-epoch dynamic search in SFTTrainer."""
    import transformers as tf
    from trl import SFTConfig, SFTTrainer

    model = tf.LlamaForCausalLM.from_pretrained(folder)
    cb = HeteroLoraCallback(model, out=out, mode="dynamic", rank=4, lora_targets=["q", "v"], shortcuts=False,
                            realloc_every=0.5, score_window=1, seed=1)
    args = SFTConfig(output_dir=str(out) + "-trainer", per_device_train_batch_size=batch_size,
                     gradient_accumulation_steps=accumulation, gradient_checkpointing=checkpointing, num_train_epochs=1,
                     max_length=32, learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True,
                     disable_tqdm=True, seed=1, bf16=False)
    SFTTrainer(model=model, args=args, train_dataset=_sft_dataset(16), processing_class=tokenizer,
               callbacks=[cb]).train()
    return [(line.step, line.scores) for line in RunRecord(out).reallocations()]


@pytest.mark.slow
def test_accumulated_micro_batches_score_as_one_batch(home, tmp_path):
    """Batch 2 x 2 accumulation steps scores as batch 4 does (one window per optimizer step), and
    gradient checkpointing (TRL's default) changes nothing."""
    tokenizer = tiny_llama_lm(tmp_path / "llama")
    whole = sft_scores(tmp_path / "llama", tokenizer, home / "runs" / "b4", 4, 1, False)
    accumulated = sft_scores(tmp_path / "llama", tokenizer, home / "runs" / "b2x2", 2, 2, False)
    checkpointed = sft_scores(tmp_path / "llama", tokenizer, home / "runs" / "b2x2-gc", 2, 2, True)
    assert [step for step, _ in whole] == [0, 2]  # 4 optimizer steps, every half epoch
    for (s1, a), (s2, b), (s3, c) in zip(whole, accumulated, checkpointed):
        assert s1 == s2 == s3 and a == pytest.approx(b, rel=1e-4) and a == pytest.approx(c, rel=1e-4)


@pytest.mark.slow
def test_sft_trainer_on_a_tiny_llama_with_gradient_accumulation(home, tmp_path):
    import transformers as tf
    from peft import PeftModel
    from trl import SFTConfig, SFTTrainer

    tokenizer = tiny_llama_lm(tmp_path / "llama")
    model = tf.LlamaForCausalLM.from_pretrained(tmp_path / "llama")
    cb = HeteroLoraCallback(model, out=home / "runs" / "sft", export=tmp_path / "peft", mode="rank_dynamic",
                            budget_params=2 * 2 * (64 + 48), rank=4, lora_targets=["q", "v"], shortcuts=False,
                            realloc_every=0.5, score_window=1, seed=1)
    args = SFTConfig(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                     num_train_epochs=2, max_length=32, learning_rate=1e-3, report_to=[], save_strategy="no",
                     logging_steps=1, use_cpu=True, disable_tqdm=True, seed=1, bf16=False)  # exact logits below
    trainer = SFTTrainer(model=model, args=args, train_dataset=_sft_dataset(16), processing_class=tokenizer,
                         callbacks=[cb])
    trainer.train()

    record = RunRecord(home / "runs" / "sft")
    # 16 rows, batch 2: 8 micro-batches, 4 optimizer steps an epoch; every half epoch: 2, 4, 6 (+ step 0)
    assert trainer.state.global_step == 8
    assert ReallocationSchedule(4, 8, 0.5).steps() == [2, 4, 6]
    assert [line.step for line in record.reallocations()] == [0, 2, 4, 6]
    for line in record.reallocations():  # every allocation spends the budget exactly
        assert sum(r * (64 if n.endswith(".q") else 48) for n, r in line.ranks.items()) == 448
    assert {r.run_id for r in RunStore(home).list_runs()} >= {"sft"}
    assert record.summary().status == Status.DONE and record.summary().trainable_params == 448
    # the export at the end loads in stock PEFT with the trained model's logits
    inputs = tokenizer(["say alpha 3"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        ours = model(**inputs).logits
        fresh = tf.LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
        theirs = PeftModel.from_pretrained(fresh, tmp_path / "peft").eval()(**inputs).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_uniform_lora_runs_under_the_callback_and_partitioned_weights_are_refused(home, tmp_path):
    from types import SimpleNamespace

    from heterolora_core.training.hf_callback import _refuse_partitioned_weights

    model_dir = save_tiny_bert(tmp_path / "bert", layers=1)
    data = write_rows(tmp_path / "train.jsonl", n=16)
    small = RunConfig(model=str(model_dir), train_file=data, dev_file=data, max_length=16).normalised()
    inputs = task_for(small).prepare(small)
    model = load_classifier(str(model_dir), 2)
    cb = HeteroLoraCallback(model, out=home / "runs" / "uniform", mode="lora", rank=2, shortcuts=False)
    args = TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=8, max_steps=2, use_cpu=True,
                             report_to=[], save_strategy="no", remove_unused_columns=False, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=inputs.train_rows, data_collator=inputs.collator, callbacks=[cb]).train()
    summary = RunRecord(home / "runs" / "uniform").summary()
    assert cb.history == [] and summary.status == Status.DONE
    assert summary.trainable_params == 2 * 2 * (32 + 32)  # q and v of one layer at rank 2
    with pytest.raises(ValueError, match="does not support FSDP"):
        _refuse_partitioned_weights(SimpleNamespace(fsdp="full_shard"))
