"""Tiny causal LMs (Llama, Qwen2) with a tiny word-level tokenizer and a chat template, built offline.

The tokenizer splits on whitespace and punctuation (``tokenizers``' ``Whitespace`` pre-tokenizer),
knows the special tokens ``<|im_start|>``, ``<|im_end|>`` (also EOS) and ``[PAD]``, and maps words
outside :data:`WORDS` to ``[UNK]``; its chat template is ChatML. Token boundaries therefore fall on
whitespace, punctuation and special tokens, so tokenising a rendered conversation piece by piece
gives the same ids as tokenising it whole.
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

SPECIALS = ["[PAD]", "[UNK]", "<|im_start|>", "<|im_end|>"]
WORDS = ("user assistant system yes no maybe positive negative answer sentence question premise hypothesis "
         "the a cat dog sat on mat red blue green is what color sky grass sun say hello world one two three "
         "translate to french chat chien do these mean same thing 1 2 : ? . , !").split()
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
VOCAB_SIZE = 96


def tiny_tokenizer(chat_template: bool = True) -> tf.PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(WORDS)))}
    assert len(vocab) <= VOCAB_SIZE
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                           eos_token="<|im_end|>", bos_token="<|im_start|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_causal_lm(kind: str = "llama", layers: int = 2, hidden: int = 32, seed: int = 0, positions: int = 64):
    """A random tiny causal LM of ``kind`` (llama or qwen2), eval mode, ``positions`` positions; weights drawn
    wider than transformers' default (std 0.2, not 0.02) so that its next-token distributions are
    far from uniform and per-token losses differ."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=positions,
                  pad_token_id=0, eos_token_id=3, bos_token_id=2, tie_word_embeddings=True,
                  initializer_range=0.2)
    config = tf.LlamaConfig(**common) if kind == "llama" else tf.Qwen2Config(**common)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def save_tiny_decoder(folder: Path, kind: str = "llama", chat_template: bool = True, **kwargs) -> Path:
    """A tiny causal LM and its tokenizer saved as a model folder that ``--model`` accepts."""
    tiny_causal_lm(kind, **kwargs).save_pretrained(folder)
    tiny_tokenizer(chat_template).save_pretrained(folder)
    return folder
