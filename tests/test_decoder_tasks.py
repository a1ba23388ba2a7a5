"""Causal-LM tasks on tiny random decoders (Llama, Qwen2), in-process: the completion-only loss
against a hand computation, the chat template, choice scoring, GLUE from label words, the proxies'
gradients, the PEFT round trip (:mod:`heterolora_core.tasks`)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from heterolora_core import HeteroLoraConfig, attach
from heterolora_core.adapters.checkpoint import export_peft
from heterolora_core.search.proxies import compute_scores
from heterolora_core.tasks.glue_prompts import GLUE_PROMPTS, glue_instruction
from heterolora_core.tasks.instructions import (IGNORE_INDEX, CausalCollator, InstructionExample, encode, parse_row,
                                                prompt_ids)
from heterolora_core.tasks.lm_scoring import EvalRows, lm_metrics, row_log_likelihoods
from heterolora_core.training.data import DataError, Example
from heterolora_core.training.metrics import compute_metrics
from heterolora_core.vocab import higher_is_better
from tiny_decoders import CHAT_TEMPLATE, tiny_causal_lm, tiny_tokenizer

ROWS = [
    {"prompt": "what color is the sky ?", "completion": " blue"},
    {"messages": [{"role": "system", "content": "say one word"}, {"role": "user", "content": "what color is grass ?"},
                  {"role": "assistant", "content": "green"}]},
    {"prompt": "translate to french : cat", "completion": " chat !"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _hand_loss(logits: torch.Tensor, rows: list[dict], starts: list[int]) -> torch.Tensor:
    """-mean over completion tokens t (t >= the row's prompt length, t < its length) of log p(id_t | <t)."""
    terms = []
    for b, (row, start) in enumerate(zip(rows, starts)):
        logp = torch.log_softmax(logits[b].double(), dim=-1)
        for t in range(start, len(row["input_ids"])):
            terms.append(-logp[t - 1, row["input_ids"][t]])
    return torch.stack(terms).mean()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_the_loss_is_the_mean_over_completion_tokens_only(kind, tokenizer):
    examples = [parse_row(r, f"t:{i}") for i, r in enumerate(ROWS, 1)]
    rows = [encode(e, tokenizer, 64) for e in examples]
    starts = [len(prompt_ids(e, tokenizer)) for e in examples]
    assert starts[0] == 6 and len(rows[0]["input_ids"]) == 8  # "what color is the sky ?" then " blue", EOS
    batch = CausalCollator(tokenizer.pad_token_id)(rows)
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows)  # rows 0 and 2 padded
    model = tiny_causal_lm(kind)
    with torch.no_grad():
        out = model(**batch)
    expected = _hand_loss(out.logits, rows, starts)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the same loss over every real token differs: the mask is what makes the test able to fail
    everything = _hand_loss(out.logits, rows, [1, 1, 1])
    assert abs(everything.item() - expected.item()) > 1e-3


def test_labels_mask_the_prompt_and_keep_the_eos(tokenizer):
    row = encode(parse_row(ROWS[0], "t:1"), tokenizer, 64)
    blue, eos = tokenizer.convert_tokens_to_ids("blue"), tokenizer.eos_token_id
    assert row["labels"] == [IGNORE_INDEX] * 6 + [blue, eos]


def test_the_chat_template_is_applied_and_every_assistant_turn_is_a_target(tokenizer):
    messages = [{"role": "user", "content": "say hello"}, {"role": "assistant", "content": "hello world"},
                {"role": "user", "content": "say one"}, {"role": "assistant", "content": "one"}]
    row = encode(parse_row({"messages": messages}, "t:1"), tokenizer, 64)
    templated = tokenizer.apply_chat_template(messages, tokenize=True)
    templated = templated["input_ids"] if isinstance(templated, dict) or hasattr(templated, "keys") else templated
    assert row["input_ids"] == list(templated)
    targets = [tokenizer.convert_ids_to_tokens(t) for t in row["labels"] if t != IGNORE_INDEX]
    assert targets == ["hello", "world", "<|im_end|>", "one", "<|im_end|>"]


def test_a_prompt_longer_than_max_length_is_refused_with_its_line(tokenizer):
    example = parse_row({"prompt": "the cat sat on the mat", "completion": " yes"}, "data.jsonl:7")
    with pytest.raises(DataError, match=r"^data\.jsonl:7: the prompt is 6 tokens, so no completion token fits in max-length 6$"):
        encode(example, tokenizer, 6)
    assert encode(example, tokenizer, 7)["labels"][-1] == tokenizer.convert_tokens_to_ids("yes")  # EOS cut


