"""Hints that let the browser fetch what a page will need before the script asks for it.

Streamlit loads its Plotly renderer (one ~4.7 MB JavaScript chunk) only when the first chart
arrives, which on a cold start is after the script has imported pandas and Plotly and read the run
record: the browser sits idle for that second and then fetches and compiles the chunk. A
``<link rel="modulepreload">`` sent as the app's first element lets the fetch and compile run in
parallel with the Python work (measured in ``benchmarks/bench_dashboard.py``). This module imports
nothing heavy so that the hint goes out before the imports it overlaps.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def plotly_chunk() -> str | None:
    """File name of Streamlit's Plotly chunk (``PlotlyChart.<hash>.js``), or None when this Streamlit
    build has none (then no hint is sent and nothing else changes)."""
    import streamlit

    found = sorted((Path(streamlit.__file__).parent / "static" / "static" / "js").glob("PlotlyChart.*.js"))
    return found[0].name if found else None


def preload_plotly(container) -> bool:
    """Emit the modulepreload hint for the Plotly chunk into ``container`` (e.g. ``st.sidebar``);
    returns whether a hint was sent. The path is relative, so it holds under ``server.baseUrlPath``."""
    name = plotly_chunk()
    if name is None:
        return False
    container.markdown(f'<link rel="modulepreload" crossorigin href="./static/js/{name}">', unsafe_allow_html=True)
    return True
