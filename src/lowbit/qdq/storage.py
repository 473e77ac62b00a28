"""Which ONNX integer type and zero point store an encoding's grid exactly."""

from __future__ import annotations

import torch

from lowbit.quant.encoding import Encoding


def onnx_storage(encoding: Encoding) -> tuple[str, torch.Tensor]:
    """(ONNX integer type name, zero point): signed symmetric grids as int8/int16 with zero point 0,
    every other grid as uint8/uint16 with zero point −offset."""
    width = _storage_bits(encoding)
    if encoding.is_signed_symmetric:
        return f"int{width}", torch.zeros_like(encoding.offset)
    return f"uint{width}", -encoding.offset


def narrower_than_storage(encoding: Encoding) -> bool:
    """Whether the grid has fewer levels than its stored type, so QuantizeLinear's saturation alone would let
    values past the grid's ends through (a 4-bit grid stored as uint8)."""
    return encoding.spec.levels < 2 ** _storage_bits(encoding)


def _storage_bits(encoding: Encoding) -> int:
    return 8 if encoding.spec.bits <= 8 else 16
