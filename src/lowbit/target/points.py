"""A quantization plan's entries and the specs a target gives them: shared by both front ends."""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.quant.spec import QuantSpec
from lowbit.target.rules import OpRule
from lowbit.target.target import Target

WEIGHT_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0}
"""Output-channel axis of the weight of each weighted op type (per-channel quantization)."""


@dataclass(frozen=True)
class QuantPoint:
    """One quantizer: ``role`` is "input", "output" or "weight"; ``node`` the graph node (torch) or
    tensor (ONNX) it follows (for an op input, the consuming node); ``module`` the module path
    (torch) or initializer name (ONNX) for weights; ``argument`` the input an op-input quantizer reads."""

    key: str
    role: str
    node: str
    op_type: str
    spec: QuantSpec
    module: str | None = None
    argument: str | None = None
    constraints: tuple[float, float] | None = None


def activation_spec(rule: OpRule, target: Target) -> QuantSpec:
    """Spec of an activation quantizer under ``rule``."""
    return QuantSpec(bits=rule.activation.bits, symmetric=rule.activation.symmetric,
                     signed=not target.unsigned_symmetric)


def weight_spec(rule: OpRule, op_type: str, axis: int | None = None) -> QuantSpec | None:
    """Spec of a weight quantizer under ``rule``, or None when weights stay in float; ``axis``
    overrides the op type's output-channel axis (ONNX Gemm without transB, MatMul)."""
    weight = rule.param("weight")
    if not weight.quantized or weight.dtype != "int":
        return None
    if axis is None:
        axis = WEIGHT_CHANNEL_AXIS.get(op_type)
    return QuantSpec(bits=weight.bits, symmetric=weight.symmetric, signed=True,
                     axis=axis if weight.per_channel else None)
