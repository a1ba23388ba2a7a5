"""``python -m dashboard [streamlit options]``: the dashboard on 127.0.0.1 from any directory.

Starts ``streamlit run <repo>/dashboard/app.py`` with the project's ``.streamlit/config.toml``
settings (bound to 127.0.0.1, no usage statistics); options given here go to Streamlit and an
explicit ``--server.address`` wins.
"""
import sys

from streamlit.web import cli as streamlit_cli

from heterolora_core.records.home import PROJECT_ROOT

DEFAULTS = ["--server.address", "127.0.0.1", "--browser.serverAddress", "127.0.0.1",
            "--browser.gatherUsageStats", "false", "--server.runOnSave", "false"]


def main(argv: list[str]) -> int:
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    defaults = [v for k, v in zip(DEFAULTS[::2], DEFAULTS[1::2]) for v in (k, v) if k not in given]
    sys.argv = ["streamlit", "run", str(PROJECT_ROOT / "dashboard" / "app.py"), *defaults, *argv]
    return streamlit_cli.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
