"""The ONNX graph Keras's torch and JAX backends export, made what a Conv graph should be: each convolution there
runs between two transposes (NHWC → NCHW → NHWC) with its bias and BatchNorm as per-channel Add/Sub/Mul after it,
its padding as a Pad before, ReLU6 maybe as Max and Min. Those fold into the convolution, activations become Relu
and Clip next to it, onnxruntime's basic optimizer cancels the transposes and drops the casts, and a spatial
ReduceMean becomes GlobalAveragePool: the graph quantizes as the runtime's integer kernels run it (Conv → Relu
fused, an integer mean)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from lowbit.keras.conv_folds import fold_channel_affines, pads_into_convs, static_pad_amounts
from lowbit.keras.fusable_forms import activations_before_transposes, min_max_as_clips, spatial_means_as_global_pools


def cleaned(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the convolutions' per-channel ops and pads folded in, its transposes cancelled and its spatial
    means as global pools."""
    model = basic_optimized(model)
    static_pad_amounts(model)
    min_max_as_clips(model)
    if fold_channel_affines(model) + activations_before_transposes(model) + pads_into_convs(model):
        model = basic_optimized(model)
    spatial_means_as_global_pools(model)
    return model


def basic_optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` after onnxruntime's basic graph optimizations (standard ONNX ops only: constant folding,
    transpose cancelling, Conv+Add fusion), with opset imports no node uses dropped."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    used = {node.domain for node in optimized.graph.node} | {""}
    kept = [o for o in optimized.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del optimized.opset_import[:]
    optimized.opset_import.extend(kept)
    return optimized
