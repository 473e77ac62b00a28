"""QuantSpec: how one tensor is quantized (bits, symmetry, sign, granularity)."""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.errors import SpecError


@dataclass(frozen=True)
class QuantSpec:
    """Bitwidth, symmetry and granularity of one quantizer; ``axis`` makes it per-channel along that axis.
    ``block_size`` (with ``axis``) splits the last dimension into blocks; ``signed=False`` + ``symmetric``: unsigned;
    ``strict`` (symmetric, signed): the grid drops its most negative level (−127..127 at 8 bits)."""

    bits: int = 8
    symmetric: bool = False
    signed: bool = True
    axis: int | None = None
    block_size: int | None = None
    strict: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise SpecError(f"bitwidth must be an integer in 2..16, got {self.bits!r}")
        if self.block_size is not None:
            if self.axis is None:
                raise SpecError("per-block quantization needs a channel axis")
            if self.block_size < 1:
                raise SpecError(f"block size must be positive, got {self.block_size}")
        if self.strict and not (self.symmetric and self.signed):
            raise SpecError("a strict symmetric grid needs a symmetric, signed spec")

    @property
    def levels(self) -> int:
        """Number of grid points, 2**bits."""
        return 1 << self.bits

    @property
    def qmin(self) -> int:
        """Lowest grid index (of 0 .. 2**bits − 1): 1 on a strict symmetric grid."""
        return 1 if self.strict else 0

    @property
    def qmax(self) -> int:
        """Highest grid index, 2**bits − 1."""
        return self.levels - 1

    @property
    def granularity(self) -> str:
        """'per_tensor', 'per_channel' or 'per_block'."""
        if self.block_size is not None:
            return "per_block"
        return "per_channel" if self.axis is not None else "per_tensor"
