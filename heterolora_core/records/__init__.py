"""Records: runs on disk, their index and queue, and the worker that trains them (torch-free).

- :mod:`~heterolora_core.records.home`: the data home (one this tool made) and the one rule for a run's folder
- :mod:`~heterolora_core.records.record`: one run folder (:class:`RunRecord`) and its typed files
- :mod:`~heterolora_core.records.processes`: which processes the project may signal
- :mod:`~heterolora_core.records.store`: the SQLite index of run folders and the launch queue
- :mod:`~heterolora_core.records.worker`: the queue worker (``python -m heterolora_core.records.worker``)
- :mod:`~heterolora_core.records.launchers`: the training command and how the worker runs it here
- :mod:`~heterolora_core.records.ray_executor`: the worker's runs as Ray tasks on a cluster (``--executor ray``)
"""
