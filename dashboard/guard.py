"""The dashboard binds to 127.0.0.1 unless the user asks for another address.

Streamlit reads ``.streamlit/config.toml`` from the current directory only, so ``streamlit run
<repo>/dashboard/app.py`` started elsewhere would listen on every interface, and the app launches
training processes. :func:`refuse_public_default` runs first on every page: when the server's
address is Streamlit's default (no ``--server.address``, no config file, no
``STREAMLIT_SERVER_ADDRESS``), the page says how to start the app and the server shuts down. An
explicit address, ``0.0.0.0`` included, is the user's choice and is served.
"""
from __future__ import annotations

import os
import signal
import threading

import streamlit as st
from streamlit import config

SHUTDOWN_DELAY_SECONDS = 3.0
START_HINT = ("python -m dashboard  (binds 127.0.0.1), or "
              "streamlit run dashboard/app.py --server.address 127.0.0.1")


def address_is_default() -> bool:
    """True when nothing set ``server.address`` (Streamlit then listens on every interface)."""
    return not config.get_option("server.address") and config.get_where_defined("server.address") == "<default>"


def refuse_public_default() -> None:
    """Stop a server that listens on every interface by default (see the module docstring). A
    session without HTTP headers did not come over the network (Streamlit's AppTest) and is served."""
    if not address_is_default() or not st.context.headers:
        return
    st.error("This server was started without a bind address, so it listens on every network interface. "
             f"HeteroLoRA Studio launches training processes and serves local only; start it with `{START_HINT}`. "
             "The server is shutting down.", icon=":material/lock:")
    # The server is this process, started by the user to run this app: stop it rather than serve,
    # a moment from now, so that the message above reaches the browser first.
    threading.Timer(SHUTDOWN_DELAY_SECONDS, os.kill, (os.getpid(), signal.SIGTERM)).start()
    st.stop()
