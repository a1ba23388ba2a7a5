"""Task data: the nine GLUE tasks and users' own files, as plain examples, then tokenised features.

Where the data comes from (first match wins)::

    train_file / dev_file   the user's CSV or JSON-lines files (format below); they make the task
                            "custom" whatever task id comes with them, as RunConfig normalisation does
    glue_dir argument       a folder in the GLUE distribution layout (what download_glue_data.py writes)
    $GLUE_DIR               the same, from the conventional environment variable
    neither                 ``datasets.load_dataset("nyu-mll/glue", task)`` (needs the hub or its cache)

GLUE distribution layout: ``<GLUE_DIR>/<folder>/{train,dev}.tsv`` (MNLI: ``dev_matched.tsv`` and
``dev_mismatched.tsv``), tab-separated with no quoting (the sentences hold unbalanced quote
characters), UTF-8, MRPC with a byte-order mark. Every file has a header row except CoLA's train/dev
files, whose four columns are ``source, label, original-label-mark, sentence``. Columns read, by task:

    task  folder  text column(s)                label column  labels in the file
    cola  CoLA    sentence (4th, no header)     label (2nd)   0 / 1
    sst2  SST-2   sentence                      label         0 / 1
    mrpc  MRPC    #1 String, #2 String          Quality       0 / 1
    stsb  STS-B   sentence1, sentence2          score         float 0..5 (regression)
    qqp   QQP     question1, question2          is_duplicate  0 / 1 (malformed rows skipped, with a warning)
    mnli  MNLI    sentence1, sentence2          gold_label    entailment / neutral / contradiction
    qnli  QNLI    question, sentence            label         entailment / not_entailment
    rte   RTE     sentence1, sentence2          label         entailment / not_entailment
    wnli  WNLI    sentence1, sentence2          label         0 / 1

Label ids follow the Hugging Face ``glue`` dataset, so a model trained from either source is the same
model: named labels take their position in ``TaskSpec.file_labels`` (entailment=0, ...).

Users' own data (task ``"custom"``): ``train_file`` and ``dev_file``, each ``.csv`` (header row, standard
CSV quoting) or ``.jsonl`` / ``.json`` (JSON lines: one object per line), with columns ``text``,
optionally ``text_pair`` (then in both files), and ``label``. The label kind is read off the values of
both files together:

* any label that is not a number      -> class names; sorted unique names get ids 0..K-1
* numbers, all integer-valued (1, "1", 1.0) -> class ids as written; they must be >= 0, K = max + 1
* numbers, at least one non-integer   -> regression (float labels, ``num_labels == 1``)

Every bad-input condition raises ``DataError`` with a one-line message. ``check_task_source`` makes the
cheap checks (task id, paths, extensions, header columns) so a caller can fail fast before loading a
model; ``load_task`` repeats them and then reads everything.

Tokenisers without a pad token (Llama-family ones often lack one): the training code calls
``ensure_pad_token(tokenizer)`` and sets ``model.config.pad_token_id = tokenizer.pad_token_id``.

Imports nothing heavy at module level: the dashboard reads ``TASKS`` without loading transformers.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

HUB_DATASET = "nyu-mll/glue"
CUSTOM_TASK = "custom"
CUSTOM_EXTENSIONS = (".csv", ".jsonl", ".json")
TEXT_COL, PAIR_COL, LABEL_COL = "text", "text_pair", "label"
#: Most classes a classification task may have (the head is hidden x classes; a record's
#: ``num_labels`` is bounded by it too).
MAX_CLASSES = 10_000
#: Longest text (characters) a data row may hold: the longest input a run can ask for is
#: 131,072 tokens (``max_length``), a few characters each; longer text never reaches a tokenizer.
MAX_TEXT_CHARS = 1_000_000
#: Longest line of a JSON-lines data file (characters: two texts of MAX_TEXT_CHARS, escaped, and a label).
MAX_DATA_LINE_CHARS = 16 * MAX_TEXT_CHARS


class DataError(ValueError):
    """Bad input data or data source; the message is one line that names the culprit."""


@contextmanager
def _reading(path: Path) -> Iterator[Any]:
    """``path`` opened as UTF-8 text (a byte-order mark is skipped); undecodable bytes, NUL bytes
    and other CSV errors become a DataError that names the file."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            yield fh
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (undecodable byte at offset {exc.start}); "
                        f"expected a CSV, TSV or JSON-lines file") from None
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable as a table ({exc})") from None