@pytest.mark.parametrize("row, reason", [
    ({"prompt": "a"}, "row has a prompt but no completion"),
    ({"prompt": "a", "completion": "  "}, "the completion is empty"),
    ({"text": "a", "label": 1}, 'expected "prompt" and "completion", or "messages"'),
    ({"messages": [{"role": "user", "content": "a"}]}, "the last message must be the assistant's"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "message 0 has role 'robot'"),
    ({"prompt": "a", "completion": "b", "choices": ["c", "d"]}, "the completion 'b' is not one of the choices"),
    ({"prompt": "a", "completion": "b", "choices": ["b"]}, "choices must be a list of two or more"),
])
def test_bad_rows_name_their_line(row, reason):
    with pytest.raises(DataError) as err:
        parse_row(row, "f.jsonl:3")
    assert str(err.value).startswith("f.jsonl:3: ") and reason in str(err.value)


def test_choice_accuracy_and_completion_loss_are_hand_counts():
    rows = EvalRows()
    examples = [InstructionExample((("user", "q"), ("assistant", "b")), False, ("a", "b", "c"), 1),
                InstructionExample((("user", "q"), ("assistant", "a")), False, ("a", "b"), 0),
                InstructionExample((("user", "q"), ("assistant", "c")), False, ("a", "b", "c"), 2),
                InstructionExample((("user", "q"), ("assistant", "x")), False)]  # no choices
    for ex in examples:  # rows by hand: no tokenizer needed for the bookkeeping
        rows.splits.append("dev") if not rows.splits else None
        i = len(rows.answers)
        rows.answers[("dev", i)] = ex.answer
        rows.has_choices[("dev", i)] = ex.choices is not None
        for j, _ in enumerate(ex.candidates()):
            rows.rows.append({})
            rows.split.append("dev"), rows.example.append(i), rows.candidate.append(j)
            rows.is_answer.append(j == ex.answer)
    # (ll, n) per row: example 0 picks b (right), 1 picks b (wrong), 2 picks a (wrong); 3 has one row
    scores = np.array([[-3, 1], [-1, 1], [-2, 1], [-5, 2], [-4, 2], [-1, 1], [-2, 1], [-9, 3], [-6, 3]], float)
    metrics = lm_metrics(scores, rows)
    assert metrics["choice_accuracy"] == pytest.approx(1 / 3)
    true_ll, true_n = -1 - 5 - 9 - 6, 1 + 2 + 3 + 3
    assert metrics["completion_loss"] == pytest.approx(-true_ll / true_n)
    assert metrics["perplexity"] == pytest.approx(math.exp(-true_ll / true_n))
    assert not higher_is_better("eval_perplexity") and not higher_is_better("completion_loss")
    assert higher_is_better("eval_choice_accuracy") and higher_is_better("accuracy")


def test_row_log_likelihoods_sum_the_target_tokens(tokenizer):
    examples = [parse_row(r, f"t:{i}") for i, r in enumerate(ROWS, 1)]
    rows = [encode(e, tokenizer, 64) for e in examples]
    batch = CausalCollator(tokenizer.pad_token_id)(rows)
    model = tiny_causal_lm("llama")
    with torch.no_grad():
        logits = model(**batch).logits
    got = row_log_likelihoods(logits, batch["labels"])
    for b, (row, ex) in enumerate(zip(rows, examples)):
        start = len(prompt_ids(ex, tokenizer))
        logp = torch.log_softmax(logits[b].double(), -1)
        ll = sum(logp[t - 1, row["input_ids"][t]].item() for t in range(start, len(row["input_ids"])))
        assert got[b, 0].item() == pytest.approx(ll, rel=1e-5)
        assert got[b, 1].item() == len(row["input_ids"]) - start


