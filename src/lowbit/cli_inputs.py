"""Read the `lowbit` command's inputs: a model (factory spec, TorchScript or .pt2) and data batches."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from lowbit.errors import DataError, ModelLoadError
from lowbit.zoo import imagenet_preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def load_model(spec: str, example_input: torch.Tensor) -> nn.Module:
    """A model from a `module:factory` spec, a TorchScript file, or a torch.export `.pt2` file.

    Files become fx graphs (TorchScript is converted with ``example_input``), which lowbit can trace.
    """
    path = Path(spec)
    if path.suffix == ".pt2":
        return _load_file(path, lambda p: torch.export.load(str(p)).module())
    if path.exists() or ":" not in spec:
        return _load_file(path, lambda p: _torchscript_as_graph(p, example_input))
    return _load_factory(spec)


def _torchscript_as_graph(path: Path, example_input: torch.Tensor) -> nn.Module:
    """Load a TorchScript file and convert it to an fx GraphModule by running ``example_input``."""
    from torch._export.converter import TS2EPConverter

    script = torch.jit.load(str(path), map_location="cpu").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TS2EPConverter(script, (example_input,)).convert().module()


def _load_file(path: Path, reader) -> nn.Module:
    """Read a model file with ``reader``; ModelLoadError if it is missing or unreadable."""
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' not found (MODEL is a module:factory spec or a model file)")
    try:
        model = reader(path)
    except Exception as error:
        raise ModelLoadError(f"cannot read model file '{path}': {_first_line(error)}") from None
    # torch.export's module() forbids train()/eval() through instance attributes; its graph is already
    # in inference form, so restoring nn.Module's methods lets lowbit copy it and call eval().
    model.__dict__.pop("train", None)
    model.__dict__.pop("eval", None)
    return model.eval()


def _load_factory(spec: str) -> nn.Module:
    """Import `module` (with the cwd on sys.path) and call `factory()`; it must return an nn.Module."""
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise ModelLoadError(f"model spec {spec!r} is not of the form module:factory")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except ImportError as error:
        raise ModelLoadError(f"cannot import module {module_name!r}: {_first_line(error)}") from None
    except AttributeError:
        raise ModelLoadError(f"module {module_name!r} has no attribute {factory_name!r}") from None
    try:
        model = factory()
    except Exception as error:
        raise ModelLoadError(f"{spec}() failed: {type(error).__name__}: {_first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def load_batches(path, batch_size: int, image_size: int = 224) -> list[torch.Tensor]:
    """Float batches from an image folder, a `.npy` array or a `.pt` tensor; DataError if unusable."""
    path = Path(path)
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if path.is_dir():
        samples = _read_images(path, image_size)
    elif path.suffix == ".npy":
        samples = _read_array(path, lambda p: torch.from_numpy(np.load(p, allow_pickle=False)))
    elif path.suffix in {".pt", ".pth"}:
        samples = _read_array(path, lambda p: torch.load(p, weights_only=True))
    elif not path.exists():
        raise DataError(f"data path '{path}' not found")
    else:
        raise DataError(f"data '{path}' is not an image folder, a .npy file or a .pt file")
    if not bool(torch.isfinite(samples).all()):
        raise DataError(f"data '{path}' contains NaN or Inf values")
    return list(samples.split(batch_size))


def _read_images(folder: Path, size: int) -> torch.Tensor:
    """Every image in ``folder``, ImageNet-preprocessed to size x size, stacked [N, 3, size, size]."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"data folder '{folder}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    tensors = []
    for file in files:
        try:
            with Image.open(file) as image:
                tensors.append(imagenet_preprocess(image, size))
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"cannot read image '{file}': {_first_line(error)}") from None
    return torch.stack(tensors)


def _read_array(path: Path, reader) -> torch.Tensor:
    """A float tensor with a batch dimension read by ``reader``; DataError if missing or not one."""
    if not path.is_file():
        raise DataError(f"data file '{path}' not found")
    try:
        value = reader(path)
    except Exception as error:
        raise DataError(f"cannot read data file '{path}': {_first_line(error)}") from None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() < 1 or len(value) == 0:
        raise DataError(f"data file '{path}' must hold a non-empty float array with a batch dimension")
    return value.float()


def _first_line(error: Exception) -> str:
    """The first line of an exception's message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
