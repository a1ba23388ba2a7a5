"""What a page shows when there is nothing to show yet: a line saying why and a link to Launch."""
from __future__ import annotations

from collections.abc import Sized

import streamlit as st


def stop_without_runs(rows: Sized, message: str, link_label: str = "Launch a run") -> None:
    """When ``rows`` is empty: ``message``, a link to the Launch page, and the page stops here."""
    if len(rows) == 0:
        st.info(message)
        st.page_link("views/launch.py", label=link_label, icon=":material/rocket_launch:")
        st.stop()