@dataclass(frozen=True)
class TaskSpec:
    """How one GLUE task is laid out on disk and on the hub, and how it is scored.

    ``columns`` names the columns of a file without a header row (CoLA); files with a header are
    read by column name. ``file_labels`` are the label strings as the files write them, in id order;
    None for regression. ``label_names`` are the Hugging Face ``glue`` class names, in id order.
    ``metric`` is the headline metric key (see ``metrics.py``).
    """

    id: str
    glue_folder: str
    text_cols: tuple[str, ...]
    label_col: str
    file_labels: tuple[str, ...] | None
    label_names: tuple[str, ...] | None
    metric: str
    hub_text_cols: tuple[str, ...]
    train_file: str = "train.tsv"
    dev_files: dict[str, str] = field(default_factory=lambda: {"dev": "dev.tsv"})  # primary first
    header: bool = True
    columns: tuple[str, ...] | None = None
    skip_malformed: bool = False  # QQP's original release has a few broken rows; elsewhere they are errors

    @property
    def is_regression(self) -> bool:
        return self.file_labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.file_labels is None else len(self.file_labels)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    spec.id: spec
    for spec in (
        TaskSpec("cola", "CoLA", ("sentence",), "label", _BINARY, ("unacceptable", "acceptable"),
                 "matthews_correlation", ("sentence",),
                 header=False, columns=("source", "label", "label_mark", "sentence")),
        TaskSpec("sst2", "SST-2", ("sentence",), "label", _BINARY, ("negative", "positive"),
                 "accuracy", ("sentence",)),
        TaskSpec("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", _BINARY,
                 ("not_equivalent", "equivalent"), "accuracy", ("sentence1", "sentence2")),
        TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, None,
                 "pearson", ("sentence1", "sentence2")),
        TaskSpec("qqp", "QQP", ("question1", "question2"), "is_duplicate", _BINARY,
                 ("not_duplicate", "duplicate"), "accuracy", ("question1", "question2"),
                 skip_malformed=True),
        TaskSpec("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label",
                 ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"),
                 "accuracy", ("premise", "hypothesis"),
                 dev_files={"dev_matched": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"}),
        TaskSpec("qnli", "QNLI", ("question", "sentence"), "label", _NLI2, _NLI2,
                 "accuracy", ("question", "sentence")),
        TaskSpec("rte", "RTE", ("sentence1", "sentence2"), "label", _NLI2, _NLI2,
                 "accuracy", ("sentence1", "sentence2")),
        TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), "label", _BINARY,
                 ("not_entailment", "entailment"), "accuracy", ("sentence1", "sentence2")),
    )
}
TASK_IDS = tuple(TASKS) + (CUSTOM_TASK,)


@dataclass
class Example:
    """One labelled example; ``text_pair`` is None for single-sentence tasks."""

    text: str
    text_pair: str | None
    label: int | float


@dataclass
class TaskData:
    """A task's examples. ``dev`` maps split name to examples, primary split first (MNLI:
    ``dev_matched``, then ``dev_mismatched``; every other task: ``dev``). ``num_labels`` is 1 for
    regression. ``metric`` is the headline metric key."""

    task: str
    train: list[Example]
    dev: dict[str, list[Example]]
    num_labels: int
    label_names: list[str] | None
    is_regression: bool
    metric: str

    @property
    def primary_split(self) -> str:
        return next(iter(self.dev))


# ---------------------------------------------------------------------------------------------
# Source checks
# ---------------------------------------------------------------------------------------------


def resolve_glue_dir(glue_dir: str | os.PathLike | None = None) -> Path | None:
    """The GLUE folder to read: ``glue_dir``, else ``$GLUE_DIR``, else None (load from the hub)."""
    chosen = glue_dir if glue_dir not in (None, "") else os.environ.get("GLUE_DIR") or None
    return Path(chosen).expanduser() if chosen is not None else None


