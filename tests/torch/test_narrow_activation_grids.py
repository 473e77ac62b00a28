"""Activations below 8 bits: the QDQ file stores them as uint8/int8, so the export clamps them to their own grid
and onnxruntime still runs its integer kernels, computing what the sim computes."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import lowbit
from lowbit.fidelity import measure_fidelity
from lowbit.runtime import run, session


class ConvRelu6(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.nn.functional.relu6(self.conv(x)) + 0.5 * x.mean(1, keepdim=True)


def test_values_past_a_4_bit_grid_saturate_at_its_last_step(tmp_path):
    """Calibrated on small inputs, run on inputs ten times larger: every output of the QDQ file lies on the 4-bit
    grid (at most offset + 15 steps, by the grid's definition) and equals the sim's, saturated values included."""
    generator = torch.Generator().manual_seed(1)
    small = [torch.randn(8, 3, 8, 8, generator=generator) * 0.1 for _ in range(2)]
    sim = lowbit.quantize(ConvRelu6().eval(), small, act_bits=4)
    paths = sim.export(tmp_path)
    large = torch.randn(8, 3, 8, 8, generator=generator) * 1.0
    executed = run(session(paths.qdq_onnx, threads=2), large)[0]
    producer = next(n for n in sim.model.graph.nodes if n.op == "output").args[0]
    encoding = sim.model.get_submodule(producer.target).encoding
    steps = np.round(executed / float(encoding.scale))
    assert steps.max() == int(encoding.offset) + 15 and steps.min() >= int(encoding.offset), steps.max()
    with torch.no_grad():
        np.testing.assert_array_equal(sim(large).numpy(), executed)


def test_mobilenet_with_4_bit_activations_runs_integer_kernels_as_simulated(mobilenet, calibration_batches,
                                                                             eval_batches, tmp_path):
    """Real MobileNetV2 at W8A4: after onnxruntime's graph optimisations every convolution is a QLinearConv (its
    ReLU6 dropped before the 4-bit grid, which saturates below 6), and the file agrees with the sim."""
    sim = lowbit.quantize(copy.deepcopy(mobilenet), calibration_batches, act_bits=4)
    paths = sim.export(tmp_path)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(paths.qdq_onnx), options, providers=["CPUExecutionProvider"])
    kinds = Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    convolutions = sum(isinstance(m, nn.Conv2d) for m in mobilenet.modules())
    assert kinds["QLinearConv"] == convolutions and "Conv" not in kinds and "FusedConv" not in kinds, kinds
    result = measure_fidelity(sim, paths.qdq_onnx, eval_batches[:2], threads=2)
    assert result.top1_agreement == 1.0 and result.max_error_lsb <= 1.0, result.row()
