"""Convolutions computed as onnxruntime's integer kernels (QLinearConv) compute them, so the sim predicts them
exactly: int32 accumulation, one float32 requantization multiply, rounding half to even, saturation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from lowbit.qdq.storage import narrower_than_storage, onnx_storage
from lowbit.quant.encoding import Encoding
from lowbit.quant.int32_bias import int32_bias


def emulable(input_encoding: Encoding | None, weight_encoding: Encoding | None,
             output_encoding: Encoding | None) -> bool:
    """Whether the layer maps onto onnxruntime's QLinearConv (per-tensor activations of at most 8 bits, stored
    as 8-bit types, signed-symmetric per-tensor or per-output-channel weights)."""
    if input_encoding is None or weight_encoding is None or output_encoding is None:
        return False
    activations = (input_encoding, output_encoding)
    return (all(e.spec.axis is None and e.spec.bits <= 8 for e in activations)
            and weight_encoding.spec.block_size is None and weight_encoding.spec.bits <= 8
            and weight_encoding.spec.axis in (None, 0) and weight_encoding.is_signed_symmetric)


@dataclass(frozen=True)
class ConvRequantization:
    """What QLinearConv needs besides its input: integer weights and bias, per-channel requantization multiplier,
    centred output range [low, high], scales and, where CPU kernels saturate int16 pair sums, their correction."""

    input_scale: torch.Tensor
    weights: torch.Tensor
    bias: torch.Tensor | None
    multiplier: torch.Tensor
    low: float
    high: float
    output_scale: torch.Tensor
    saturation: Callable[[torch.Tensor], torch.Tensor] | None = None

    def with_saturation(self, correction: Callable[[torch.Tensor], torch.Tensor] | None) -> "ConvRequantization":
        """The same integer form whose accumulation adds ``correction(input integers)``."""
        return replace(self, saturation=correction)


def conv_requantization(weight: torch.Tensor, bias: torch.Tensor | None, input_encoding: Encoding,
                        weight_encoding: Encoding, output_encoding: Encoding) -> ConvRequantization:
    """The integer form of a convolution with (fake-quantized) ``weight`` and float ``bias``."""
    input_scale = input_encoding.scale.reshape(())
    weight_scale = weight_encoding.scale
    weights = torch.round(weight / _per_channel(weight_scale, weight))
    if bias is not None:
        bias = int32_bias(bias, input_scale, weight_scale, widen=False)[0]
    output_scale = output_encoding.scale.reshape(())
    low = float(output_encoding.offset.reshape(()))
    return ConvRequantization(input_scale, weights, bias, (input_scale * weight_scale) / output_scale,
                              low, low + output_encoding.spec.levels - 1, output_scale)


def requantize_grid(convolve, x: torch.Tensor, integer_form: ConvRequantization,
                    integers: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``convolve`` as QLinearConv with ``integer_form`` (dequantized, on the output grid; ``x`` on the input grid)
    and its centred output grid indices; ``integers``, if given, must be round(x / input_scale)."""
    if integers is None:
        integers = torch.div(x, integer_form.input_scale).round_()
    accumulator = convolve(integers, integer_form.weights, integer_form.bias)
    if integer_form.saturation is not None:
        accumulator.add_(integer_form.saturation(integers))
    accumulator.mul_(_per_channel(integer_form.multiplier, accumulator, 1)).round_()
    accumulator.clamp_(integer_form.low, integer_form.high)
    return torch.mul(accumulator, integer_form.output_scale), accumulator


def _per_channel(values: torch.Tensor, like: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Per-channel ``values`` shaped to broadcast along ``axis`` of ``like`` (scalars unchanged)."""
    if values.dim() == 0:
        return values
    shape = [1] * like.dim()
    shape[axis] = -1
    return values.reshape(shape)


def stored_zero_point(encoding: Encoding) -> tuple[torch.Tensor, float, float]:
    """The zero point of a grid of at most 8 bits in the type the QDQ file stores it in, and that type's range."""
    type_name, zero_point = onnx_storage(encoding)
    low, high = (0.0, 255.0) if type_name == "uint8" else (-128.0, 127.0)
    return zero_point.reshape(()).double(), low, high


def requantized_add_grid(a: torch.Tensor, b: torch.Tensor, a_encoding: Encoding, b_encoding: Encoding,
                         output_encoding: Encoding, a_integers: torch.Tensor | None = None,
                         b_integers: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """a + b on the output grid as x86 QLinearAdd computes it (float32 ratios, fused multiply-adds) and its centred
    output grid indices; ``a_integers``/``b_integers``, when given, must be round(a / sa), round(b / sb)."""
    a_scale, b_scale = a_encoding.scale.reshape(()), b_encoding.scale.reshape(())
    output_scale = output_encoding.scale.reshape(())
    a_ratio, b_ratio = (a_scale / output_scale).double(), (b_scale / output_scale).double()
    a_zero, _, _ = stored_zero_point(a_encoding)
    b_zero, _, _ = stored_zero_point(b_encoding)
    c_zero, low, high = stored_zero_point(output_encoding)
    zero_sum = (a_ratio * a_zero + (b_ratio * b_zero).float().double()).float().double()
    fixed = (c_zero - zero_sum).float().double()
    a_stored = (torch.div(a, a_scale).round_() if a_integers is None else a_integers).double().add_(a_zero)
    b_stored = (torch.div(b, b_scale).round_() if b_integers is None else b_integers).double().add_(b_zero)
    inner = b_stored.mul_(b_ratio).add_(fixed).float().double()
    grid = a_stored.mul_(a_ratio).add_(inner).float().round_().clamp_(low, high)
    grid = clamp_to_grid(grid.sub_(c_zero.float()), output_encoding)
    return torch.mul(grid, output_scale), grid


def clamp_to_grid(centred: torch.Tensor, encoding: Encoding) -> torch.Tensor:
    """``centred`` grid indices clamped in place to the ends of a grid narrower than its stored type (the Clip
    the export writes after such a grid's Q/DQ pair); unchanged otherwise."""
    if narrower_than_storage(encoding):
        low = float(encoding.offset.reshape(()))
        centred.clamp_(low, low + encoding.spec.levels - 1)
    return centred


def emulable_add(a_encoding: Encoding | None, b_encoding: Encoding | None, output_encoding: Encoding | None) -> bool:
    """Whether an addition maps onto onnxruntime's QLinearAdd (three per-tensor encodings of at most 8 bits)."""
    encodings = (a_encoding, b_encoding, output_encoding)
    return all(e is not None and e.spec.axis is None and e.spec.bits <= 8 for e in encodings)
