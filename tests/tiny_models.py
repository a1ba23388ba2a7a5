"""Tiny random models of every supported family, built in-process from config classes."""
from __future__ import annotations

import torch
import transformers as tf

FAMILY_KINDS = ("bert", "roberta", "opt_post", "opt_pre", "llama", "qwen2", "mistral")


def tiny_model(kind: str, layers: int = 3, hidden: int = 32, num_labels: int = 2, seed: int = 0):
    """A randomly initialised sequence classifier (eval mode) of ``kind``; vocab of 100 tokens."""
    torch.manual_seed(seed)
    common = dict(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=2 * hidden, num_labels=num_labels, pad_token_id=0)
    if kind == "bert":
        config = tf.BertConfig(**common)
    elif kind == "roberta":
        config = tf.RobertaConfig(**common, max_position_embeddings=64)
    elif kind in ("opt_post", "opt_pre"):
        config = tf.OPTConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                              ffn_dim=2 * hidden, word_embed_proj_dim=hidden, do_layer_norm_before=(kind == "opt_pre"),
                              num_labels=num_labels, pad_token_id=1, dropout=0.1, max_position_embeddings=64)
    elif kind == "llama":
        config = tf.LlamaConfig(**common, num_key_value_heads=2)
    elif kind == "qwen2":
        config = tf.Qwen2Config(**common, num_key_value_heads=2)
    elif kind == "mistral":
        config = tf.MistralConfig(**common, num_key_value_heads=2)
    else:
        raise ValueError(kind)
    return tf.AutoModelForSequenceClassification.from_config(config).eval()


def random_batches(n: int, batch_size: int = 4, seq_len: int = 9, num_labels: int = 2, seed: int = 1):
    """``n`` synthetic batches with ``labels``; the last two positions of each row are padding."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(2, 100, (batch_size, seq_len), generator=gen)
        mask = torch.ones_like(ids)
        mask[:, -2:] = 0
        # pad with each family's pad ids is irrelevant: padded positions are masked
        labels = torch.randint(0, num_labels, (batch_size,), generator=gen)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches
