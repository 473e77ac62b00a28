"""Per-tensor fake quantization with learned scale and zero point (LSQ, LSQ+) whose backward is two fused passes
and a dot product: the same gradients as torch's learnable kernel, which spends most of a QAT step on activations."""

from __future__ import annotations

import torch


class _PerTensorLSQ(torch.autograd.Function):
    """y = (clamp(round(x/s) + z, 0, top) − z)·s; gradients to x inside the grid, LSQ's to s, LSQ+'s to z."""

    @staticmethod
    def forward(ctx, x, scale, learned_zero_point, zero_point, top, factor):
        output, inside = torch.ops.aten.fake_quantize_per_tensor_affine_cachemask(x, float(scale), zero_point, 0, top)
        ctx.save_for_backward(x, output, inside, scale)
        ctx.factor, ctx.zero_point_learns = factor, learned_zero_point is not None
        return output

    @staticmethod
    def backward(ctx, upstream):
        x, output, inside, scale = ctx.saved_tensors
        upstream = upstream.contiguous()
        to_x = torch.where(inside, upstream, 0.0)
        # d y/d s: (y − x)/s inside the grid, y/s (the clipped grid value) outside
        per_scale = torch.where(inside, output - x, output)
        to_scale = torch.dot(upstream.reshape(-1), per_scale.reshape(-1)) / scale.reshape(()) * ctx.factor
        to_zero_point = None
        if ctx.zero_point_learns:  # d y/d z: −s outside the grid, 0 inside
            to_zero_point = ((to_x.sum() - upstream.sum()) * scale.reshape(()) * ctx.factor).reshape(1)
        return to_x, to_scale.reshape(scale.shape), to_zero_point, None, None, None


def per_tensor_lsq(x: torch.Tensor, scale: torch.Tensor, learned_zero_point: torch.Tensor | None, zero_point: int,
                   top: int, factor: float) -> torch.Tensor:
    """Fake-quantize float32 ``x`` on the grid (``scale``, ``zero_point``) over [0, top]; ``scale`` and the
    ``learned_zero_point`` parameter (whose rounding is ``zero_point``; None: fixed) get LSQ gradients × ``factor``."""
    return _PerTensorLSQ.apply(x.contiguous(), scale, learned_zero_point, zero_point, top, factor)
