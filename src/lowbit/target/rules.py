"""The resolved view of a target that front ends read: one rule per op type, tensor and parameter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TensorRule:
    """How an activation tensor is kept: ``dtype`` "int" means quantized to ``bits``;
    "float" means left in floating point (``bits`` 16 or 32) with no quantizer."""

    bits: int
    symmetric: bool
    dtype: str


@dataclass(frozen=True)
class ParamRule:
    """Whether and how one kind of parameter (weight, bias, ...) of an op is quantized."""

    quantized: bool
    bits: int
    symmetric: bool
    per_channel: bool
    dtype: str


@dataclass(frozen=True)
class OpRule:
    """Everything a target says about one op type, with defaults already applied.
    ``default_param`` is the rule for parameter kinds that ``params`` does not name."""

    input_quantized: bool
    output_quantized: bool
    activation: TensorRule
    params: Mapping[str, ParamRule] = field(hash=False)
    encoding_constraints: tuple[float, float] | None
    default_param: ParamRule

    def param(self, kind: str) -> ParamRule:
        """The rule for parameter ``kind`` ("weight", "bias", ...), or ``default_param``."""
        return self.params.get(kind, self.default_param)
