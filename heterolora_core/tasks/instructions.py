"""Instruction examples: SFT rows as users write them, rendered into token ids with a loss mask.

SFT files (``--task sft --train-file T.jsonl --dev-file D.jsonl``) are JSON lines, one object per
line, in either of the two shapes instruction data comes in (TRL's "standard" and "conversational"
formats)::

    {"prompt": "Translate to French: cat", "completion": " chat"}
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}

plus an optional ``"choices": ["A", "B", ...]`` (two or more distinct strings, the completion, or
the last assistant message, among them) for multiple-choice accuracy: each choice is scored by its
summed log-likelihood as the completion, the most likely one is the prediction (the way
lm-evaluation-harness scores multiple choice, its ``acc``).

Rendering (:func:`render`), into segments of text that are either prompt (no loss) or target
(the loss counts their tokens):

* prompt/completion rows: the prompt, then the completion followed by the tokenizer's EOS token
  (so the model learns to stop), as plain text: no chat template, as TRL does for this format;
* messages rows: the tokenizer's chat template. Every assistant message is a target (the template's
  own end-of-turn tokens included), everything else is prompt. Segments come from rendering the
  conversation's prefixes: ``template(messages[:i], add_generation_prompt=True)`` ends where
  assistant message i starts, ``template(messages[:i+1])`` where it ends.

Token ids are the concatenation of each segment's tokens (no special tokens added, except that a
plain row starts with what the tokenizer adds, e.g. Llama's BOS): the prompt tokens are exactly the
tokens that ``predict`` feeds the model before generating. ``labels`` are the ids at target tokens
and -100 elsewhere (Hugging Face's causal-LM loss shifts them by one and ignores -100), padding
included (:class:`CausalCollator`). A row is cut to ``max_length`` tokens from the end; a prompt
that leaves no completion token within ``max_length`` is refused (``file:line: reason``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from heterolora_core.training.data import DataError

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
SFT_EXTENSIONS = (".jsonl", ".json")
#: The largest SFT file read (the rows are held in memory, tokenised, twice: train and check).
MAX_SFT_FILE_BYTES = 512 * 2**20
#: The largest SFT file the dashboard accepts as an upload (larger files: give their path).
MAX_SFT_UPLOAD_BYTES = 64 * 2**20
#: Where uploaded SFT files are kept, under the data home.
UPLOADS_DIR = "uploads"


@dataclass(frozen=True)
class InstructionExample:
    """One instruction example.

    ``turns`` are (role, content) pairs ending with the assistant's answer; ``chat`` says whether
    they render with the chat template (messages rows, GLUE prompts on a tokenizer with a template)
    or as plain prompt + completion text (then ``turns`` is (user prompt, assistant completion)).
    ``choices``: the candidate answers (None: only the answer itself), ``answer`` the index of the
    true one among them. ``where`` names the source (``file:line``) in error messages.
    """

    turns: tuple[tuple[str, str], ...]
    chat: bool
    choices: tuple[str, ...] | None = None
    answer: int = 0
    where: str = ""

    def candidates(self) -> tuple[str, ...]:
        """The answers to score: the choices, or the answer alone."""
        return self.choices if self.choices is not None else (self.turns[-1][1],)

    def with_answer(self, text: str) -> "InstructionExample":
        """The same conversation with ``text`` as its final assistant message."""
        return InstructionExample(self.turns[:-1] + (("assistant", text),), self.chat, None, 0, self.where)

    @property
    def prompt_turns(self) -> tuple[tuple[str, str], ...]:
        return self.turns[:-1]


# ----------------------------------------------------------------------------------------------
# Reading SFT files
# ----------------------------------------------------------------------------------------------

def read_sft_file(path: str | Path) -> list[InstructionExample]:
    """Every row of an SFT JSON-lines file; DataError ``file:line: reason`` for the first bad row."""
    path = Path(path)
    _check_extension(path.name, str(path))
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.stat().st_size > MAX_SFT_FILE_BYTES:
        raise DataError(f"{path} is {path.stat().st_size / 2**20:,.0f} MiB; SFT files are read whole, "
                        f"at most {MAX_SFT_FILE_BYTES // 2**20} MiB")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return parse_sft_lines(fh, str(path))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (undecodable byte at offset {exc.start})") from None


def parse_sft_lines(lines: Iterable[str], source: str) -> list[InstructionExample]:
    """The examples of an SFT file's lines (blank lines skipped); DataError ``source:line: reason``
    for the first bad row, or when there is none."""
    examples = [parse_row(_json_object(line, source, line_no), f"{source}:{line_no}")
                for line_no, line in enumerate(lines, start=1) if line.strip()]
    if not examples:
        raise DataError(f"{source} has no rows")
    return examples


def _check_extension(name: str, source: str) -> None:
    suffix = Path(name).suffix.lower()
    if suffix not in SFT_EXTENSIONS:
        raise DataError(f"{source}: SFT data must be JSON lines ({', '.join(SFT_EXTENSIONS)}), "
                        f"got {suffix or 'no extension'!r}")


def save_sft_upload(name: str, content: bytes, home: str | Path) -> tuple[Path, int]:
    """An uploaded SFT file (the dashboard's), checked row by row before anything is written, then
    kept as ``<home>/uploads/<sha256[:16]>-<name>``: the same content uploaded twice is one file,
    and a run's config can name it like any other path. Returns (path, rows).

    DataError, one line, for a name that is not ``.jsonl`` / ``.json``, a file over
    :data:`MAX_SFT_UPLOAD_BYTES`, text that is not UTF-8, or a bad row (``name:line: reason``);
    nothing is written then. The file is written to a temporary name and renamed into place."""
    shown = Path(str(name)).name or "upload"
    _check_extension(shown, shown)
    if len(content) > MAX_SFT_UPLOAD_BYTES:
        raise DataError(f"{shown} is {len(content) / 2**20:,.1f} MiB; uploads are at most "
                        f"{MAX_SFT_UPLOAD_BYTES // 2**20} MiB (give a larger file's path instead)")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{shown} is not UTF-8 text (undecodable byte at offset {exc.start})") from None
    rows = len(parse_sft_lines(text.splitlines(), shown))
    from heterolora_core.records.home import inside

    folder = Path(home) / UPLOADS_DIR
    if folder.is_symlink() or not inside(folder, home):  # a planted link would write outside the home
        raise DataError(f"{folder} is a link or lies outside the data home; remove it to upload files")
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", shown)[-80:]
    target = folder / f"{hashlib.sha256(content).hexdigest()[:16]}-{safe}"
    if not target.is_file():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target, rows


def looks_like_sft_row(row: dict[str, Any]) -> bool:
    """True for a row in one of the SFT shapes (used to refuse SFT files given to a classifier)."""
    return "messages" in row or ("prompt" in row and "completion" in row)


def _json_object(line: str, path: Path | str, line_no: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise DataError(f"{path}:{line_no}: not valid JSON ({exc}); expected one JSON object per line") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{line_no}: expected a JSON object per line, got {type(obj).__name__}")
    return obj


def parse_row(row: dict[str, Any], where: str) -> InstructionExample:
    """One SFT row as an example; DataError ``where: reason`` when it is not one of the shapes."""
    if "messages" in row:
        turns = _messages(row["messages"], where)
        chat = True
    elif "prompt" in row:
        if "completion" not in row:
            raise DataError(f"{where}: row has a prompt but no completion")
        prompt, completion = row["prompt"], row["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise DataError(f"{where}: prompt and completion must be strings")
        if not completion.strip():
            raise DataError(f"{where}: the completion is empty")
        turns, chat = (("user", prompt), ("assistant", completion)), False
    else:
        raise DataError(f"{where}: expected \"prompt\" and \"completion\", or \"messages\" (found: "
                        f"{', '.join(map(str, row)) or 'no keys'})")
    choices, answer = _choices(row.get("choices"), turns[-1][1], where)
    return InstructionExample(turns, chat, choices, answer, where)


def _messages(messages: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of {{\"role\", \"content\"}} objects")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {i} must be an object with a string content")
        if message.get("role") not in ROLES:
            raise DataError(f"{where}: message {i} has role {message.get('role')!r}; use {', '.join(ROLES)}")
        turns.append((message["role"], message["content"]))
    if turns[-1][0] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's (the completion to learn)")
    if not turns[-1][1].strip():
        raise DataError(f"{where}: the last assistant message is empty")
    return tuple(turns)


def _choices(choices: Any, answer: str, where: str) -> tuple[tuple[str, ...] | None, int]:
    if choices is None:
        return None, 0
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{where}: choices must be a list of two or more non-empty strings")
    if len(set(choices)) != len(choices):
        raise DataError(f"{where}: choices must be distinct")
    if answer not in choices:
        raise DataError(f"{where}: the completion {answer[:40]!r} is not one of the choices")
    return tuple(choices), choices.index(answer)


# ----------------------------------------------------------------------------------------------
# Rendering into token ids and labels
# ----------------------------------------------------------------------------------------------

def render(example: InstructionExample, tokenizer) -> list[tuple[str, bool]]:
    """(text, is_target) segments of ``example`` (module docstring)."""
    if not example.chat:
        (_, prompt), (_, completion) = example.turns
        return [(prompt, False), (completion + (tokenizer.eos_token or ""), True)]
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{example.where or 'a messages row'}: messages rows need a tokenizer with a chat "
                        f"template, and this model's tokenizer has none (use prompt/completion rows)")
    segments, done = [], ""
    for i, (role, _) in enumerate(example.turns):
        if role != "assistant":
            continue
        start = _template(tokenizer, example.turns[:i], generation_prompt=True)
        end = _template(tokenizer, example.turns[:i + 1], generation_prompt=False)
        if not (start.startswith(done) and end.startswith(start)):
            raise DataError(f"{example.where or 'a conversation'}: the chat template does not render the "
                            f"conversation one turn after another; cannot tell which tokens are the assistant's")
        segments += [(start[len(done):], False), (end[len(start):], True)]
        done = end
    return segments


def _template(tokenizer, turns, generation_prompt: bool) -> str:
    messages = [{"role": role, "content": content} for role, content in turns]
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def prompt_ids(example: InstructionExample, tokenizer) -> list[int]:
    """The token ids a model sees before the final answer (what generation starts from)."""
    segments = render(example, tokenizer)
    ids, _ = _encode(segments[:-1], tokenizer, plain=not example.chat)
    return ids


def encode(example: InstructionExample, tokenizer, max_length: int, cut_prompt: bool = False) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` of ``example`` cut to ``max_length`` tokens from the end.
    A prompt that leaves no target token within ``max_length`` is a DataError, or with
    ``cut_prompt`` (GLUE as instructions, whose long sentence pairs are data, not mistakes) loses
    its first tokens so that the prompt's end and the whole answer fit."""
    ids, target = _encode(render(example, tokenizer), tokenizer, plain=not example.chat)
    first_target = next((i for i, t in enumerate(target) if t), None)
    if first_target is None:
        raise DataError(f"{example.where or 'an example'}: the completion has no tokens")
    if cut_prompt and len(ids) > max_length:
        drop = min(len(ids) - max_length, max(0, first_target - 1))  # keep at least one prompt token
        ids, target, first_target = ids[drop:], target[drop:], first_target - drop
    if first_target >= max_length:
        raise DataError(f"{example.where or 'an example'}: the prompt is {first_target} tokens, so no completion "
                        f"token fits in max-length {max_length}")
    ids, target = ids[:max_length], target[:max_length]
    return {"input_ids": ids, "labels": [t if keep else IGNORE_INDEX for t, keep in zip(ids, target)]}


def _encode(segments: Sequence[tuple[str, bool]], tokenizer, plain: bool) -> tuple[list[int], list[bool]]:
    ids: list[int] = []
    target: list[bool] = []
    for i, (text, is_target) in enumerate(segments):
        piece = tokenizer(text, add_special_tokens=plain and i == 0)["input_ids"]
        ids += piece
        target += [is_target] * len(piece)
    return ids, target


class CausalCollator:
    """Pads ``encode`` rows to the batch's longest: ``input_ids`` with the pad id, ``labels`` with
    -100, ``attention_mask`` 1 on real tokens (right padding; causal attention never looks right)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
