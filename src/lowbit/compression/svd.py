"""Low-rank replacements of a layer (Zhang et al. 2016; Jaderberg et al. 2014): weight SVD (k×k with ``rank``
outputs, then 1×1; a Linear as two Linears) and spatial SVD (k×1 with ``rank`` outputs, then 1×k)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.errors import SpecError
from lowbit.torch.batchnorm_fold import own_forward


def _check(layer: nn.Module, rank: int, kinds: tuple, method: str) -> None:
    """SpecError unless ``layer`` is a torch layer of ``kinds`` computed by torch's own forward, with one group and
    zero padding, and ``rank`` ≥ 1."""
    if not isinstance(layer, kinds) or own_forward(layer):
        raise SpecError(f"{method} replaces a {' or '.join(k.__name__ for k in kinds)} computed by torch's own "
                        f"forward, not a {type(layer).__name__}")
    if getattr(layer, "groups", 1) != 1 or getattr(layer, "padding_mode", "zeros") != "zeros":
        raise SpecError(f"{method} needs a convolution with one group and zero padding "
                        f"(got groups={layer.groups}, padding_mode={layer.padding_mode!r})")
    if rank < 1:
        raise SpecError(f"{method} needs a rank of at least 1, got {rank}")


def _factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(left, right) with left @ right the best rank-``rank`` approximation of ``matrix``, √σ on each side."""
    if rank > min(matrix.shape):
        raise SpecError(f"rank {rank} is above the layer's full rank {min(matrix.shape)}: it would save nothing")
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(matrix.dtype), (root[:, None] * vh[:rank]).to(matrix.dtype)


def zero_padding(layer: nn.Conv2d) -> tuple[int, int]:
    """The layer's zero padding per side as two numbers (``"same"`` resolved; SpecError where it pads unevenly)."""
    if layer.padding == "valid":
        return 0, 0
    if layer.padding != "same":
        return tuple(layer.padding)
    spans = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
    if any(span % 2 for span in spans):
        raise SpecError(f"the 'same' padding of a {tuple(layer.kernel_size)} kernel is uneven: it cannot be split")
    return tuple(span // 2 for span in spans)


@torch.no_grad()
def weight_svd(layer: nn.Module, rank: int) -> nn.Sequential:
    """``layer`` (Conv2d or Linear) as two layers through ``rank`` channels: the layer's kernel with ``rank``
    outputs, then 1×1 (a Linear: two Linears); exact where the weight's rank is at most ``rank``."""
    _check(layer, rank, (nn.Conv2d, nn.Linear), "weight_svd")
    weight = layer.weight
    left, right = _factors(weight.reshape(weight.shape[0], -1), rank)
    with_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, with_bias)
        first.weight.copy_(right)
        second.weight.copy_(left)
    else:
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                          bias=False)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=with_bias)
        first.weight.copy_(right.reshape(rank, *weight.shape[1:]))
        second.weight.copy_(left.reshape(layer.out_channels, rank, 1, 1))
    if with_bias:
        second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(weight.device).train(layer.training)


@torch.no_grad()
def spatial_svd(layer: nn.Conv2d, rank: int) -> nn.Sequential:
    """``layer`` (a k_h×k_w Conv2d) as a k_h×1 convolution with ``rank`` outputs, then 1×k_w; strides, dilations
    and zero padding split between them, so the pair is exact where the weight's spatial rank is at most ``rank``."""
    _check(layer, rank, (nn.Conv2d,), "spatial_svd")
    weight = layer.weight
    outputs, inputs, height, width = weight.shape
    # rows (input channel, kernel row), columns (output channel, kernel column)
    matrix = weight.permute(1, 2, 0, 3).reshape(inputs * height, outputs * width)
    left, right = _factors(matrix, rank)
    (pad_h, pad_w), (stride_h, stride_w), (dil_h, dil_w) = zero_padding(layer), layer.stride, layer.dilation
    first = nn.Conv2d(inputs, rank, (height, 1), (stride_h, 1), (pad_h, 0), (dil_h, 1), bias=False)
    second = nn.Conv2d(rank, outputs, (1, width), (1, stride_w), (0, pad_w), (1, dil_w), bias=layer.bias is not None)
    first.weight.copy_(left.reshape(inputs, height, rank).permute(2, 0, 1).unsqueeze(-1))
    second.weight.copy_(right.reshape(rank, outputs, width).permute(1, 0, 2).unsqueeze(2))
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(weight.device).train(layer.training)
