""""Use this allocation": a finished run's or a recommendation's allocation as files for the
user's own training: ``peft.LoraConfig`` keywords (JSON), an axolotl snippet (YAML) and, for a
run with trained weights, its PEFT adapter folder (zip). The files come from the engine's export
(:mod:`heterolora_core.exporting`), checked on the model as ``python -m heterolora_core export``
checks them; what cannot be exported (an enabled shortcut, a PEFT-method run) says why."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from heterolora_core.records.record import RunRecord, Status, file_stamp
from heterolora_core.records.store import StoredRun

FILES = (("json", "LoraConfig (JSON)", "lora_config.json", "application/json"),
         ("axolotl", "axolotl snippet (YAML)", "axolotl_lora.yaml", "application/x-yaml"))


@st.cache_data(show_spinner="Preparing the files…", max_entries=16)
def _prepared(path: str, stamp: tuple) -> dict[str, tuple[bytes | None, str | None]]:
    """{format: (bytes, None) or (None, why not)} for the run folder ``path`` (``stamp``: its files'
    change stamps, so a rewritten record is prepared again)."""
    from heterolora_core import exporting  # torch and PEFT load only when someone asks for the files

    out: dict[str, tuple[bytes | None, str | None]] = {}
    makers = {fmt: (lambda fmt=fmt: exporting.allocation_text(path, fmt).encode()) for fmt, *_ in FILES}
    makers["peft"] = lambda: exporting.adapter_archive(path)
    for fmt, make in makers.items():
        try:
            out[fmt] = (make(), None)
        except (ValueError, OSError) as exc:
            out[fmt] = (None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return out


def use_allocation(row: StoredRun, key: str) -> None:
    """The expander with the download buttons of ``row`` (nothing is computed until asked)."""
    with st.expander("Use this allocation", icon=":material/ios_share:"):
        if row.config is None or row.summary.status != Status.DONE:
            st.caption("The files are available once the run (or recommendation) is done.")
            return
        st.caption("Train with your own script: the LoraConfig keywords (`LoraConfig(**json.load(f))`), the "
                   "axolotl snippet, or the trained adapter for `PeftModel.from_pretrained`.")
        if not st.toggle("Prepare the files", key=f"{key}-prepare"):
            return
        folder = Path(row.path)
        stamp = tuple(file_stamp(folder / name) for name in (RunRecord.SUMMARY, RunRecord.REALLOCATIONS))
        files = _prepared(str(folder), stamp)
        columns = st.columns(3)
        for column, (fmt, label, name, mime) in zip(columns, (*FILES, ("peft", "PEFT adapter (zip)",
                                                                       "adapter.zip", "application/zip"))):
            data, problem = files[fmt]
            if data is None:
                column.caption(f"{label}: {problem}")
            else:
                column.download_button(label, data, file_name=f"{row.run_id}-{name}", mime=mime,
                                       icon=":material/download:", key=f"{key}-{fmt}")
