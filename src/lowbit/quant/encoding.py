"""Encoding: the scale and offset chosen for one tensor under one QuantSpec (AIMET convention)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.quant.spec import QuantSpec

_TINY_SCALE = 1e-8


@dataclass(frozen=True)
class Encoding:
    """real ≈ (q + offset) · scale with q in [0, 2**bits − 1]; tensors hold one value per channel/block.
    Build it with :meth:`from_range`; ``offset`` is AIMET's (≤ 0): the ONNX/torch zero point is ``-offset``."""

    spec: QuantSpec
    scale: torch.Tensor
    offset: torch.Tensor

    @classmethod
    def from_range(cls, spec: QuantSpec, min_value, max_value) -> "Encoding":
        """Smallest grid of ``spec`` covering [min, max] that represents zero exactly."""
        lo = torch.nan_to_num(torch.as_tensor(min_value, dtype=torch.float32).clamp(max=0.0))
        hi = torch.nan_to_num(torch.as_tensor(max_value, dtype=torch.float32).clamp(min=0.0))
        steps = spec.levels - 1
        if spec.symmetric:
            if not spec.signed and bool((lo >= 0).all()):
                scale = (hi / steps).clamp(min=_TINY_SCALE)
                offset = torch.zeros_like(scale, dtype=torch.int64)
            else:
                half = spec.levels // 2
                scale = (torch.maximum(-lo, hi) / (half - 1)).clamp(min=_TINY_SCALE)
                offset = torch.full_like(scale, -half, dtype=torch.int64)
        else:
            scale = ((hi - lo) / steps).clamp(min=_TINY_SCALE)
            offset = torch.round(lo / scale).clamp(-steps, 0).to(torch.int64)
        return cls(spec, scale, offset)

    @classmethod
    def from_scale_offset(cls, spec: QuantSpec, scale, offset) -> "Encoding":
        """Encoding with the given scale and (AIMET) offset, as read from a file."""
        return cls(spec, torch.as_tensor(scale, dtype=torch.float32), torch.as_tensor(offset, dtype=torch.int64))

    @property
    def min(self) -> torch.Tensor:
        """Smallest representable value (per channel/block)."""
        return self.offset.to(torch.float32) * self.scale

    @property
    def max(self) -> torch.Tensor:
        """Largest representable value (per channel/block)."""
        return (self.offset + self.spec.levels - 1).to(torch.float32) * self.scale

    @property
    def zero_point(self) -> torch.Tensor:
        """ONNX/torch zero point on the unsigned grid [0, 2**bits − 1]."""
        return -self.offset

    @property
    def is_signed_symmetric(self) -> bool:
        """True when the grid is symmetric around zero ([-2**(b-1), 2**(b-1) − 1])."""
        return self.spec.symmetric and bool((self.offset == -(self.spec.levels // 2)).all())

    def to(self, device) -> "Encoding":
        """The same encoding with its tensors on ``device``."""
        return Encoding(self.spec, self.scale.to(device), self.offset.to(device))