def test_glue_as_instructions_scores_the_glue_metric_from_label_words(tokenizer):
    data = [Example("the cat sat on the mat", "a cat sat on a mat", 1), Example("the sky is blue", "grass is green", 0),
            Example("the dog sat", "the dog sat", 1), Example("hello world", "one two three", 0),
            Example("red sun", "blue sky", 1)]
    examples = [glue_instruction("mrpc", e, chat=True) for e in data]
    assert examples[0].turns[0][1].startswith(GLUE_PROMPTS["mrpc"].instruction)
    assert examples[0].choices == ("no", "yes") and examples[0].answer == 1
    rows = EvalRows()
    rows.add("dev", examples, tokenizer, 64)
    batch = CausalCollator(tokenizer.pad_token_id)(rows.rows)
    model = tiny_causal_lm("qwen2", seed=3)
    with torch.no_grad():
        logits = model(**batch).logits
    scores = row_log_likelihoods(logits, batch["labels"]).numpy()
    metrics = lm_metrics(scores, rows, lambda p, r: compute_metrics("mrpc", p, r))
    # by hand: each example's prediction is the label word whose answer row is more likely
    predictions = [int(scores[2 * i + 1, 0] > scores[2 * i, 0]) for i in range(len(data))]
    references = [e.label for e in data]
    assert metrics["accuracy"] == pytest.approx(np.mean(np.array(predictions) == np.array(references)))
    assert metrics["f1"] == pytest.approx(compute_metrics("mrpc", predictions, references)["f1"])
    assert metrics["choice_accuracy"] == metrics["accuracy"]


def _completion_only_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    return -(logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask).sum() / mask.sum()


def _all_token_loss(model, batch):
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    return _completion_only_loss(model, {**batch, "labels": labels})


@pytest.mark.parametrize("proxy", ["grad_norm", "fisher"])
def test_proxies_score_from_the_completion_tokens_gradients(proxy, tokenizer):
    rows = [encode(parse_row(r, f"t:{i}"), tokenizer, 64) for i, r in enumerate(ROWS, 1)]
    batch = CausalCollator(tokenizer.pad_token_id)(rows)

    def scores(loss_fn=None):
        model = tiny_causal_lm("llama", seed=1)
        adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=("q", "v", "ffn_out"), shortcuts=True,
                                                  init_seed=0))
        kwargs = {"loss_fn": loss_fn} if loss_fn else {}
        return compute_scores(proxy, model, adapters, batches=[batch], scoring="exact", seed=0, **kwargs)

    ours, hand, everything = scores(), scores(_completion_only_loss), scores(_all_token_loss)
    assert set(ours) == set(hand) and len(ours) == 2 * 3 + 4 * 2 - 1
    for name in ours:
        assert ours[name] == pytest.approx(hand[name], rel=1e-4, abs=1e-12)
    assert any(abs(ours[n] - everything[n]) > 1e-3 * max(abs(ours[n]), 1e-12) for n in ours)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_peft_round_trip_of_a_causal_lm_gives_the_same_logits(kind, tmp_path, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    tiny_causal_lm(kind, layers=3).save_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    adapters = attach(model, HeteroLoraConfig(rank=4, lora_targets=("q", "v", "ffn_gate", "ffn_out"), shortcuts=False))
    torch.manual_seed(0)
    for module in adapters.modules_in_order():
        torch.nn.init.normal_(module.lora_B, std=0.2)
    adapters.set_enabled(["layer.0.lora.v", "layer.1.lora.ffn_gate", "layer.2.lora.q", "layer.2.lora.ffn_out"])
    batch = CausalCollator(tokenizer.pad_token_id)([encode(parse_row(r, "t:1"), tokenizer, 64) for r in ROWS])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        ours = model(**inputs).logits
    out = export_peft(model, adapters, tmp_path / "peft", base_model_name_or_path=str(base))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and not config["modules_to_save"]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base).eval(), out).eval()
    assert type(peft_model).__name__ == "PeftModelForCausalLM"
    with torch.no_grad():
        theirs = peft_model(**inputs).logits
        plain = AutoModelForCausalLM.from_pretrained(base).eval()(**inputs).logits
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert (ours - plain).abs().max().item() > 1e-3  # the adapters change the model: the check can fail


def test_a_tokenizer_without_a_chat_template_takes_prompt_completion_rows_only():
    plain = tiny_tokenizer(chat_template=False)
    with pytest.raises(DataError, match="need a tokenizer with a chat template"):
        encode(parse_row(ROWS[1], "f.jsonl:2"), plain, 64)
    assert encode(parse_row(ROWS[0], "f.jsonl:1"), plain, 64)["labels"][-2] == plain.convert_tokens_to_ids("blue")
    assert CHAT_TEMPLATE.startswith("{% for m in messages %}")


