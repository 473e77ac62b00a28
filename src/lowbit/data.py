"""Calibration data: iterate any source of model inputs as checked (args, kwargs) calls."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch

from lowbit.errors import DataError


def as_call(item) -> tuple[tuple, dict]:
    """A model input (tensor, tuple/list of tensors, or dict of named tensors) as (args, kwargs)."""
    if isinstance(item, Mapping):
        return (), dict(item)
    if isinstance(item, (tuple, list)):
        return tuple(item), {}
    return (item,), {}


def batch_of(call):
    """A checked (args, kwargs) call back as the batch a user passes: a dict, a tensor or a tuple."""
    args, kwargs = call
    return kwargs if kwargs else (args[0] if len(args) == 1 else args)


def tensors_of(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """Every tensor passed in a call."""
    return [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]


def map_call(function, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call with ``function`` applied to each of its arguments."""
    return tuple(function(a) for a in args), {k: function(v) for k, v in kwargs.items()}


def move_call(args: tuple, kwargs: dict, device) -> tuple[tuple, dict]:
    """The call with its tensors moved to ``device``."""
    return map_call(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, args, kwargs)


def channels_last(value):
    """A 4-D float tensor in channels-last memory (the same values; oneDNN's convolutions, forward and
    backward, run faster on it); anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point():
        return value.contiguous(memory_format=torch.channels_last)
    return value


def channels_last_call(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call with its 4-D float tensors in channels-last memory (see :func:`channels_last`)."""
    return map_call(channels_last, args, kwargs)


def checked_calls(data: Iterable, transform: Callable | None = None, num_batches: int | None = None):
    """Yield (args, kwargs) for each batch; DataError for empty data, a batch without a tensor or
    non-finite values."""
    check_data_arguments(data, num_batches)
    seen = 0
    for index, item in enumerate(itertools.islice(data, num_batches)):
        if transform is not None:
            item = transform(item)
        args, kwargs = map_call(_as_array, *as_call(item))
        if not any(isinstance(v, (torch.Tensor, np.ndarray)) for v in [*args, *kwargs.values()]):
            raise DataError(f"batch {index} holds no tensor (got {type(item).__name__}): give tensors or arrays, "
                            f"or tuples or dicts of them")
        for tensor in tensors_of(args, kwargs):
            if tensor.is_floating_point() and tensor.numel() and not _finite(tensor):
                raise DataError(f"calibration batch {index} contains NaN or Inf values")
        seen += 1
        yield args, kwargs
    if seen == 0:
        raise DataError("calibration data is empty: no batch was produced")


def check_data_arguments(data, num_batches: int | None) -> None:
    """DataError for a num_batches below 1 or data that is one tensor rather than an iterable of batches."""
    if num_batches is not None and num_batches < 1:
        raise DataError(f"num_batches must be at least 1, got {num_batches}")
    if isinstance(data, torch.Tensor):
        raise DataError("calibration data must be an iterable of batches (e.g. a list of tensors or "
                        "a DataLoader), not a single tensor: wrap it as [tensor]")


def _finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite: NaN and Inf reach the minimum or maximum (one reduction, no mask)."""
    return bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all())


def _as_array(value):
    """A framework tensor other than torch's (TensorFlow, JAX: anything with ``__array__`` and a shape) as a NumPy
    array; torch tensors, arrays and other values unchanged."""
    if isinstance(value, (torch.Tensor, np.ndarray)) or not (hasattr(value, "__array__") and hasattr(value, "shape")):
        return value
    return np.asarray(value)


def batch_count(data, num_batches: int | None) -> int | None:
    """Number of batches a loop over ``data`` will see, when knowable (for progress bars)."""
    try:
        total = len(data)
    except TypeError:
        return num_batches
    return total if num_batches is None else min(total, num_batches)


def first_tensor(output) -> torch.Tensor:
    """The first tensor of a model output (a tensor, a tuple/list, a dict, or an object with fields)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else (
        output if isinstance(output, (tuple, list)) else vars(output).values())
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    raise TypeError(f"the model returned no float tensor ({type(output).__name__})")
