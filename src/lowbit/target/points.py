"""A quantization plan's entries and the specs a target gives them: shared by both front ends."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from lowbit.errors import SpecError
from lowbit.quant.range_estimators import SCHEMES
from lowbit.quant.spec import QuantSpec
from lowbit.target.rules import OpRule
from lowbit.target.target import Target

WEIGHT_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0}
"""Output-channel axis of the weight of each weighted op type (per-channel quantization)."""


@dataclass(frozen=True)
class QuantPoint:
    """One quantizer: ``role`` "input", "output" or "weight"; ``node`` the graph node (torch) or tensor (ONNX) it
    follows (op input: the consumer); ``module`` the weight's module or initializer; ``argument`` the input read."""

    key: str
    role: str
    node: str
    op_type: str
    spec: QuantSpec
    module: str | None = None
    argument: str | None = None
    constraints: tuple[float, float] | None = None

    @property
    def tensor(self) -> str:
        """The tensor (ONNX) or node (torch) whose values this quantizer reads: ``argument``, else ``node``."""
        return self.argument or self.node


def activation_spec(rule: OpRule, target: Target) -> QuantSpec:
    """Spec of an activation quantizer under ``rule``."""
    return QuantSpec(bits=rule.activation.bits, symmetric=rule.activation.symmetric,
                     signed=not target.unsigned_symmetric)


def weight_spec(rule: OpRule, op_type: str, axis: int | None = None, strict: bool = False) -> QuantSpec | None:
    """Spec of a weight quantizer under ``rule``, or None when weights stay in float; ``axis``
    overrides the op type's output-channel axis (ONNX Gemm without transB, MatMul); ``strict``: the target's
    strict_symmetric (symmetric grids drop their most negative level)."""
    weight = rule.param("weight")
    if not weight.quantized or weight.dtype != "int":
        return None
    axis = WEIGHT_CHANNEL_AXIS.get(op_type) if axis is None else axis
    return QuantSpec(bits=weight.bits, symmetric=weight.symmetric, signed=True, strict=strict and weight.symmetric,
                     axis=axis if weight.per_channel else None)


def check_sim_options(param_bits: int | None, act_bits: int | None, scheme: str) -> None:
    """SpecError unless the bit-width overrides are integers in 2..16 and ``scheme`` is known."""
    for label, bits in (("param_bits", param_bits), ("act_bits", act_bits)):
        if bits is not None and (not isinstance(bits, int) or not 2 <= bits <= 16):
            raise SpecError(f"{label} must be an integer in 2..16, got {bits!r}")
    if scheme not in SCHEMES:
        raise SpecError(f"unknown calibration scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


class PlannedQuantizers:
    """What both front ends' sims share: a plan (``points``) and its quantizers (``_quantizers``) by key."""

    points: list[QuantPoint]
    _quantizers: dict

    def quantizers(self) -> dict:
        """Every quantizer by key (activations: graph node or tensor names; weights: parameter names)."""
        return dict(self._quantizers)

    def point(self, key: str) -> QuantPoint:
        """The plan entry of quantizer ``key``."""
        return next(p for p in self.points if p.key == key)

    def encodings_changed(self) -> None:
        """Call after setting quantizers' encodings directly; the torch sim reads them on every run."""

    @property
    def is_calibrated(self) -> bool:
        """Whether every quantizer has an encoding."""
        return all(q.encoding is not None for q in self._quantizers.values())

    def quantizer_counts(self) -> dict[str, int]:
        """Number of quantizers by role (input, output, weight)."""
        return dict(Counter(point.role for point in self.points))
