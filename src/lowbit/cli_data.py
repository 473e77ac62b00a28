"""Read the `lowbit` command's --data: an image folder (for a model whose input is an image), an array,
or a dict of arrays keyed by input name (for models with several inputs), as batches."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lowbit.errors import DataError, InputError, first_line
from lowbit.keras.convert import is_keras_model
from lowbit.zoo import imagenet_preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
DEFAULT_IMAGE_SIZE = (224, 224)
CROP_FRACTION = 0.875


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """`1,3,224,224` (any rank) as a tuple of positive integers; InputError otherwise."""
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--input-shape {text!r} is not a comma-separated list of integers") from None
    if not shape or min(shape) < 1:
        raise InputError(f"--input-shape {text!r} must list positive sizes, e.g. 1,3,224,224 or 1,16000")
    return shape


def read_data(path, batch_size: int, model: str, shape: tuple[int, ...] | None = None) -> list:
    """Batches for ``model`` (a model argument of the CLI) from ``path``: tensors, or dicts of tensors by
    input name; DataError naming what the data or the model needs."""
    path = Path(path)
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if path.is_dir() and is_keras_model(model):
        samples = _read_images(path, DEFAULT_IMAGE_SIZE).permute(0, 2, 3, 1).contiguous()  # Keras: NHWC
    elif path.is_dir():
        samples = _read_images(path, _image_size(model, shape))
    elif not path.exists():
        raise DataError(f"data path '{path}' not found")
    elif path.suffix not in _READERS:
        raise DataError(f"data '{path}' is not an image folder, a .npy, .npz or .pt file")
    else:
        try:
            samples = _READERS[path.suffix](path)
        except Exception as error:
            raise DataError(f"cannot read data file '{path}': {first_line(error)}") from None
    if isinstance(samples, dict):
        if shape is not None:
            raise InputError("--input-shape describes a single input; data keyed by input name carries its shapes")
        return _dict_batches(samples, path, batch_size)
    samples = _checked_array(samples, path)
    if shape is not None and tuple(samples.shape[1:]) != shape[1:]:
        raise InputError(f"data samples have shape {tuple(samples.shape[1:])}, --input-shape expects {shape[1:]}")
    return list(samples.split(batch_size))


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of a .npz file by name, as tensors."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: torch.from_numpy(archive[name]) for name in archive.files}


_READERS = {".npy": lambda path: torch.from_numpy(np.load(path, allow_pickle=False)), ".npz": _read_npz,
            ".pt": lambda path: torch.load(path, weights_only=True)}
_READERS[".pth"] = _READERS[".pt"]


def _checked_array(value, path: Path, name: str | None = None) -> torch.Tensor:
    """A numeric tensor (floats as float32) with finite values; DataError naming the file otherwise."""
    what = f"'{path}'" + (f" entry '{name}'" if name else "")
    if not isinstance(value, torch.Tensor):
        raise DataError(f"data {what} must hold an array (a tensor, or a dict of them keyed by input name)")
    if value.is_complex():
        raise DataError(f"data {what} holds {value.dtype} values; give float or integer arrays")
    if name is None and (value.dim() < 1 or len(value) == 0):
        raise DataError(f"data {what} must be a non-empty array with a sample axis first")
    if value.is_floating_point():
        value = value.float()
        if not bool(torch.isfinite(value).all()):
            raise DataError(f"data {what} contains NaN or Inf values")
    return value


def _dict_batches(samples: dict, path: Path, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Batches of dicts: arrays split along their first (sample) axis; 0-d values go into every batch."""
    if not samples:
        raise DataError(f"data '{path}' holds no arrays")
    arrays = {str(name): _checked_array(value, path, str(name)) for name, value in samples.items()}
    counts = {name: len(a) for name, a in arrays.items() if a.dim() > 0}
    if not counts or len(set(counts.values())) != 1:
        listed = ", ".join(f"{n}: {c}" for n, c in counts.items()) or "none"
        raise DataError(f"the arrays of '{path}' must share their first (sample) axis; their lengths: {listed}")
    total = next(iter(counts.values()))
    return [{name: a[start:start + batch_size] if a.dim() > 0 else a for name, a in arrays.items()}
            for start in range(0, total, batch_size)]


def _image_size(model: str, shape: tuple[int, ...] | None) -> tuple[int, int]:
    """(H, W) to preprocess images to: from --input-shape, else the ONNX model's static image input, else
    224 x 224; DataError when the model's input is not an image."""
    if shape is not None:
        if len(shape) != 4 or shape[1] != 3:
            raise DataError(f"an image folder feeds (N, 3, H, W) images; --input-shape {shape} is not one")
        return shape[2], shape[3]
    if not model.endswith(".onnx"):
        return DEFAULT_IMAGE_SIZE
    from lowbit.onnx import load_model
    from lowbit.onnx.feeds import GraphInputs
    inputs = GraphInputs(load_model(model)).values
    if len(inputs) > 1:
        raise DataError(f"'{model}' has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}): give --data "
                        f"as a .npz file or a .pt dict of arrays keyed by input name")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, None):
        wanted = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
        raise DataError(f"model input '{inputs[0].name}' has shape {wanted}, not an image batch (N, 3, H, W): "
                        f"give --data as a .npy, .npz or .pt file")
    return (dims[2], dims[3]) if dims[2] and dims[3] else DEFAULT_IMAGE_SIZE


def _read_images(folder: Path, size: tuple[int, int]) -> torch.Tensor:
    """Every image in ``folder``, ImageNet-preprocessed to H x W and stacked [N, 3, H, W]; the
    preprocessing is printed (stderr)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"data folder '{folder}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    tensors = []
    for file in files:
        try:
            with Image.open(file) as image:
                tensors.append(imagenet_preprocess(image, size))
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"cannot read image '{file}': {first_line(error)}") from None
    height, width = size
    print(f"preprocessing: {len(files)} images from '{folder}': shorter side resized to "
          f"{round(max(size) / CROP_FRACTION)} (bilinear), centre crop {height}x{width}, RGB in [0, 1] "
          f"normalised with ImageNet's mean and std (--input-shape N,3,H,W sets the size; other "
          f"preprocessing: give --data as an array)", file=sys.stderr)
    return torch.stack(tensors)
