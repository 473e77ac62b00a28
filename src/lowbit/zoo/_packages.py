"""Find the folder of an installed package without importing it."""

import importlib.util
from pathlib import Path


def package_dir(name: str) -> Path | None:
    """Return the folder of installed package `name`, or None when it is not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
