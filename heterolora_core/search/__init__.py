"""Search: how a budget becomes an enabled set.

- :mod:`~heterolora_core.search.budget`: parameter accounting, :class:`Budget`, :class:`Allocation`, ``resolve`` (torch-free)
- :mod:`~heterolora_core.search.selection`: ``select``, the pure function from scores to the enabled set (torch-free)
- :mod:`~heterolora_core.search.proxies`: the zero-cost proxies and their gradient statistics
- :mod:`~heterolora_core.search.reallocator`: the reallocation schedule and the :class:`Reallocator`
"""