def check_task_source(task: str, glue_dir: str | os.PathLike | None = None,
                      train_file: str | os.PathLike | None = None,
                      dev_file: str | os.PathLike | None = None) -> None:
    """Fail fast, before a run record exists: raise ``DataError`` on an unknown task id, a GLUE
    folder without the task's files or columns (the first line of each file is read), ``custom``
    without both user files, or a user file that is missing, has an unsupported extension, is not
    UTF-8 text, lacks the ``text`` / ``label`` columns or has a bad row anywhere (user files are
    read whole: a bad line 2 is reported with its file and line number now, not mid-run). User
    files imply ``custom`` (see the module docstring). Without a GLUE folder the task must load from
    the hub: :func:`check_hub_source` verifies that it can."""
    if task not in TASK_IDS:
        raise DataError(f"unknown task {task!r}; valid ids: {', '.join(TASK_IDS)}")
    if train_file or dev_file or task == CUSTOM_TASK:
        if not (train_file and dev_file):
            raise DataError("task 'custom' (users' own data) needs both train_file and dev_file")
        train_cols = _user_file_columns(Path(train_file))
        dev_cols = _user_file_columns(Path(dev_file))
        if (PAIR_COL in train_cols) != (PAIR_COL in dev_cols):
            raise DataError(f"column {PAIR_COL!r} must be in both train_file and dev_file or in neither "
                            f"({train_file}, {dev_file})")
        _load_user_files(Path(train_file), Path(dev_file))
        return
    root = resolve_glue_dir(glue_dir)
    if root is None:
        check_hub_source(TASKS[task])
        return
    spec = TASKS[task]
    if not root.is_dir():
        raise DataError(f"GLUE_DIR {root} is not a folder")
    folder = root / spec.glue_folder
    if not folder.is_dir():
        raise DataError(f"GLUE_DIR {root} has no {spec.glue_folder} folder for task {task!r} "
                        f"(missing {folder})")
    for name in (spec.train_file, *spec.dev_files.values()):
        _glue_columns(folder / name, spec)


HUB_CHECK_SECONDS = 5.0
_HUB_REACHED: set[str] = set()  # tasks whose hub check passed in this process (it stays reachable)


def _hub_cache_has(spec: TaskSpec) -> bool:
    """Whether ``datasets`` has the task's hub copy in its local cache (no import of ``datasets``)."""
    root = os.environ.get("HF_DATASETS_CACHE") or Path(os.environ.get("HF_HOME") or "~/.cache/huggingface") / "datasets"
    folder = Path(root).expanduser() / HUB_DATASET.replace("/", "___") / spec.id
    try:
        return folder.is_dir() and any(folder.iterdir())
    except OSError:
        return False


def check_hub_source(spec: TaskSpec) -> None:
    """Without ``GLUE_DIR`` a GLUE task loads from the hub's ``glue`` dataset: raise ``DataError``,
    before anything is queued, unless it is in the local cache or the hub answers within
    :data:`HUB_CHECK_SECONDS` (offline, an unqueued launch beats a run that fails later)."""
    if spec.id in _HUB_REACHED or _hub_cache_has(spec):
        return
    offline = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    reason = "the Hugging Face hub is switched off (HF_HUB_OFFLINE)" if offline else None
    if reason is None:
        try:
            import huggingface_hub

            huggingface_hub.HfApi().dataset_info(HUB_DATASET, timeout=HUB_CHECK_SECONDS)
            _HUB_REACHED.add(spec.id)
        except Exception as exc:  # no network, DNS, a proxy, the hub down: all mean "no data from there"
            reason = f"the Hugging Face hub cannot be reached ({type(exc).__name__})"
    if reason is not None:
        raise DataError(f"no data for GLUE task {spec.id!r}: GLUE_DIR is not set and {reason}; point GLUE_DIR at "
                        "a folder of GLUE tasks (e.g. GLUE_DIR=../shared/glue) before starting the dashboard or "
                        "the command, or train on your own files (task custom)")


def _glue_columns(path: Path, spec: TaskSpec) -> list[str]:
    """The column names of a GLUE file (its header, or ``spec.columns``), checked against the spec."""
    if not path.is_file():
        raise DataError(f"missing GLUE file {path} for task {spec.id!r}")
    with _reading(path) as fh:
        first = next(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), None)
    if first is None:
        raise DataError(f"{path} is empty")
    if not spec.header:
        if len(first) != len(spec.columns):
            raise DataError(f"{path}: first row has {len(first)} columns, expected {len(spec.columns)} "
                            f"({', '.join(spec.columns)}; no header row)")
        return list(spec.columns)
    missing = [c for c in (*spec.text_cols, spec.label_col) if c not in first]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(first)})")
    return first


