"""Shared helpers of the training / CLI / worker tests: where GLUE lives, how to run
``python -m heterolora_core``, a tiny BERT saved to a folder, and waiting for a condition."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_glue() -> Path | None:
    """$GLUE_DIR, else <repo>/../shared/glue; None when neither holds MRPC."""
    for candidate in (os.environ.get("GLUE_DIR"), REPO.parent / "shared" / "glue"):
        if candidate and (Path(candidate) / "MRPC" / "train.tsv").is_file():
            return Path(candidate).resolve()
    return None


GLUE = find_glue()
needs_glue = pytest.mark.skipif(GLUE is None, reason="no GLUE_DIR and no ../shared/glue with MRPC")


def cli_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: GLUE_DIR, a private HETEROLORA_HOME, the hub offline
    (no test may reach the network). The packages are installed (``pip install -e .``), so the
    subprocess imports them without any path set here."""
    env = dict(os.environ)
    if GLUE is not None:
        env["GLUE_DIR"] = str(GLUE)
    if home is not None:
        env["HETEROLORA_HOME"] = str(home)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m heterolora_core ARGS`` in the repository root, output captured as text."""
    return subprocess.run([sys.executable, "-m", "heterolora_core", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def save_tiny_bert(folder: Path, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A random tiny BERT with the embedded model's tokenizer (vocab 30522), as a model folder
    that ``--model`` accepts. Trains in well under a second per step."""
    import torch
    import transformers as tf

    from heterolora_core.training.models import embedded_model_path

    torch.manual_seed(seed)
    config = tf.BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                           intermediate_size=2 * hidden, max_position_embeddings=128)
    tf.BertForSequenceClassification(config).save_pretrained(folder)
    source = embedded_model_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder


def read_jsonl_strict(path: Path) -> list[dict]:
    """Every line of a JSON-lines file parsed; only a last line without its newline (torn by a
    kill mid-write) may fail to parse, and is left out."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            torn_tail = i == len(lines) - 1 and not text.endswith("\n")
            assert torn_tail, f"{path}: line {i + 1} is not JSON: {line[:80]!r}"
    return rows


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05):
    """``predicate()``'s first truthy value, polled every ``poll`` s; AssertionError naming ``what``
    after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def save_tiny_llama(folder: Path, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A random tiny Llama classifier (grouped-query attention: 4 query heads, 2 key/value heads)
    with the embedded model's tokenizer, as a model folder that ``--model`` accepts."""
    import torch
    import transformers as tf

    from heterolora_core.training.models import embedded_model_path

    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128,
                            pad_token_id=0)
    tf.LlamaForSequenceClassification(config).save_pretrained(folder)
    source = embedded_model_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder
