"""Adapters: the search space and its modules.

- :mod:`~heterolora_core.adapters.config`: :class:`HeteroLoraConfig`, what to attach and how (torch-free)
- :mod:`~heterolora_core.adapters.modules`: :class:`AdapterModule` (one candidate) and :class:`AdapterSet`
- :mod:`~heterolora_core.adapters.families`: where the candidates go in each model family; ``attach``
- :mod:`~heterolora_core.adapters.checkpoint`: trained tensors on disk, and the PEFT export

Subpackage ``__init__`` files import nothing, so torch-free modules stay torch-free.
"""
