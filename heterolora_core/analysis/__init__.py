"""Analysis: pure functions over run records (no files read, no Streamlit).

- :mod:`~heterolora_core.analysis.allocation`: where runs put their budget (frequencies, timelines, churn)
- :mod:`~heterolora_core.analysis.compare`: run tables, configurations over seeds, overlaps, curves
- :mod:`~heterolora_core.analysis.stats`: mean ± std, 95% intervals, paired differences (one copy)
"""
