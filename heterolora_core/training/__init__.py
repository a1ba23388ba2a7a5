"""Training: a run's definition, its data, model, metrics and the Trainer loop.

- :mod:`~heterolora_core.training.run_config`: :class:`RunConfig` and its one validation (torch-free)
- :mod:`~heterolora_core.training.data`: the nine GLUE tasks and users' own files (torch-free)
- :mod:`~heterolora_core.training.models`: the embedded model, HF ids and folders
- :mod:`~heterolora_core.training.smollm2`: the embedded decoder, fetched once into a model cache
- :mod:`~heterolora_core.training.metrics`, ``glue_metric/``: GLUE metrics (a local ``evaluate`` module)
- :mod:`~heterolora_core.training.environment`: device, distributed helpers, versions
- :mod:`~heterolora_core.training.callbacks`: the run-record callback
- :mod:`~heterolora_core.training.trainer`: ``run_training``
"""
