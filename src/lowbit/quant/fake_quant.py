"""Quantize, dequantize and fake-quantize (straight-through gradients) a tensor with an Encoding."""

from __future__ import annotations

import torch

from lowbit.quant.encoding import Encoding
from lowbit.quant.layout import as_rows, broadcastable


def quantize(x: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """Integer grid index q in [qmin, 2**bits − 1] (int64) nearest to each value of ``x``.
    Multiplies by 1/scale, as torch's fused fake-quant kernels do, so ties round the same way."""
    spec = encoding.spec
    if spec.block_size is not None:
        q = torch.round(as_rows(x, spec) * (1.0 / encoding.scale.reshape(-1, 1))) - encoding.offset.reshape(-1, 1)
        return _unrows(q.clamp(spec.qmin, spec.qmax), x, spec).to(torch.int64)
    q = torch.round(x * (1.0 / broadcastable(encoding.scale, x, spec))) - broadcastable(encoding.offset, x, spec)
    return q.clamp(spec.qmin, spec.qmax).to(torch.int64)


def dequantize(q: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """Real values (q + offset) · scale of grid indices ``q``."""
    spec = encoding.spec
    if spec.block_size is not None:
        rows = as_rows(q, spec).to(torch.float32)
        real = (rows + encoding.offset.reshape(-1, 1)) * encoding.scale.reshape(-1, 1)
        return _unrows(real, q, spec)
    return (q + broadcastable(encoding.offset, q, spec)).to(torch.float32) * broadcastable(encoding.scale, q, spec)


def fake_quantize(x: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """dequantize(quantize(x)) with straight-through gradients inside the range, zero outside.
    Per-tensor and per-channel use torch's fused fake-quant kernels."""
    spec = encoding.spec
    qmin, qmax = spec.qmin, spec.qmax
    if spec.block_size is not None:
        return _fake_quantize_blocks(x, encoding)
    zero_point = (-encoding.offset).to(torch.int32)
    if x.dtype != torch.float32:
        return fake_quantize(x.float(), encoding).to(x.dtype)
    if spec.axis is None and not (torch.is_grad_enabled() and x.requires_grad) and not torch.onnx.is_in_onnx_export():
        return per_tensor_grid(x, encoding).mul_(encoding.scale.reshape(()))
    if spec.axis is None and _composable(encoding):
        low = float(encoding.offset.reshape(()))
        return _PerTensorStraightThrough.apply(x, encoding.scale.reshape(()), low + qmin, low + qmax, False)
    if spec.axis is None:
        return torch.fake_quantize_per_tensor_affine(x, encoding.scale.reshape(1), zero_point.reshape(1), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, encoding.scale, zero_point, spec.axis % x.dim(), qmin, qmax)


def per_tensor_grid(x: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """round(x · fl(1/scale)) clamped to a per-tensor grid, as torch's fused kernel computes it, vectorised. The
    bound is a float (the faster clamp), or a tensor while torch.compile traces (a float would break its graph)."""
    low = encoding.offset.reshape(())
    low = low.to(x.dtype) if torch.compiler.is_compiling() else float(low)
    grid = torch.mul(x, 1.0 / encoding.scale.reshape(())).round_()
    return grid.clamp_(low + encoding.spec.qmin, low + encoding.spec.qmax)


def _fake_quantize_blocks(x: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """Per-block fake quantization composed from ops, with the same STE gradient."""
    spec = encoding.spec
    rows = as_rows(x, spec)
    scale = encoding.scale.reshape(-1, 1)
    offset = encoding.offset.reshape(-1, 1).to(rows.dtype)
    grid = torch.round(rows * (1.0 / scale)) - offset
    inside = (grid >= spec.qmin) & (grid <= spec.qmax)
    real = (grid.clamp(spec.qmin, spec.qmax) + offset) * scale
    straight_through = rows * inside + (real - rows * inside).detach()
    return _unrows(straight_through, x, spec)


def _unrows(rows: torch.Tensor, like: torch.Tensor, spec) -> torch.Tensor:
    """Inverse of :func:`as_rows` for a tensor shaped like ``like``."""
    axis = spec.axis % like.dim()
    moved_shape = (like.shape[axis],) + tuple(s for i, s in enumerate(like.shape) if i != axis)
    return rows.reshape(moved_shape).movedim(0, axis)


def fake_quantize_dividing(x: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """Per-tensor fake quantization that divides by the scale, as onnxruntime's QuantizeLinear does
    (torch's fused kernel multiplies by the reciprocal, which rounds differently at rare ties)."""
    spec = encoding.spec
    if x.dtype == torch.float32 and _composable(encoding):
        low = float(encoding.offset.reshape(()))
        return _PerTensorStraightThrough.apply(x, encoding.scale.reshape(()), low + spec.qmin, low + spec.qmax, True)
    offset = encoding.offset.reshape(()).to(x.dtype)
    grid = torch.round(x / encoding.scale.reshape(())) - offset
    inside = (grid >= spec.qmin) & (grid <= spec.qmax)
    real = (grid.clamp(spec.qmin, spec.qmax) + offset) * encoding.scale.reshape(())
    return x * inside + (real - x * inside).detach()


def _composable(encoding: Encoding) -> bool:
    """Whether :class:`_PerTensorStraightThrough` may stand in: a fixed scale, and no graph being
    exported or traced (those record torch's fake-quant op)."""
    return not (encoding.scale.requires_grad or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


class _PerTensorStraightThrough(torch.autograd.Function):
    """Per-tensor fake quantization, straight-through gradient 1 where the grid index lies in [low, high], 0 outside.
    Vectorised: torch's fused kernel's values (``divide``: dividing by the scale), faster than its serial kernel."""

    @staticmethod
    def forward(ctx, x, scale, low, high, divide):
        grid = torch.div(x, scale) if divide else torch.mul(x, 1.0 / scale)
        grid.round_()
        clamped = grid.clamp(low, high)
        ctx.save_for_backward(clamped == grid)
        return clamped.mul_(scale)

    @staticmethod
    def backward(ctx, gradient):
        (inside,) = ctx.saved_tensors
        return gradient * inside, None, None, None, None
