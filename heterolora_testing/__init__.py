"""Test fixtures for the project's tests and benchmarks (the app never imports this package).

- :mod:`~heterolora_testing.synthetic`: synthetic run records on the real vocabulary and selection,
  and a stand-in trainer the worker can run (``python -m heterolora_testing.synthetic train``)
- :mod:`~heterolora_testing.server`: the real app on 127.0.0.1 and Debian's Chromium through Playwright
- :mod:`~heterolora_testing.idle`: a project process that only sleeps (signal tests)
"""