def test_several_dev_splits_get_their_own_keys(tokenizer):
    rows = EvalRows()
    one = [glue_instruction("mnli", Example("the cat sat", "a cat sat", 0), chat=True)]
    two = [glue_instruction("mnli", Example("the dog sat", "a cat sat", 2), chat=True)] * 2
    rows.add("dev_matched", one, tokenizer, 64)
    rows.add("dev_mismatched", two, tokenizer, 64)
    assert len(rows.rows) == 3 * 3  # three label words per example
    # matched: "yes" (label 0) most likely -> right; mismatched: "maybe" most likely -> both wrong
    scores = np.array([[-1, 1], [-2, 1], [-3, 1]] + [[-3, 1], [-1, 1], [-2, 1]] * 2, float)
    metrics = lm_metrics(scores, rows, lambda p, r: compute_metrics("mnli", p, r))
    assert metrics["dev_matched_accuracy"] == 1.0 and metrics["dev_mismatched_accuracy"] == 0.0
    assert metrics["dev_mismatched_completion_loss"] == pytest.approx(2.0)  # the true rows: "no", -2 each


def test_every_glue_classification_task_has_instructions_with_one_word_per_label(tokenizer):
    from heterolora_core.tasks import LM_GLUE_TASKS, check_objective
    from heterolora_core.training.data import TASKS

    assert set(LM_GLUE_TASKS) == set(GLUE_PROMPTS) == set(TASKS) - {"stsb"}
    for task in LM_GLUE_TASKS:
        words = GLUE_PROMPTS[task].label_words
        assert len(words) == TASKS[task].num_labels and len(set(words)) == len(words)
        pair = "b" if GLUE_PROMPTS[task].second else None
        example = glue_instruction(task, Example("a", pair, len(words) - 1), chat=False)
        assert example.choices == tuple(" " + w for w in words) and example.turns[0][1].endswith("Answer:")
        check_objective(task, "lm")
    with pytest.raises(ValueError, match="task stsb is regression"):
        check_objective("stsb", "lm")


# -- uploads (the Launch page's SFT files) ---------------------------------------------------------


def test_an_uploaded_sft_file_is_checked_then_kept_once_under_the_home(tmp_path):
    from heterolora_core.tasks.instructions import UPLOADS_DIR, read_sft_file, save_sft_upload

    content = b'{"prompt": "2+2=", "completion": " 4"}\n\n{"messages": [{"role": "user", "content": "hi"}, ' \
              b'{"role": "assistant", "content": "hello"}]}\n'
    path, rows = save_sft_upload("my train.jsonl", content, tmp_path)
    assert rows == 2 and path.parent == tmp_path / UPLOADS_DIR and path.name.endswith("-my_train.jsonl")
    assert path.read_bytes() == content and len(read_sft_file(path)) == 2
    again, _ = save_sft_upload("my train.jsonl", content, tmp_path)
    assert again == path and len(list((tmp_path / UPLOADS_DIR).iterdir())) == 1  # same content: one file
    hostile, _ = save_sft_upload("../../../etc/x.jsonl", content, tmp_path)
    assert hostile.parent == tmp_path / UPLOADS_DIR  # a path in the name is dropped


@pytest.mark.parametrize("name, content, message", [
    ("t.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "no completion"}\n', "t.jsonl:2:"),
    ("t.jsonl", b'{"prompt": "a", "completion": "b"}\nnot json\n', "t.jsonl:2: not valid JSON"),
    ("t.csv", b'{"prompt": "a", "completion": "b"}\n', "must be JSON lines"),
    ("t.jsonl", b"\xff\xfe\x00garbage", "not UTF-8"),
    ("t.jsonl", b"\n\n", "has no rows"),
])
def test_a_bad_upload_is_one_line_and_writes_nothing(tmp_path, name, content, message):
    from heterolora_core.tasks.instructions import save_sft_upload

    with pytest.raises(DataError, match=message) as info:
        save_sft_upload(name, content, tmp_path)
    assert "\n" not in str(info.value) and not (tmp_path / "uploads").exists()


def test_an_upload_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from heterolora_core.tasks import instructions

    monkeypatch.setattr(instructions, "MAX_SFT_UPLOAD_BYTES", 10)
    with pytest.raises(DataError, match="uploads are at most"):
        instructions.save_sft_upload("t.jsonl", b'{"prompt": "a", "completion": "b"}\n', tmp_path)
    assert not (tmp_path / "uploads").exists()


def test_an_upload_never_follows_a_planted_link_out_of_the_home(tmp_path):
    from heterolora_core.tasks.instructions import save_sft_upload

    home, outside = tmp_path / "home", tmp_path / "outside"
    home.mkdir(), outside.mkdir()
    (home / "uploads").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="link or lies outside the data home"):
        save_sft_upload("t.jsonl", b'{"prompt": "a", "completion": "b"}\n', home)
    assert list(outside.iterdir()) == []
