"""ModelError: the one error type of model resolution and loading (shared by ``models`` and ``smollm2``)."""
from __future__ import annotations


class ModelError(ValueError):
    """A model that cannot be found, fetched or loaded (one-line message)."""