def _user_file_columns(path: Path) -> list[str]:
    """The column names of a user CSV (header) or JSON-lines file (first object's keys), checked."""
    if path.suffix.lower() not in CUSTOM_EXTENSIONS:
        raise DataError(f"{path}: unsupported extension {path.suffix or '(none)'!r}; "
                        f"use {', '.join(CUSTOM_EXTENSIONS)}")
    if not path.is_file():  # never opened: a FIFO would block the reader
        raise DataError(f"data file {path} " + ("is a directory" if path.is_dir() else
                                                "is not a regular file" if path.exists() else "does not exist"))
    with _reading(path) as fh:
        if path.suffix.lower() == ".csv":
            columns = next(csv.reader(fh), None)
        else:
            first = next(((i, ln) for i, ln in _json_lines(fh, path) if ln.strip()), None)
            columns = list(_json_object(first[1], path, first[0])) if first is not None else None
    if not columns:
        raise DataError(f"{path} is empty")
    missing = [c for c in (TEXT_COL, LABEL_COL) if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns)}); "
                        f"expected {TEXT_COL}, optional {PAIR_COL}, {LABEL_COL}")
    return columns


def _json_lines(fh, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a JSON-lines file; DataError at a line longer than
    :data:`MAX_DATA_LINE_CHARS` characters, before it is read whole."""
    line_no = 0
    while line := fh.readline(MAX_DATA_LINE_CHARS + 1):
        line_no += 1
        if len(line) > MAX_DATA_LINE_CHARS:
            raise DataError(f"{path}:{line_no}: line longer than {MAX_DATA_LINE_CHARS:,} characters; "
                            f"a text may have at most {MAX_TEXT_CHARS:,}")
        yield line_no, line


def _json_object(line: str, path: Path, line_no: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise DataError(f"{path}:{line_no}: not valid JSON ({exc}); expected JSON lines, "
                        f"one object per line") from None
    except RecursionError:
        raise DataError(f"{path}:{line_no}: JSON nested too deeply; expected one flat object per line") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{line_no}: expected a JSON object per line, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_task(task: str = "mrpc", glue_dir: str | os.PathLike | None = None,
              train_file: str | os.PathLike | None = None,
              dev_file: str | os.PathLike | None = None) -> TaskData:
    """Read a task's train and dev examples from the source chosen as the module docstring says
    (empty-string paths count as not given)."""
    check_task_source(task, glue_dir, train_file, dev_file)
    if train_file or dev_file or task == CUSTOM_TASK:
        return _load_user_files(Path(train_file), Path(dev_file))
    spec = TASKS[task]
    root = resolve_glue_dir(glue_dir)
    if root is None:
        train, dev = _load_from_hub(spec)
    else:
        folder = root / spec.glue_folder
        train = _read_glue_tsv(folder / spec.train_file, spec)
        dev = {split: _read_glue_tsv(folder / name, spec) for split, name in spec.dev_files.items()}
    return TaskData(task=task, train=train, dev=dev, num_labels=spec.num_labels,
                    label_names=list(spec.label_names) if spec.label_names else None,
                    is_regression=spec.is_regression, metric=spec.metric)


def _read_glue_tsv(path: Path, spec: TaskSpec) -> list[Example]:
    """All labelled rows of one GLUE train/dev file; blank lines are ignored."""
    columns = _glue_columns(path, spec)
    text_idx = [columns.index(c) for c in spec.text_cols]
    label_idx = columns.index(spec.label_col)
    label_ids = None if spec.file_labels is None else {s: i for i, s in enumerate(spec.file_labels)}
    examples: list[Example] = []
    skipped = 0
    with _reading(path) as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        if spec.header:
            next(reader)
        for row in reader:
            if not row:
                continue
            if len(row) != len(columns):
                if spec.skip_malformed:
                    skipped += 1
                    continue
                raise DataError(f"{path}:{reader.line_num}: {len(row)} columns, expected {len(columns)}")
            raw = row[label_idx]
            if label_ids is None:
                label: int | float = _float_label(raw, path, reader.line_num)
            elif raw in label_ids:
                label = label_ids[raw]
            else:
                raise DataError(f"{path}:{reader.line_num}: label {raw!r} is not one of "
                                f"{', '.join(spec.file_labels)}")
            pair = row[text_idx[1]] if len(text_idx) > 1 else None
            examples.append(Example(row[text_idx[0]], pair, label))
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} malformed row(s) without {len(columns)} columns")
    return examples


def _float_label(raw: str, path: Path, line_no: int) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{path}:{line_no}: label {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{line_no}: label {raw!r} is not finite")
    return value


def _load_from_hub(spec: TaskSpec) -> tuple[list[Example], dict[str, list[Example]]]:
    """Train and dev examples from the hub's ``glue`` dataset, whose labels are already ids."""
    import datasets

    try:
        dsd = datasets.load_dataset(HUB_DATASET, spec.id)
    except Exception as exc:  # offline, no cache, hub error: all mean "no data here", and say why
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"could not load {HUB_DATASET}/{spec.id} from the Hugging Face hub "
                        f"({type(exc).__name__}: {reason}); set GLUE_DIR to a local GLUE folder") from exc

    def examples(split: str) -> list[Example]:
        ds = dsd[split]
        texts = ds[spec.hub_text_cols[0]]
        pairs = ds[spec.hub_text_cols[1]] if len(spec.hub_text_cols) > 1 else [None] * len(texts)
        cast = float if spec.is_regression else int
        return [Example(t, p, cast(y)) for t, p, y in zip(texts, pairs, ds["label"])]

    # the hub names dev splits "validation[_matched|_mismatched]" where GLUE files say "dev[_...]"
    return examples("train"), {split: examples("validation" + split[len("dev"):]) for split in spec.dev_files}


