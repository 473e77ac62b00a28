"""Views of a tensor as rows, one row per encoding entry (tensor, channel or block)."""

from __future__ import annotations

import math

import torch

from lowbit.errors import SpecError
from lowbit.quant.spec import QuantSpec


def as_rows(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``x`` as a [rows, n] matrix: one row per tensor, channel, or (channel, block)."""
    if spec.axis is None:
        return in_memory_order(x).reshape(1, -1)
    axis = spec.axis % x.dim()
    rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    if spec.block_size is None:
        return rows
    if rows.shape[1] % spec.block_size:
        raise SpecError(f"block size {spec.block_size} does not divide the {rows.shape[1]} elements per channel")
    return rows.reshape(-1, spec.block_size)


def in_memory_order(x: torch.Tensor) -> torch.Tensor:
    """A view of ``x`` with its dimensions permuted into memory order (batch first), so that flattening
    it copies nothing: a channels-last batch flattens as N, H, W, C. Other layouts come back as they are."""
    if x.is_contiguous() or x.dim() < 3:
        return x
    order = [0] + sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    permuted = x.permute(order)
    return permuted if permuted.is_contiguous() else x


def encoding_shape(x_shape: torch.Size, spec: QuantSpec) -> tuple[int, ...]:
    """Shape of the scale/offset tensors for a tensor of ``x_shape``: (), (C,) or (C, blocks)."""
    if spec.axis is None:
        return ()
    axis = spec.axis % len(x_shape)
    if spec.block_size is None:
        return (x_shape[axis],)
    per_channel = math.prod(size for i, size in enumerate(x_shape) if i != axis)
    return (x_shape[axis], per_channel // spec.block_size)


def broadcastable(values: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per-channel ``values`` reshaped to broadcast against ``x`` along the channel axis."""
    if spec.axis is None:
        return values
    shape = [1] * x.dim()
    shape[spec.axis % x.dim()] = -1
    return values.reshape(shape)
