"""The int32 grid a quantized layer's bias is stored on: scale input_scale · weight_scale per output channel,
widened where a bias would overflow int32 (onnxruntime widens the weight scale instead, costing precision)."""

from __future__ import annotations

import torch

INT32_MIN, INT32_MAX = -2.0**31, 2.0**31 - 1


def int32_bias(bias: torch.Tensor, input_scale: torch.Tensor, weight_scale: torch.Tensor, widen: bool):
    """(integers as float, scale per channel) of ``bias`` on its int32 grid; ``widen``: scale |bias|/2**30 on overflow.
    Only for layers wider than 8 bits: onnxruntime's 8-bit integer kernels read the bias on the product grid."""
    scale = (input_scale.reshape(()) * weight_scale).to(torch.float32).expand(bias.shape)
    if widen:
        scale = torch.where(bias.abs() / scale > INT32_MAX, (bias.abs() / 2.0**30).to(torch.float32), scale)
    return torch.clamp(torch.round(bias / scale), INT32_MIN, INT32_MAX), scale
