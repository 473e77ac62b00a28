"""One call for an ONNX model: load, fold, equalize, calibrate, correct; the ONNX half of ``lowbit.quantize``."""

from __future__ import annotations

from lowbit.onnx.adaround import adaround, sequential_mse
from lowbit.onnx.batchnorm_fold import fold_batchnorm as fold_onnx_batchnorm
from lowbit.onnx.bias_correction import correct_bias
from lowbit.onnx.equalize import equalize
from lowbit.onnx.load import load_model
from lowbit.onnx.quantsim import OnnxQuantSim

def quantize_onnx(model, data, target="default", param_bits: int | None = None, act_bits: int | None = None,
                  scheme: str = "minmax", per_channel: bool | None = None, transform=None,
                  num_batches: int | None = None, techniques=(), runtime=None,
                  fold_batchnorm: bool = True) -> OnnxQuantSim:
    """An OnnxQuantSim of ``model`` (path or ModelProto), BatchNorms folded, calibrated on ``data``,
    with ``techniques`` applied in ``lowbit.quantize``'s order (AdaRound layer by layer)."""
    if "equalize" in techniques:
        folded, groups = equalize(model)
        lines = [f"equalize: {len(groups)} layer groups (BatchNorm folded)"]
    elif fold_batchnorm:
        folded, pairs = fold_onnx_batchnorm(load_model(model))
        lines = [f"fold batchnorm: {len(pairs)} layers"]
    else:
        folded, lines = load_model(model), ["fold batchnorm: off"]
    sim = OnnxQuantSim(folded, target=target, param_bits=param_bits, act_bits=act_bits, scheme=scheme,
                       per_channel=per_channel, runtime=runtime)
    sim.calibrate(data, transform=transform, num_batches=num_batches)
    lines.append(f"calibrate: {sim.calibration_seconds:.1f} s")
    for name, technique in (("sequential_mse", sequential_mse), ("adaround", adaround)):
        if name in techniques:
            lines.append(str(technique(sim, data, num_batches=num_batches, transform=transform)))
            sim.calibrate(data, transform=transform, num_batches=num_batches)
    if "bias_correction" in techniques:
        lines.append(str(correct_bias(sim, data, num_batches=num_batches, transform=transform)))
    sim.technique_results = tuple(lines)
    return sim