def _load_user_files(train_path: Path, dev_path: Path) -> TaskData:
    rows = {"train": _read_user_rows(train_path), "dev": _read_user_rows(dev_path)}
    has_pair = PAIR_COL in rows["train"][0][2]  # check_task_source made both files agree on it
    all_labels = [(path, line_no, row[LABEL_COL]) for path, line_no, row in rows["train"] + rows["dev"]]
    to_label, label_names, is_regression, num_labels = _infer_labels(all_labels)
    split_examples = {}
    for split, split_rows in rows.items():
        split_examples[split] = [
            Example(_text(row, TEXT_COL, path, line_no),
                    _text(row, PAIR_COL, path, line_no) if has_pair else None,
                    to_label(row[LABEL_COL]))
            for path, line_no, row in split_rows
        ]
    return TaskData(task=CUSTOM_TASK, train=split_examples["train"], dev={"dev": split_examples["dev"]},
                    num_labels=num_labels, label_names=label_names, is_regression=is_regression,
                    metric="pearson" if is_regression else "accuracy")


def _read_user_rows(path: Path) -> list[tuple[Path, int, dict[str, Any]]]:
    """(path, line number, row) for every row of a user file; every row must have a label."""
    rows = []
    with _reading(path) as fh:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(fh)
            try:
                for row in reader:
                    if None in row or None in row.values():
                        raise DataError(f"{path}:{reader.line_num}: row does not have the header's "
                                        f"{len(reader.fieldnames)} columns")
                    rows.append((path, reader.line_num, row))
            except csv.Error as exc:  # a field past the csv module's limit (131,072 characters)
                raise DataError(f"{path}:{reader.line_num + 1}: unreadable as a table ({exc})") from None
        else:
            for line_no, line in _json_lines(fh, path):
                if line.strip():
                    rows.append((path, line_no, _json_object(line, path, line_no)))
    for _, line_no, row in rows:
        if row.get(LABEL_COL) in (None, ""):
            raise DataError(f"{path}:{line_no}: missing label")
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def _text(row: dict[str, Any], col: str, path: Path, line_no: int) -> str:
    value = row.get(col)
    if not isinstance(value, str):
        raise DataError(f"{path}:{line_no}: {col!r} must be a string, got {_excerpt(value)}")
    if len(value) > MAX_TEXT_CHARS:
        raise DataError(f"{path}:{line_no}: {col!r} has {len(value):,} characters; at most {MAX_TEXT_CHARS:,}")
    return value


