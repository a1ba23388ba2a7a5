"""Loading a finished run's adapters and head onto its base model, and predicting with it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runs import RunConfig, RunRecord


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    config: RunConfig
    label_names: list[str] | None
    is_regression: bool


def load_run_for_inference(run_dir: str | Path) -> LoadedRun:
    """Rebuild the run's model: base weights + adapters (same search space, enabled set as at the
    end of training) + trained head. ValueError with one line when the folder is not a finished run."""
    import torch
    from safetensors.torch import load_file

    from .adapters import head_module
    from .architectures import attach
    from .config import HeteroLoraConfig
    from .models import load_classifier, load_tokenizer
    from .training import ADAPTER_FILE

    record = RunRecord(run_dir)
    if not record.exists():
        raise ValueError(f"{run_dir} is not a run folder (no config.json)")
    weights = record.path / RunRecord.ADAPTERS / ADAPTER_FILE
    if not weights.is_file():
        raise ValueError(f"run {record.run_id} has no saved adapters (status {record.summary().get('status')})")
    config = RunConfig.from_dict(record.config())
    summary = record.raw_summary()
    num_labels = int(summary.get("num_labels", 2))
    is_regression = bool(summary.get("is_regression", False))
    model = load_classifier(config.model, num_labels, "regression" if is_regression else None)
    tensors = load_file(str(weights))
    if config.mode == "adalora":
        from .baselines import load_adalora_weights

        model = load_adalora_weights(model, config, tensors)
    else:
        adapters = attach(model, HeteroLoraConfig(rank=config.rank, alpha=config.alpha,
                                                  lora_targets=tuple(config.lora_targets), shortcuts=config.shortcuts))
        with torch.no_grad():
            for module in adapters.modules_in_order():
                module.lora_A.copy_(tensors[f"adapters.{module.name}.lora_A"])
                module.lora_B.copy_(tensors[f"adapters.{module.name}.lora_B"])
        adapters.set_enabled(json.loads((record.path / RunRecord.ADAPTERS / "enabled.json").read_text()))
    head = head_module(model)
    head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
    model.eval()
    return LoadedRun(model, load_tokenizer(config.model), config, summary.get("label_names"), is_regression)


def predict(loaded: LoadedRun, text: str, text_pair: str | None = None) -> dict[str, Any]:
    """``{"label": id, "label_name": name, "probabilities": [...]}``, or ``{"score": x}`` for regression."""
    import torch

    inputs = loaded.tokenizer(text, text_pair, truncation=True, max_length=loaded.config.max_length,
                              return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**inputs).logits[0].float()
    if loaded.is_regression:
        return {"score": float(logits[0])}
    probs = torch.softmax(logits, dim=-1)
    label = int(probs.argmax())
    name = loaded.label_names[label] if loaded.label_names and label < len(loaded.label_names) else str(label)
    return {"label": label, "label_name": name, "probabilities": [round(float(p), 6) for p in probs]}
