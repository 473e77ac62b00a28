"""An addition of two quantized tensors as LiteRT's default CPU kernels (XNNPACK) compute it: each input's scale ratio
to the output as an integer multiplier of at most 22 bits, a sum of products, and a shift that rounds half up."""

from __future__ import annotations

import torch

from lowbit.kernels import fixed_point_add_parameters
from lowbit.quant.encoding import Encoding
from lowbit.torch.integer_emulation import clamp_to_grid, stored_zero_point


def fixed_point_add_grid(a: torch.Tensor, b: torch.Tensor, a_encoding: Encoding, b_encoding: Encoding,
                         output_encoding: Encoding, a_integers: torch.Tensor | None = None,
                         b_integers: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a + b on the output grid, its centred grid indices), from the centred input indices round(a / sa),
    round(b / sb) (``a_integers`` / ``b_integers`` where known)."""
    a_scale, b_scale = a_encoding.scale.reshape(()).float(), b_encoding.scale.reshape(()).float()
    output_scale = output_encoding.scale.reshape(()).float()
    a_ratio, b_ratio = float(a_scale / output_scale), float(b_scale / output_scale)  # float32 divisions
    shift, a_multiplier, b_multiplier = fixed_point_add_parameters(a_ratio, b_ratio)
    a_centred = (torch.div(a, a_scale).round_() if a_integers is None else a_integers).double()
    b_centred = (torch.div(b, b_scale).round_() if b_integers is None else b_integers).double()
    total = a_centred.mul_(a_multiplier).add_(b_centred.mul_(b_multiplier)).add_(2.0 ** (shift - 1))
    zero, low, high = stored_zero_point(output_encoding)
    grid = total.div_(2.0 ** shift).floor_().add_(zero).clamp_(low, high).sub_(zero).float()
    grid = clamp_to_grid(grid, output_encoding)
    return torch.mul(grid, output_scale), grid