def _excerpt(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _as_number(value: Any) -> int | float | None:
    """A label as a number: JSON numbers, or strings written as decimal numbers; None otherwise."""
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INT_RE.fullmatch(text):
            try:
                return int(text)
            except ValueError:  # past Python's 4,300 digits: a number all the same (inf, refused below)
                return float(text)
        if _FLOAT_RE.fullmatch(text):
            return float(text)
    return None


def _infer_labels(labels: list[tuple[Path, int, Any]]):
    """Apply the label rule of the module docstring to every label of train and dev together.

    Returns (raw label -> label, label names or None, is_regression, num_labels)."""
    numbers = [_as_number(raw) for _, _, raw in labels]
    if any(n is None for n in numbers):
        names = sorted({str(raw) for _, _, raw in labels})
        if len(names) > MAX_CLASSES:
            raise DataError(f"the label column has {len(names):,} class names; at most {MAX_CLASSES:,}")
        if len(names) < 2:
            raise DataError(f"the label column has a single class {_excerpt(names[0])}; classification needs two or more")
        ids = {name: i for i, name in enumerate(names)}
        return (lambda raw: ids[str(raw)]), names, False, len(names)
    for (path, line_no, raw), n in zip(labels, numbers):
        if not math.isfinite(n):
            raise DataError(f"{path}:{line_no}: label {_excerpt(raw)} is not finite")
    if all(float(n).is_integer() for n in numbers):
        for (path, line_no, raw), n in zip(labels, numbers):
            if n < 0:
                raise DataError(f"{path}:{line_no}: integer label {_excerpt(raw)} is negative; class ids start at 0")
            if n >= MAX_CLASSES:
                raise DataError(f"label {_excerpt(raw).strip(chr(39))} at {path}:{line_no}; labels must be "
                                f"0..N-1 with N ≤ {MAX_CLASSES:,}")
        num_labels = int(max(numbers)) + 1
        if num_labels < 2:
            raise DataError("every label is 0; classification needs two or more classes")
        return (lambda raw: int(_as_number(raw))), None, False, num_labels
    return (lambda raw: float(_as_number(raw))), None, True, 1


# ---------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------

_TOKENIZE_BATCH = 1024  # rows per tokenizer call: fast-tokeniser throughput with bounded peak memory


def tokenize_examples(examples: Sequence[Example], tokenizer, max_length: int = 128,
                      limit: int | None = None) -> list[dict[str, Any]]:
    """Features for the first ``limit`` examples (all when None): one dict per example with the
    tokenizer's outputs (``input_ids``, ``attention_mask``, ``token_type_ids`` when the tokenizer
    makes them) truncated to ``max_length``, plus ``labels``. No padding here: ``make_collator``
    pads each batch to its longest row."""
    if limit is not None:
        if limit < 0:
            raise DataError(f"limit must be >= 0, got {limit}")
        examples = examples[:limit]
    has_pair = [e.text_pair is not None for e in examples]
    if any(has_pair) and not all(has_pair):
        raise DataError("examples mix single texts and text pairs; a task is one or the other")
    features: list[dict[str, Any]] = []
    for start in range(0, len(examples), _TOKENIZE_BATCH):
        batch = examples[start:start + _TOKENIZE_BATCH]
        encoded = tokenizer([e.text for e in batch],
                            [e.text_pair for e in batch] if has_pair[0] else None,
                            truncation=True, max_length=max_length)
        for i, example in enumerate(batch):
            row = {key: values[i] for key, values in encoded.items()}
            row["labels"] = example.label
            features.append(row)
    return features


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token its EOS token as pad token (padding is masked out, so
    the choice of token does not matter). The caller also sets ``model.config.pad_token_id``."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DataError(f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token


def make_collator(tokenizer):
    """A ``DataCollatorWithPadding``: pads each batch of ``tokenize_examples`` rows to its longest
    row and returns tensors (``labels`` long for classes, float for regression)."""
    from transformers import DataCollatorWithPadding

    if tokenizer.pad_token is None:
        raise DataError(f"tokenizer {type(tokenizer).__name__} has no pad token; call ensure_pad_token first")
    return DataCollatorWithPadding(tokenizer)
