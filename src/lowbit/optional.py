"""Optional dependencies, imported when a feature needs them: one line naming the extra where one is missing."""

from __future__ import annotations

import importlib

from lowbit.errors import LowbitError, ModelLoadError

KERAS_EXTRA = "pip install 'lowbit[keras]'"


def require(name: str, purpose: str = "Keras models", error: type[LowbitError] = ModelLoadError):
    """The module ``name``; ``error`` saying ``purpose`` needs it and which extra installs it, where it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise error(f"{purpose} need {name.split('.')[0]}, which is not installed: {KERAS_EXTRA}") from None
