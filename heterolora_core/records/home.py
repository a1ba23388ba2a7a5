"""The data home: where every file the project writes lives, and which folders in it a run may own.

``$HETEROLORA_HOME`` or the project's ``data/`` folder. Runs launched from the CLI or the dashboard
go to ``<home>/runs/``; benchmark records live under ``<home>/results/``. The run store deletes,
renames and writes only inside the home, after resolving symbolic links (:func:`inside`).

Which folder is a data home (:func:`checked_home`): one this tool made, marked by the file
``.heterolora-home`` it writes; an empty (or missing) folder, which it marks; or a home of an earlier
version, recognised by holding only names this tool writes at its top (``runs/``, ``results/``,
``runs.sqlite``, the worker's files; :data:`HOME_NAMES`), which it marks too. Anything else (``/``,
a folder of someone else's files) is refused with one line (:class:`StoreError`) before anything
is written or indexed there; to adopt such a folder on purpose, create the marker file in it.

Which folder a run may own (:func:`check_run_folder`, the one rule for sweeps' ``folder:``
templates, the store's queue, re-queueing and deleting): a leaf that belongs to exactly one run.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUNS_DIR = "runs"
RESULTS_DIR = "results"
#: The file that marks a folder as a data home this tool made.
HOME_MARKER = ".heterolora-home"
#: The run index's file name; what starts with it at the top of a home is the index's (its journal,
#: a corrupt copy set aside).
DB_PREFIX = "runs.sqlite"
#: What this tool writes at the top of a data home (the store, the worker, the records' roots).
HOME_NAMES = frozenset({RUNS_DIR, RESULTS_DIR, HOME_MARKER, "worker.json", "worker.lock", "worker.pid", "worker.log",
                        "worker.spawn", ".gitkeep"})
#: Folders under the home that hold other runs' folders, so never one run's own.
STORE_ROOTS = (RUNS_DIR, RESULTS_DIR)
#: The longest run folder path (relative to the home) the store creates.
MAX_FOLDER_CHARS = 1000
#: A run's own subfolder that holds files named like a record's (an adapter checkpoint): not a run.
RECORD_FILES = ("config.json", "summary.json")
_OWN_SUBFOLDERS = ("adapters",)


class StoreError(ValueError):
    """An operation the store refuses (a path outside the home, a symlinked run, a folder that is
    not one run's own, a folder that is not a data home); one line."""


def data_home() -> Path:
    """``$HETEROLORA_HOME`` or the project's ``data/`` folder, absolute."""
    return Path(os.environ.get("HETEROLORA_HOME") or PROJECT_ROOT / "data").expanduser().resolve()


def runs_dir(home: Path | None = None) -> Path:
    return (home or data_home()) / RUNS_DIR


def inside(path: str | os.PathLike, home: str | os.PathLike) -> bool:
    """True when ``path``, with every symbolic link resolved, lies strictly inside ``home``."""
    try:
        resolved = Path(path).resolve(strict=False)
        root = Path(home).resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return resolved != root and resolved.is_relative_to(root)


def checked_home(home: str | os.PathLike | None = None) -> Path:
    """The data home ``home`` (default :func:`data_home`), absolute, created and marked when it is
    missing or empty; StoreError (one line) when it is a folder this tool did not make (see the
    module docstring). Called before anything is written to or indexed in a home."""
    path = Path(home).expanduser().resolve() if home else data_home()
    marker = path / HOME_MARKER
    try:
        if marker.is_file() and not marker.is_symlink():
            return path
        if path.exists() and not path.is_dir():
            raise StoreError(f"data home {path} is not a folder")
        foreign = sorted(name for name in (os.listdir(path) if path.exists() else ())
                         if name not in HOME_NAMES and not name.startswith(DB_PREFIX))
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise StoreError(f"{path} is not a data home made by this tool (it holds {foreign[0][:60]!r}{more}); "
                             f"choose an empty folder, or create {HOME_MARKER} in it to use it as one")
        path.mkdir(parents=True, exist_ok=True)
        marker.write_text("a HeteroLoRA Studio data home: runs/, results/ and the run index runs.sqlite\n")
    except OSError as exc:
        raise StoreError(f"cannot use {path} as the data home: {exc.strerror or exc}") from None
    return path


def check_run_folder(home: str | os.PathLike, folder: str | os.PathLike, existing: bool = False) -> Path:
    """The absolute folder ``folder`` (relative to ``home``, or absolute) names, once checked to be
    a leaf that belongs to exactly one run; StoreError with one line otherwise. The rule (its
    first part, on the path alone, is :func:`check_folder_name`):

    - its text holds no NUL or control character, no ``..`` part and no hidden part (``.x``: the
      store does not list those);
    - it is not a root of the store (``runs/``, ``results/``) or another of the home's own names;
    - it lies strictly inside the home, with no symbolic link on the way;
    - no folder between the home and it holds a record (it is not inside another run);
    - ``existing=False`` (a new run): it does not exist, or is an empty folder (it is no one else's);
      ``existing=True`` (a run about to be replaced or deleted): no other record lies below it
      (apart from its own ``adapters/``), so removing it removes one run.
    """
    home = Path(home).resolve()
    text = os.fspath(folder)
    if os.path.isabs(text):
        if "\0" in text or not Path(text).is_relative_to(home):
            raise StoreError(f"run folder {_shown(text)} is not inside the data home {home}")
        text = Path(text).relative_to(home).as_posix() or "."
    check_folder_name(text)
    path = home / text
    shown = _shown(text)
    if not inside(path, home) or _under_link(path, home):
        raise StoreError(f"run folder {shown} is not inside the data home {home} (or lies under a symbolic link)")
    relative = path.relative_to(home).parts
    for depth in range(1, len(relative)):
        parent = home.joinpath(*relative[:depth])
        if holds_record(parent):
            raise StoreError(f"run folder {shown} lies inside the run record {parent.relative_to(home)}")
    if existing:
        nested = _nested_record(path)
        if nested is not None:
            raise StoreError(f"run folder {shown} holds another run record ({nested.relative_to(home)}); "
                             f"it is not one run's folder")
    elif path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StoreError(f"run folder {shown} already exists and is not empty; a new run needs a folder of its own")
    return path


def check_folder_name(folder: str) -> None:
    """The rules of :func:`check_run_folder` that need only the path ``folder`` (relative to the
    home): StoreError with one line for a control character, a path too long, an absolute path, a ``..``, ``.`` or
    hidden part, or one of the home's own names. A sweep checks every run's folder with it before
    anything is queued."""
    shown = _shown(folder)
    if any(ord(c) < 32 or ord(c) == 127 for c in folder):
        raise StoreError(f"run folder {shown} holds a control character")
    parts = Path(folder).parts
    if len(folder) > MAX_FOLDER_CHARS or any(len(part.encode("utf-8", "replace")) > 255 for part in parts):
        raise StoreError(f"run folder {shown} is too long (at most {MAX_FOLDER_CHARS} characters, 255 bytes a name)")
    if os.path.isabs(folder) or not parts:
        raise StoreError(f"run folder {shown} must be a relative path inside the data home")
    if any(part in (".", "..") or part.startswith(".") for part in folder.replace("\\", "/").split("/") if part):
        raise StoreError(f"run folder {shown} has a '..' or hidden ('.x') part; a run folder is a plain path "
                         f"inside the data home")
    if len(parts) == 1 and (parts[0] in HOME_NAMES or parts[0].startswith(DB_PREFIX)):
        raise StoreError(f"run folder {shown} is the data home's own {parts[0]}"
                         + ("/, which holds other runs" if parts[0] in STORE_ROOTS else ""))


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77]) + "..."


def check_separate(folders: list[str | os.PathLike]) -> None:
    """StoreError (one line) when one of the run folders ``folders`` (all relative, or all
    absolute) lies inside another: each run's folder is its own leaf."""
    paths = {Path(f) for f in folders}
    for path in paths:
        for parent in path.parents:
            if parent in paths:
                raise StoreError(f"run folder {os.fspath(path)[:80]!r} lies inside another run's folder "
                                 f"{os.fspath(parent)[:80]!r}")


def holds_record(folder: Path) -> bool:
    """True when ``folder`` holds a run record's ``config.json`` or ``summary.json``."""
    return any(os.path.lexists(folder / name) for name in RECORD_FILES)


def _under_link(path: Path, home: Path) -> bool:
    """True when ``path`` or a folder between ``home`` and it is a symbolic link."""
    current = home
    for part in path.relative_to(home).parts:
        current = current / part
        if current.is_symlink():
            return True
    return False


def _nested_record(folder: Path) -> Path | None:
    """A record folder strictly below ``folder`` (not in its own ``adapters/``), or None."""
    for dirpath, dirnames, _ in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        if here == folder:
            dirnames[:] = [d for d in dirnames if d not in _OWN_SUBFOLDERS]
        elif holds_record(here):
            return here
    return None
