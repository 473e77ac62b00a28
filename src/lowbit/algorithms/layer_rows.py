"""A Conv1d/Conv2d/Linear layer as a matrix product on rows, each the input patch of one output position, so
per-layer optimisations (AdaRound, sequential MSE) work on sampled positions instead of whole feature maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROW_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def rows_unsupported(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot be handled as rows, or None when it can."""
    if not isinstance(layer, ROW_LAYERS):
        return f"{type(layer).__name__} is not a Conv1d, Conv2d or Linear"
    base = next(cls for cls in ROW_LAYERS if isinstance(layer, cls))
    return f"{type(layer).__name__} overrides forward" if type(layer).forward is not base.forward else None


def layer_groups(layer: nn.Module) -> int:
    """The layer's group count (1 for Linear)."""
    return getattr(layer, "groups", 1)


def sample_rows(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, count: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random output positions of one batch (all when there are fewer): the input patches
    ``[rows, groups, in/groups · kernel]`` of ``x`` and the matching outputs ``[rows, out]`` of ``y``."""
    if isinstance(layer, nn.Linear):
        inputs, outputs = x.reshape(-1, 1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        chosen = _choose(inputs.shape[0], count, generator)
        return inputs[chosen], outputs[chosen]
    x2, y2 = (x.unsqueeze(2), y.unsqueeze(2)) if isinstance(layer, nn.Conv1d) else (x, y)
    batch, channels, out_h, out_w = y2.shape
    chosen = _choose(batch * out_h * out_w, count, generator)
    n, rest = chosen // (out_h * out_w), chosen % (out_h * out_w)
    oh, ow = rest // out_w, rest % out_w
    padded, (stride_h, stride_w), (dil_h, dil_w), (k_h, k_w) = _padded_2d(layer, x2)
    ih = oh[:, None] * stride_h + torch.arange(k_h, device=x.device)[None, :] * dil_h
    iw = ow[:, None] * stride_w + torch.arange(k_w, device=x.device)[None, :] * dil_w
    patches = padded[n[:, None, None], :, ih[:, :, None], iw[:, None, :]]
    patches = patches.permute(0, 3, 1, 2).reshape(len(chosen), layer_groups(layer), -1)
    outputs = y2[n, :, oh, ow]
    return patches, outputs


def rows_forward(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
    """The layer's output ``[rows, out]`` for input patches ``[rows, groups, k]`` and its weight."""
    per_group = weight.reshape(groups, weight.shape[0] // groups, -1)
    output = torch.einsum("rgk,gok->rgo", rows, per_group).reshape(rows.shape[0], weight.shape[0])
    return output if bias is None else output + bias


def _choose(total: int, count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.arange(total) if total <= count else torch.randperm(total, generator=generator)[:count]


def _padded_2d(layer: nn.Module, x: torch.Tensor):
    """``x`` padded as the layer pads it, and the layer's 2-D stride, dilation and kernel size."""
    two_d = lambda values, fill: tuple(values) if len(values) == 2 else (fill,) + tuple(values)
    kernel, dilation, stride = (two_d(values, 1) for values in (layer.kernel_size, layer.dilation, layer.stride))
    if layer.padding == "valid":
        pads = [(0, 0), (0, 0)]
    elif layer.padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = [(t // 2, t - t // 2) for t in totals]
    else:
        pads = [(p, p) for p in two_d(layer.padding, 0)]
    flat = [pads[1][0], pads[1][1], pads[0][0], pads[0][1]]
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return F.pad(x, flat, mode=mode), stride, dilation, kernel
