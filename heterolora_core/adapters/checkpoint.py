"""Checkpoints: a finished run's trained tensors on disk, and the export to a stock PEFT adapter.

A run's checkpoint folder (``<run>/adapters/``) holds

    adapters.safetensors   the method's tensors (HeteroLoRA: ``adapters.<module>.lora_A`` / ``lora_B``
                           for every candidate; AdaLoRA: ``peft.<parameter name>``) and the task head
                           (``head.<key>``)
    enabled.json           the enabled set at the end of training (HeteroLoRA and uniform LoRA)
    ranks.json             every candidate's rank at the end (heterogeneous-rank runs only)

:func:`export_peft` writes a LoRA-only selection as a PEFT adapter folder: ``adapter_config.json``
(written by PEFT's own ``LoraConfig``: ``target_modules`` lists exactly the enabled projections,
``rank_pattern`` / ``alpha_pattern`` give each one's rank and alpha, the task head is in
``modules_to_save``) and ``adapter_model.safetensors`` with PEFT's key layout
(``base_model.model.<path>.lora_A.weight``, ``...lora_B.weight``, the head's weights), so stock
``peft.PeftModel.from_pretrained(base_model, folder)`` reproduces the adapted model. A causal LM
(``--objective lm``: no task head) exports with ``task_type`` CAUSAL_LM.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from heterolora_core.adapters.modules import AdapterSet, head_module
from heterolora_core.adapters.portable import check_lora_config, lora_config_kwargs, peft_allocation

WEIGHTS_FILE = "adapters.safetensors"
ENABLED_FILE = "enabled.json"
RANKS_FILE = "ranks.json"
HEAD_PREFIX = "head."
ADAPTER_PREFIX = "adapters."
_PEFT_PREFIX = "base_model.model."


@dataclass
class Checkpoint:
    """What :func:`save_checkpoint` wrote: the method's tensors, the head's, the enabled set."""

    tensors: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    enabled: list[str] | None
    ranks: dict[str, int] | None = None


def save_checkpoint(folder: str | Path, model: nn.Module, tensors: dict[str, torch.Tensor],
                    enabled: list[str] | None = None, ranks: dict[str, int] | None = None) -> Path:
    """Write ``tensors`` (keys carry the method's prefix) and the head of ``model`` to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    head = head_module(model)
    if head is not None:
        out.update({HEAD_PREFIX + key: value.detach().cpu().contiguous() for key, value in head.state_dict().items()})
    save_file(out, str(folder / WEIGHTS_FILE))
    if enabled is not None:
        (folder / ENABLED_FILE).write_text(json.dumps(list(enabled)))
    if ranks is not None:
        (folder / RANKS_FILE).write_text(json.dumps(dict(ranks)))
    return folder


def load_checkpoint(folder: str | Path) -> Checkpoint:
    """Read a checkpoint folder; ValueError with one line when it is missing or unreadable."""
    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"no saved adapters in {folder}")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # a truncated or foreign file: safetensors raises its own error types
        raise ValueError(f"cannot read {weights}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    enabled = None
    if (folder / ENABLED_FILE).is_file():
        try:
            enabled = json.loads((folder / ENABLED_FILE).read_text())
        except ValueError:
            raise ValueError(f"{folder / ENABLED_FILE} is not valid JSON") from None
        if not isinstance(enabled, list) or not all(isinstance(n, str) for n in enabled):
            raise ValueError(f"{folder / ENABLED_FILE} must hold a list of module names")
    head = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    own = {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIX)}
    return Checkpoint(own, head, enabled, _read_ranks(folder))


def _read_ranks(folder: Path) -> dict[str, int] | None:
    path = folder / RANKS_FILE
    if not path.is_file():
        return None
    try:
        ranks = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is not valid JSON") from None
    if not isinstance(ranks, dict) or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks.values()):
        raise ValueError(f"{path} must map module names to whole-number ranks")
    return ranks


def check_head(model: nn.Module, checkpoint: Checkpoint) -> None:
    """ValueError with one line when the saved head does not fit ``model``'s (a tensor missing,
    extra or of another shape: a record whose ``num_labels`` does not match its saved head).
    ``model`` may live on the meta device: only shapes are compared."""
    head = head_module(model)
    if head is None:
        return
    wanted = head.state_dict()
    for key, value in wanted.items():
        saved = checkpoint.head.get(key)
        if saved is None:
            raise ValueError(f"the run's saved head lacks {key}")
        if tuple(saved.shape) != tuple(value.shape):
            raise ValueError(f"the run's saved head does not fit its model: head.{key} has shape {tuple(saved.shape)}, "
                             f"the model's is {tuple(value.shape)} (num_labels in summary.json changed?)")
    extra = sorted(set(checkpoint.head) - set(wanted))
    if extra:
        raise ValueError(f"the run's saved head has {extra[0]}, which its model lacks")


def load_head(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Copy the saved head into ``model``'s (:func:`check_head` first)."""
    check_head(model, checkpoint)
    head = head_module(model)
    if head is not None:
        head.load_state_dict(checkpoint.head)


def adapter_tensors(adapters: AdapterSet) -> dict[str, torch.Tensor]:
    """Every candidate's factors, keyed ``adapters.<module>.lora_A`` / ``.lora_B``."""
    out = {}
    for module in adapters.modules_in_order():
        out[f"{ADAPTER_PREFIX}{module.name}.lora_A"] = module.lora_A
        out[f"{ADAPTER_PREFIX}{module.name}.lora_B"] = module.lora_B
    return out


def load_adapter_tensors(adapters: AdapterSet, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved factors into ``adapters``; ValueError naming the first missing or misshapen one."""
    with torch.no_grad():
        for key, param in adapter_tensors(adapters).items():
            saved = tensors.get(key)
            if saved is None:
                raise ValueError(f"the run's saved adapters lack {key}")
            if tuple(saved.shape) != tuple(param.shape):
                raise ValueError(f"{key} has shape {tuple(saved.shape)}, expected {tuple(param.shape)}")
            param.copy_(saved)


def export_peft(model: nn.Module, adapters: AdapterSet, out_dir: str | Path,
                base_model_name_or_path: str | None = None) -> Path:
    """Write the enabled LoRA modules (each at its active rank: ``rank_pattern`` / ``alpha_pattern``,
    keyed and checked as :mod:`heterolora_core.adapters.portable` describes) and the head of
    ``model`` as a PEFT adapter in ``out_dir``.

    Raises ValueError when an enabled shortcut is in the selection (PEFT has no such module) or
    when nothing LoRA is enabled.
    """
    from peft import LoraConfig  # PEFT pulls in transformers: only for an export

    allocation = peft_allocation(adapters)
    kwargs = lora_config_kwargs(allocation, model, base_model_name_or_path)
    check_lora_config(kwargs, model, allocation)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    LoraConfig(**kwargs).save_pretrained(str(out))
    tensors = {}
    for path, r in allocation.ranks.items():  # the active components only: a rank-r_i module exports as rank r_i
        m = adapters.module(allocation.candidates[path])
        tensors[f"{_PEFT_PREFIX}{path}.lora_A.weight"] = m.lora_A.detach()[:r].cpu().contiguous()
        tensors[f"{_PEFT_PREFIX}{path}.lora_B.weight"] = m.lora_B.detach()[:, :r].cpu().contiguous()
    head = head_module(model)
    if head is not None:
        for key, value in head.state_dict().items():
            tensors[f"{_PEFT_PREFIX}{kwargs['modules_to_save'][0]}.{key}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out
