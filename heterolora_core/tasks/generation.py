"""Greedy generation of a completion with a (possibly adapted) causal LM."""
from __future__ import annotations

from typing import Any

import torch


def generate(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> dict[str, Any]:
    """``{"completion": text, "new_tokens": n}``: greedy decoding from ``prompt_ids``, at most
    ``max_new_tokens`` tokens, stopping at the tokenizer's EOS (not included in the text)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    new = out[0, len(prompt_ids):].tolist()
    if tokenizer.eos_token_id in new:
        new = new[:new.index(tokenizer.eos_token_id)]
    return {"completion": tokenizer.decode(new, skip_special_tokens=True), "new_tokens": len(new)}
