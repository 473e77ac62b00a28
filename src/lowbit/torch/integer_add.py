"""An addition of two quantized tensors that the sim computes as the runtime's integer kernel does: onnxruntime's
QLinearAdd, or LiteRT's fixed-point addition."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.quant.quantizer import Quantizer, fast_path_allowed
from lowbit.torch.fixed_point_add import fixed_point_add_grid
from lowbit.torch.integer_emulation import emulable_add, requantized_add_grid, stored_zero_point


class IntegerAdd(nn.Module):
    """a + b, QLinearAdd's result when both inputs and the output are quantized (straight-through gradients);
    exports as Add. ``through_relu``: fused only if the output grid starts at zero (onnxruntime drops the Relu).
    Training with ``exact_training`` off returns the float sum: the output quantizer's fake quantization is
    within an output step of QLinearAdd, and its learned range gets LSQ's gradient from the values it rounds."""

    def __init__(self, a_quantizer: Quantizer, b_quantizer: Quantizer, output_quantizer: Quantizer,
                 through_relu: bool = False):
        super().__init__()
        self.quantizers = (a_quantizer, b_quantizer, output_quantizer)  # by reference, not submodules
        self.through_relu = through_relu
        self.exact_training = True
        self.fixed_point = False
        """Whether the runtime adds in fixed point (LiteRT, ``Kernels.fixed_point_add``), set by the sim."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or any(q.mode != "quantize" for q in self.quantizers):
            return a + b
        encodings = tuple(q.encoding for q in self.quantizers)
        if not emulable_add(*encodings) or (self.through_relu and not _starts_at_zero(encodings[2])):
            return a + b
        add_grid = fixed_point_add_grid if self.fixed_point else requantized_add_grid
        if not torch.is_grad_enabled() and fast_path_allowed():
            a_quantizer, b_quantizer, output_quantizer = self.quantizers
            exact, integers = add_grid(
                a, b, *encodings, a_integers=a_quantizer.grid_integers(a, a_quantizer.scale),
                b_integers=b_quantizer.grid_integers(b, b_quantizer.scale))
            output_quantizer.mark_on_grid(exact, integers)
            return exact
        total = a + b
        if torch.is_grad_enabled() and not self.exact_training:
            return total
        exact = add_grid(a.detach(), b.detach(), *encodings)[0]
        if not torch.is_grad_enabled():
            return exact
        return total + (exact - total).detach()


def _starts_at_zero(encoding) -> bool:
    """Whether the 8-bit grid's lowest stored value is zero, so a Relu before its quantizer does nothing."""
    zero_point, low, _ = stored_zero_point(encoding)
    return float(zero_point) == low
