"""Export a LoRA-only selection as a standard PEFT adapter folder.

The folder holds ``adapter_config.json`` (written by PEFT's own ``LoraConfig``: ``target_modules``
lists exactly the enabled projections, ``rank_pattern`` / ``alpha_pattern`` give each one's rank
and alpha, the task head is in ``modules_to_save``) and ``adapter_model.safetensors`` with PEFT's
key layout (``base_model.model.<path>.lora_A.weight``, ``...lora_B.weight``, the head's weights),
so stock ``peft.PeftModel.from_pretrained(base_model, folder)`` reproduces the adapted model.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .adapters import LORA, AdapterSet, head_module

_PREFIX = "base_model.model."


def export_peft(model: nn.Module, adapters: AdapterSet, out_dir: str | Path,
                base_model_name_or_path: str | None = None) -> Path:
    """Write the enabled LoRA modules and the head of ``model`` as a PEFT adapter in ``out_dir``.

    Raises ValueError when an enabled shortcut is in the selection (PEFT has no such module) or
    when nothing LoRA is enabled.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    enabled = [adapters.module(n) for n in adapters.enabled()]
    shortcuts = [m.name for m in enabled if m.group != LORA]
    if shortcuts:
        raise ValueError(f"PEFT has no shortcut modules; disable {', '.join(shortcuts)} to export")
    if not enabled:
        raise ValueError("no LoRA module is enabled: nothing to export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [m.target_path for m in enabled]
    alphas = {m.target_path: m.scaling * m.rank for m in enabled}
    head = head_module(model)
    head_name = next((name for name, mod in model.named_modules() if mod is head), None) if head is not None else None
    config = LoraConfig(
        r=enabled[0].rank, lora_alpha=alphas[paths[0]], lora_dropout=adapters.config.dropout,
        target_modules=paths, rank_pattern={m.target_path: m.rank for m in enabled}, alpha_pattern=alphas,
        modules_to_save=[head_name] if head_name else None, base_model_name_or_path=base_model_name_or_path)
    config.save_pretrained(str(out))
    tensors = {}
    for m in enabled:
        tensors[f"{_PREFIX}{m.target_path}.lora_A.weight"] = m.lora_A.detach().cpu().contiguous()
        tensors[f"{_PREFIX}{m.target_path}.lora_B.weight"] = m.lora_B.detach().cpu().contiguous()
    if head is not None:
        for key, value in head.state_dict().items():
            tensors[f"{_PREFIX}{head_name}.{key}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out
