"""onnxruntime's u8×s8 kernels on x86 CPUs without VNNI add adjacent products in saturating int16; the sim
adds clamp(s) − s for the few weight pairs that can saturate (same sign, |w0| + |w1| ≥ 129; not depthwise)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.encoding import Encoding

_INT16_LOW, _INT16_HIGH = -32768.0, 32767.0
_INPUT_HIGH = 255.0
_CHUNK_VALUES = 1 << 23  # pair sums computed at once (32 MiB of float32)
_DENSE_PATCH = 128  # patch length up to which a dense convolution beats gathering each pair's channels


@dataclass(frozen=True)
class SaturatingPairs:
    """The weight pairs that can saturate: reduction indices ``first`` and ``first + 1`` of output
    channel ``channels``, their integer weights (r, 2), and the input's zero point on the uint8 grid."""

    first: torch.Tensor
    channels: torch.Tensor
    weights: torch.Tensor
    zero_point: float
    out_channels: int


def applies(input_encoding: Encoding | None, weight_encoding: Encoding | None) -> bool:
    """Whether the layer runs on the u8×s8 kernel that saturates on CPUs without VNNI: 8-bit per-tensor
    input, signed-symmetric weights of at most 8 bits per tensor or per output channel."""
    return (input_encoding is not None and weight_encoding is not None
            and input_encoding.spec.bits == 8 and input_encoding.spec.axis is None
            and weight_encoding.spec.bits <= 8 and weight_encoding.spec.block_size is None
            and weight_encoding.spec.axis in (None, 0) and weight_encoding.is_signed_symmetric)


def find_pairs(weight_integers: torch.Tensor, input_encoding: Encoding) -> SaturatingPairs | None:
    """The saturating pairs of a (out_channels, K) integer weight matrix in reduction order, or None."""
    out_channels, length = weight_integers.shape
    even = weight_integers[:, : length - length % 2].reshape(out_channels, -1, 2)
    positive, negative = even.clamp(min=0).sum(-1) * _INPUT_HIGH, even.clamp(max=0).sum(-1) * _INPUT_HIGH
    mask = (positive > _INT16_HIGH) | (negative < _INT16_LOW)  # pairs leaving int16 for some inputs in [0, 255]
    if not bool(mask.any()):
        return None
    channels, pair = mask.nonzero(as_tuple=True)
    return SaturatingPairs(2 * pair, channels, even[channels, pair], float(input_encoding.zero_point.reshape(())),
                           out_channels)


def is_depthwise(layer: nn.Module) -> bool:
    """Convolutions with one input and one output channel per group run on a kernel without int16 pairs."""
    return (isinstance(layer, nn.modules.conv._ConvNd) and layer.groups > 1
            and layer.in_channels == layer.groups and layer.out_channels == layer.groups)


def layer_pairs(layer: nn.Module, weight_integers: torch.Tensor, input_encoding: Encoding) -> SaturatingPairs | None:
    """The saturating pairs of a Linear or Conv layer with these integer weights (None for depthwise); a conv's
    weights are first put in the order MLAS reduces over (channels-last im2col)."""
    if is_depthwise(layer):
        return None
    if not isinstance(layer, nn.Linear):
        weight_integers = weight_integers.flatten(2).transpose(1, 2).reshape(weight_integers.shape[0], -1)
    return find_pairs(weight_integers, input_encoding)


def _chunk(positions: int) -> int:
    """How many pairs to evaluate at once over ``positions`` output positions (a plain int, also in a trace: the
    chunks then stay those of the traced batch, whatever batch the traced program runs)."""
    return max(16, _CHUNK_VALUES // max(int(positions), 1))


def linear_correction(pairs: SaturatingPairs, integers: torch.Tensor) -> torch.Tensor:
    """clamp(s) − s summed per output channel, for centred input grid indices (…, K)."""
    rows = (integers.reshape(-1, integers.shape[-1]) + pairs.zero_point)
    correction = rows.new_zeros(rows.shape[0], pairs.out_channels)
    step = _chunk(rows.shape[0])
    for start in range(0, len(pairs.first), step):
        first = pairs.first[start:start + step]
        weights = pairs.weights[start:start + step]
        sums = rows[:, first] * weights[:, 0] + rows[:, first + 1] * weights[:, 1]
        correction.index_add_(1, pairs.channels[start:start + step], sums.clamp(_INT16_LOW, _INT16_HIGH).sub_(sums))
    return correction.reshape(*integers.shape[:-1], pairs.out_channels)


def conv_correction(layer: nn.modules.conv._ConvNd, pairs: SaturatingPairs, integers: torch.Tensor) -> torch.Tensor:
    """clamp(s) − s summed per output channel and position, for centred input grid indices (N, C, …);
    padding holds the zero point, as QLinearConv pads with it."""
    raw = integers + pairs.zero_point
    if layer.padding_mode == "zeros":
        raw = F.pad(raw, layer._reversed_padding_repeated_twice, value=pairs.zero_point)
    else:
        raw = F.pad(raw, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
    group_channels = layer.in_channels // layer.groups
    taps = int(torch.tensor(layer.kernel_size).prod())
    dense = layer.groups == 1 and group_channels * taps <= _DENSE_PATCH
    convolve = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(layer.kernel_size)]
    correction = None
    step = _chunk(raw.shape[0] * raw[0, 0].numel() * (1 if dense else 2))
    for start in range(0, len(pairs.first), step):
        first, channels = pairs.first[start:start + step], pairs.channels[start:start + step]
        both = torch.stack([first, first + 1], 1)
        weights = pairs.weights[start:start + step].to(raw.dtype)
        if dense:
            kernel = raw.new_zeros(len(first), taps, group_channels)
            rows = torch.arange(len(first), device=raw.device).unsqueeze(1).expand(-1, 2)
            kernel[rows, both // group_channels, both % group_channels] = weights
            kernel = kernel.transpose(1, 2).reshape(len(first), group_channels, *layer.kernel_size)
            sums = convolve(raw, kernel, None, layer.stride, 0, layer.dilation)
        else:
            out_per_group = layer.out_channels // layer.groups
            inputs = (channels // out_per_group * group_channels).unsqueeze(1) + both % group_channels
            kernel = raw.new_zeros(len(first) * 2, taps)
            kernel[torch.arange(len(first) * 2, device=raw.device), (both // group_channels).reshape(-1)] = \
                weights.reshape(-1)
            kernel = kernel.reshape(len(first), 2, *layer.kernel_size)
            sums = convolve(raw[:, inputs.reshape(-1)], kernel, None, layer.stride, 0, layer.dilation, len(first))
        if correction is None:
            correction = sums.new_zeros(sums.shape[0], layer.out_channels, *sums.shape[2:])
        correction.index_add_(1, channels, sums.clamp(_INT16_LOW, _INT16_HIGH).sub_(sums))
    return correction
