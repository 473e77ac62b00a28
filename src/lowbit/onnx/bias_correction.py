"""Empirical bias correction of an OnnxQuantSim: each layer's input mean measured in onnxruntime on
the simulated (QDQ) graph, reduced inside the graph, and the math in
``lowbit.algorithms.bias_correction`` turning it into the bias update."""

from __future__ import annotations

import torch

from lowbit.algorithms.bias_correction import BiasCorrectionResult, correct_bias_, expected_output_shift
from lowbit.errors import DataError, NotCalibratedError
from lowbit.onnx.calibrate import add_reduction
from lowbit.onnx.layers import WeightedLayer, weighted_layer
from lowbit.onnx.plan import GraphFacts
from lowbit.progress import progress
from lowbit.quant.fake_quant import fake_quantize
from lowbit.runtime import session

_MEAN = "_lowbit_channel_mean"


def correct_bias(sim, data, num_batches: int | None = None, transform=None) -> BiasCorrectionResult:
    """Empirical bias correction (Nagel et al. 2019, §4.2), in place on ``sim``'s weight-quantized Conv
    and Gemm nodes: ``bias −= (W_q − W) E[x]``, as ``lowbit.correct_bias`` does for PyTorch.

    E[x] per input channel is the mean of the layer's input in the simulated graph (every quantizer
    active) over one pass over ``data``, taken inside onnxruntime (ReduceMean), before any correction.
    Weight-quantized layers of other types (ConvTranspose, MatMul, Gather) or with a shared weight
    are skipped and named. NotCalibratedError on an uncalibrated sim; DataError on empty data.
    """
    if not sim.is_calibrated:
        raise NotCalibratedError("bias correction needs a calibrated sim: call sim.calibrate(data) first")
    facts = GraphFacts(sim.model)
    nodes = {node.name: node for node in facts.graph.node}
    layers: list[WeightedLayer] = []
    skipped = []
    for point in [p for p in sim.points if p.role == "weight"]:
        layer = weighted_layer(facts, nodes[point.node])
        (layers if layer is not None else skipped).append(layer or point.node)
    feeds = sim.feeds_of(data, transform, num_batches)
    if not feeds:
        raise DataError("bias correction needs data: no batch was produced")
    means = _input_means(sim, layers, feeds)
    quantizers = sim.quantizers()
    weights = {p.node: quantizers[p.key] for p in sim.points if p.role == "weight"}
    shifts = []
    for layer in layers:
        stored = weight_as_stored(layer)
        quantized = fake_quantize(stored.float(), weights[layer.name].encoding).to(torch.float64)
        error = quantized.T if layer.transposed else quantized
        shift = expected_output_shift(error - layer.weight, means[layer.name], layer.groups)
        correct_bias_(layer.ensure_bias(), shift)
        layer.write(facts.graph, facts)
        shifts.append(shift.abs())
    sim.weights_changed()
    mean_shift = float(torch.cat(shifts).mean()) if shifts else 0.0
    return BiasCorrectionResult(tuple(layer.name for layer in layers), tuple(skipped), mean_shift, len(feeds))


def weight_as_stored(layer: WeightedLayer) -> torch.Tensor:
    """The layer's weight in the initializer's layout (a Gemm without transB: ``[in, out]``)."""
    return layer.weight.T if layer.transposed else layer.weight


def _input_means(sim, layers: list[WeightedLayer], feeds: list[dict]) -> dict[str, torch.Tensor]:
    """Per layer, E[x] per input channel of its input in the QDQ graph, averaged over every batch."""
    model = sim.split().qdq_model
    qdq_nodes = {node.name: node for node in model.graph.node}
    probe = type(model)()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    outputs = []
    for layer in layers:
        spatial = list(range(2, layer.weight.dim())) if layer.node.op_type == "Conv" else []
        add_reduction(probe, "ReduceMean", qdq_nodes[layer.name].input[0], [0, *spatial], layer.name + _MEAN)
        outputs.append(layer.name + _MEAN)
    runtime = session(probe.SerializeToString(), threads=sim.threads)
    totals = [torch.zeros(layer.in_channels, dtype=torch.float64) for layer in layers]
    count = 0
    for feed in progress(feeds, "bias correction", len(feeds)):
        batch = next(iter(feed.values())).shape[0]
        for total, value in zip(totals, runtime.run(outputs, feed)):
            total += torch.from_numpy(value).to(torch.float64) * batch
        count += batch
    return {layer.name: total / count for layer, total in zip(layers, totals)}

