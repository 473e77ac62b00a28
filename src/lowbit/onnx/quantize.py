"""One call for an ONNX model: load, plan, calibrate; the ONNX half of ``lowbit.quantize``."""

from __future__ import annotations

from lowbit.errors import SpecError
from lowbit.onnx.batchnorm_fold import fold_batchnorm
from lowbit.onnx.load import load_model
from lowbit.onnx.quantsim import OnnxQuantSim


def quantize_onnx(model, data, target="default", param_bits: int | None = None, act_bits: int | None = None,
                  scheme: str = "minmax", per_channel: bool | None = None, transform=None,
                  num_batches: int | None = None, techniques=()) -> OnnxQuantSim:
    """An OnnxQuantSim of ``model`` (path or ModelProto), BatchNorms folded, calibrated on ``data``."""
    if techniques:
        raise SpecError(f"techniques ({', '.join(techniques)}) are not available for ONNX models yet; "
                        f"quantize without them or use the PyTorch model")
    folded, pairs = fold_batchnorm(load_model(model))
    sim = OnnxQuantSim(folded, target=target, param_bits=param_bits, act_bits=act_bits, scheme=scheme,
                       per_channel=per_channel)
    sim.calibrate(data, transform=transform, num_batches=num_batches)
    sim.technique_results = (f"fold batchnorm: {len(pairs)} layers", f"calibrate: {sim.calibration_seconds:.1f} s")
    return sim
