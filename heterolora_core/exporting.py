"""``python -m heterolora_core export``: a finished run's allocation for other tools.

* ``peft``: the enabled modules at their active ranks and the trained head as a PEFT adapter
  folder (:func:`heterolora_core.adapters.checkpoint.export_peft`); stock
  ``peft.PeftModel.from_pretrained(base, folder)`` computes the run's logits.
* ``json`` / ``axolotl``: the allocation alone as ``peft.LoraConfig`` keywords or an axolotl
  snippet (:mod:`heterolora_core.adapters.portable`), from a finished run or a recommendation.

Refused with one line (ValueError) before anything is written: an ``--out`` that exists, a run
without saved adapters (a recommendation has no weights: it exports as configuration only), a
method whose tensors are PEFT's own (adalora, eva), and an allocation PEFT cannot carry (an
enabled shortcut: the message names what would be lost).
"""
from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from heterolora_core.adapters.checkpoint import export_peft, load_checkpoint
from heterolora_core.adapters.families import attach
from heterolora_core.adapters.portable import (check_lora_config, lora_config_kwargs, peft_allocation, render,
                                               write_lora_config)
from heterolora_core.methods import registry
from heterolora_core.methods.base import AdapterMethod, search_space
from heterolora_core.records.record import RunRecord, readable_run
from heterolora_core.recommend import is_recommendation
from heterolora_core.tasks.registry import task_for
from heterolora_core.training.models import meta_classifier, resolve_model
from heterolora_core.training.run_config import RunConfig
from heterolora_core.vocab import CONFIG_FORMATS

EXPORT_FORMATS = ("peft", *CONFIG_FORMATS)


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "peft") -> Path:
    """Write run ``run_dir``'s allocation to the new path ``out`` in ``fmt``; returns ``out``."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} already exists; choose another --out")
    record, config = _readable_run(run_dir)
    if fmt == "peft":
        return _export_adapter(record, config, out)
    kwargs, reference, allocation = _allocation_kwargs(record, config)
    return write_lora_config(kwargs, reference, out, fmt, allocation)


def allocation_text(run_dir: str | Path, fmt: str) -> str:
    """The allocation of a run or recommendation as the text of ``fmt`` (json, axolotl), checked
    on the model as :func:`export_run` checks it (for a download)."""
    if fmt not in CONFIG_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(CONFIG_FORMATS)}")
    kwargs, reference, allocation = _allocation_kwargs(*_readable_run(run_dir))
    check_lora_config(kwargs, reference, allocation)
    return render(kwargs, fmt)


def adapter_archive(run_dir: str | Path) -> bytes:
    """The PEFT adapter folder of a finished run as the bytes of a zip file (for a download)."""
    with tempfile.TemporaryDirectory(prefix="heterolora-export-") as scratch:
        folder = export_run(run_dir, Path(scratch) / "adapter", "peft")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
        return buffer.getvalue()


def _allocation_kwargs(record: RunRecord, config: RunConfig):
    """(LoraConfig keywords, the architecture they were read from, the allocation) of a run."""
    structure = _structure(record, config)
    adapters = attach(structure, search_space(config))
    allocation = peft_allocation(adapters, run_ranks(record, config))
    reference = _structure(record, config)  # without our adapters: PEFT's view
    return lora_config_kwargs(allocation, reference, base_model_name_or_path=config.model), reference, allocation


def _structure(record: RunRecord, config: RunConfig):
    """The run's model on the meta device: its task's (a causal LM keeps its own head), with as many
    classes as the run trained (a custom task's may differ from the task's default)."""
    task = task_for(config)
    if task.num_labels(config) == 0:
        return task.meta_model(config)
    return meta_classifier(config.model, num_labels=record.raw_summary().num_labels or task.num_labels(config))


def _readable_run(run_dir: str | Path) -> tuple[RunRecord, RunConfig]:
    record, config = readable_run(run_dir)
    method = registry.find(config.mode)
    if method is None:
        raise ValueError(f"run {record.run_id} has an unknown mode {config.mode!r}")
    if not isinstance(registry.load(config.mode), AdapterMethod):
        raise ValueError(f"run {record.run_id} ({config.mode}) keeps PEFT's own tensors; export handles runs on "
                         f"HeteroLoRA's adapters (lora, static, dynamic, rank_*)")
    return record, config


def run_ranks(record: RunRecord, config: RunConfig) -> dict[str, int]:
    """Each enabled candidate's rank at the end of a run (its checkpoint), or of a recommendation
    (its one selection); candidates not named are off."""
    if (record.path / RunRecord.ADAPTERS).is_dir():
        checkpoint = load_checkpoint(record.path / RunRecord.ADAPTERS)
        enabled = checkpoint.enabled or []
        return {n: int((checkpoint.ranks or {}).get(n, config.rank)) for n in enabled}
    if is_recommendation(record):
        lines = record.reallocations()
        if not lines:
            raise ValueError(f"recommendation {record.run_id} holds no allocation (reallocations.jsonl is empty)")
        last = lines[-1]
        return {n: int((last.ranks or {}).get(n, config.rank)) for n in last.enabled}
    raise ValueError(f"run {record.run_id} has no saved adapters (status {record.summary().status})")


def _export_adapter(record: RunRecord, config: RunConfig, out: Path) -> Path:
    from heterolora_core.inference import load_run_for_inference

    if is_recommendation(record):
        raise ValueError(f"{record.run_id} is a recommendation: it has no trained weights; export it with "
                         f"--format json or axolotl")
    loaded = load_run_for_inference(record.path)
    return export_peft(loaded.model, loaded.model.heterolora, out, base_model_name_or_path=resolve_model(config.model))
