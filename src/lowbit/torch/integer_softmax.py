"""A softmax between two 8-bit quantizers, computed as onnxruntime's QLinearSoftmax computes it (table
exponentials, float32 row sums, ⌊1 / y_scale⌋ scaling: outputs near the top of the grid come out one step low)."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from lowbit.quant.encoding import Encoding
from lowbit.quant.quantizer import Quantizer, fast_path_allowed
from lowbit.torch.integer_emulation import clamp_to_grid, stored_zero_point

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_RESERVED_BITS = 5.0  # headroom onnxruntime keeps below float32's largest value


@functools.lru_cache(maxsize=64)
def exponential_table(input_scale: float, length: int) -> tuple[float, ...]:
    """exp((i − 255 + shift) · scale) as float32 for the 256 steps i below the row maximum (i = 255),
    where shift = max(0, ln(FLT_MAX / length) − 5) / scale keeps a sum of ``length`` of them finite."""
    headroom = math.log(float(np.float32(_FLOAT32_MAX) / np.float32(length)))
    shift = max(0.0, headroom - _RESERVED_BITS) / input_scale
    return tuple(float(np.float32(math.exp((i - 255.0 + shift) * input_scale))) for i in range(256))


def qlinear_softmax(x: torch.Tensor, dim: int, input_encoding: Encoding,
                    output_encoding: Encoding) -> tuple[torch.Tensor, torch.Tensor]:
    """QLinearSoftmax of ``x`` (on the input grid) along ``dim``: the output values and their centred
    output-grid indices (float32)."""
    input_scale = float(input_encoding.scale.reshape(()))
    steps = torch.round(x.detach().double() / input_scale)
    steps = (steps - steps.amax(dim, keepdim=True) + 255).clamp(0, 255).long()
    table = torch.tensor(exponential_table(np.float32(input_scale).item(), x.shape[dim]),
                         dtype=torch.float32, device=x.device)
    exponentials = table[steps]
    total = torch.zeros_like(exponentials.select(dim, 0))
    for part in exponentials.unbind(dim):  # float32, one element after the other, as the kernel adds
        total = total + part
    output_scale = output_encoding.scale.reshape(()).float()
    inverse = torch.floor(torch.ones((), dtype=torch.float32, device=x.device) / output_scale)
    zero_point, low, high = stored_zero_point(output_encoding)
    ratio = exponentials.double() * inverse.double() / total.unsqueeze(dim).double()
    stored = torch.round(ratio).double() + zero_point.to(x.device)
    centred = clamp_to_grid((stored.clamp(low, high) - zero_point.to(x.device)).float(), output_encoding)
    return centred * output_scale, centred


def emulable_softmax(input_encoding: Encoding | None, output_encoding: Encoding | None) -> bool:
    """Whether onnxruntime runs this softmax as QLinearSoftmax: per-tensor grids of at most 8 bits on both sides."""
    return all(e is not None and e.scale.numel() == 1 and e.spec.bits <= 8 and e.spec.axis is None
               for e in (input_encoding, output_encoding))


class IntegerSoftmax(nn.Module):
    """softmax(x, dim); between two quantizers in quantize mode the result is QLinearSoftmax's (straight-through
    gradients to the float softmax). Exports as a plain Softmax."""

    def __init__(self, input_quantizer: Quantizer, output_quantizer: Quantizer, dim: int):
        super().__init__()
        self.quantizers = (input_quantizer, output_quantizer)  # by reference, not submodules
        self.dim = dim
        self.table = True
        """Whether the runtime computes it from a table (``Kernels.table_softmax``), set by the sim."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = torch.softmax(x, self.dim)
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or not self.table or \
                any(q.mode != "quantize" for q in self.quantizers):
            return result
        encodings = tuple(q.encoding for q in self.quantizers)
        if not emulable_softmax(*encodings):
            return result
        exact, integers = qlinear_softmax(x, self.dim % x.dim(), *encodings)
        if not torch.is_grad_enabled():
            if fast_path_allowed():
                self.quantizers[1].mark_on_grid(exact, integers)
            return exact
        return result + (exact - result).detach()
