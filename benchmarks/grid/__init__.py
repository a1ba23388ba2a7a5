"""The quality grid: its rows and plans (``rows``), how its runs are queued and trained
(``runner``: the engine's run store and worker) and its report (``report``: tables from the
records, statistics from ``heterolora_core.analysis.stats``)."""
