"""AdaRound and sequential MSE on ONNX graphs: learned weights on the grid that reconstruct the layer
output better than nearest rounding (measured by a full convolution, not the sampled rows), the same
sequential MSE choices as the PyTorch front end, and an export that computes what the sim computes."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

import lowbit
from lowbit.errors import NotCalibratedError, SpecError
from lowbit.graph.blocks import graph_blocks
from lowbit.onnx import OnnxQuantSim
from lowbit.onnx.block_run import OnnxBlock
from lowbit.onnx.graph_view import GraphFacts
from lowbit.quant.fake_quant import fake_quantize
from lowbit.quant.encodings_file import read_encodings
from lowbit.runtime import session


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8, stride=2),
                         nn.ReLU6(), nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10)).eval()


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(5)
    return [torch.randn(8, 3, 16, 16, generator=generator) + 0.5 for _ in range(3)]


@pytest.fixture(scope="module")
def small_onnx(data):
    buffer = io.BytesIO()
    torch.onnx.export(small_net(), (data[0],), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}})
    return onnx.load_from_string(buffer.getvalue())


def initializer(sim: OnnxQuantSim, name: str) -> torch.Tensor:
    return torch.from_numpy(next(numpy_helper.to_array(t) for t in sim.model.graph.initializer if t.name == name).copy())


@pytest.mark.slow
def test_adaround_weights_are_on_the_grid_and_beat_nearest_rounding_on_the_full_output(small_onnx, data):
    sim = OnnxQuantSim(small_onnx, param_bits=4).calibrate(data)
    weight = initializer(sim, "0.weight")
    encoding = sim.quantizers()["0.weight"].encoding
    result = lowbit.adaround(sim, data, num_iterations=300, granularity="layer")
    assert [r.names[0] for r in result.layers] == ["/0/Conv", "/2/Conv", "/4/Conv", "/8/Gemm"] and not result.skipped
    assert all(r.rounded_mse <= r.nearest_mse for r in result.layers) and result.mean_error_change < 0
    rounded = initializer(sim, "0.weight")
    torch.testing.assert_close(fake_quantize(rounded, encoding), rounded)  # on the grid: export keeps it
    assert sim.quantizers()["0.weight"].frozen
    # first layer: its input is the quantized model input, the same for both roundings
    x = torch.cat([fake_quantize(b, sim.quantizers()["x"].encoding) for b in data])
    bias = initializer(sim, "0.bias")
    target = F.conv2d(torch.cat(data), weight, bias, padding=1).relu()
    nearest_error = (F.conv2d(x, fake_quantize(weight, encoding), bias, padding=1).relu() - target).pow(2).mean()
    learned_error = (F.conv2d(x, rounded, bias, padding=1).relu() - target).pow(2).mean()
    assert learned_error < nearest_error


@pytest.mark.slow
def test_adaround_on_a_gemm_stored_without_trans_b_keeps_its_per_channel_axis(gemm_chain):
    model = gemm_chain(0)
    data = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    sim = OnnxQuantSim(model, param_bits=4).calibrate(data)
    encoding = sim.quantizers()["w1"].encoding
    assert encoding.spec.axis == 1
    result = lowbit.adaround(sim, data, num_iterations=200)
    assert sum(len(r.names) for r in result.layers) == 3 and result.mean_error_change <= 0
    rounded = initializer(sim, "w1")
    torch.testing.assert_close(fake_quantize(rounded, encoding), rounded)


def test_sequential_mse_chooses_what_the_torch_front_end_chooses(small_onnx, data, tmp_path):
    torch_sim = lowbit.QuantSim(small_net(), data[0][:1], param_bits=4).calibrate(data)
    paths = torch_sim.export(tmp_path, name="small")
    onnx_sim = OnnxQuantSim(paths.onnx, param_bits=4).load_encodings(paths.encodings)
    torch_result = lowbit.sequential_mse(torch_sim, data)
    onnx_result = lowbit.sequential_mse(onnx_sim, data)
    assert len(onnx_result.optimized) == len(torch_result.optimized) == 4
    np.testing.assert_allclose(onnx_result.mse_after, torch_result.mse_after, rtol=0.05)
    torch_file = read_encodings(torch_sim.export(tmp_path / "torch", name="small").encodings)
    onnx_file = read_encodings(onnx_sim.export(tmp_path / "onnx", name="small").encodings)
    for name, expected in torch_file.params.items():
        same = torch.isclose(onnx_file.params[name].scale, expected.scale, rtol=1e-5)
        assert same.float().mean() >= 0.9, name


def test_techniques_need_a_calibrated_sim_and_a_known_granularity(small_onnx, data):
    with pytest.raises(NotCalibratedError, match="calibrate"):
        lowbit.adaround(OnnxQuantSim(small_onnx), data)
    with pytest.raises(SpecError, match="granularity must be 'layer' or 'block', not 'blocks'"):
        lowbit.adaround(OnnxQuantSim(small_onnx).calibrate(data), data, granularity="blocks")


def _whole_net_block(sim: OnnxQuantSim) -> OnnxBlock:
    facts = GraphFacts(sim.model)
    layers = {node.name for node in facts.graph.node if node.op_type in ("Conv", "Gemm")}
    [block] = graph_blocks(facts.view(), lambda op: op.name if op.name in layers else None, 4)
    nodes = {node.name: node for node in facts.graph.node}
    return OnnxBlock(block, block.layers, [nodes[name] for name in block.ops], facts.initializers, sim)


def test_a_block_run_in_torch_computes_what_onnxruntime_computes_from_the_qdq_graph(small_onnx, data):
    sim = OnnxQuantSim(small_onnx, param_bits=4).calibrate(data)
    block = _whole_net_block(sim)
    assert block.block.input == "x" and len(block.wrappers()) == 4
    with torch.no_grad():
        in_torch = block(data[1]).numpy()
    np.testing.assert_allclose(in_torch, sim(data[1].numpy())[0], rtol=0, atol=1.01 * sim.output_lsb())


def test_block_rounding_reports_the_whole_sims_error_and_beats_nearest(small_onnx, data):
    """One block from the model input to its output: its nearest-rounding MSE is the sim's output error
    against the float model, both measured by onnxruntime."""
    sim = OnnxQuantSim(small_onnx, param_bits=4).calibrate(data)
    float_run = session(small_onnx.SerializeToString())
    errors = lambda: np.mean([(sim(b.numpy())[0] - float_run.run(None, {"x": b.numpy()})[0]) ** 2 for b in data])
    before = errors()
    result = lowbit.adaround(sim, data, num_iterations=200, block_layers=4, batch_samples=8)
    [unit] = result.layers
    assert unit.names == ("/0/Conv", "/2/Conv", "/4/Conv", "/8/Gemm")
    np.testing.assert_allclose(unit.nearest_mse, before, rtol=0.02)
    assert unit.rounded_mse < unit.nearest_mse and errors() < before
    assert all(sim.quantizers()[key].frozen_by == "adaround" for key in ("0.weight", "2.weight", "4.weight", "8.weight"))
    for key in ("0.weight", "8.weight"):
        rounded = initializer(sim, key)
        torch.testing.assert_close(fake_quantize(rounded, sim.quantizers()[key].encoding), rounded)


@pytest.mark.slow
def test_quantize_with_sequential_mse_and_adaround_exports_what_the_sim_computes(small_onnx, data, tmp_path):
    sim = lowbit.quantize(small_onnx, data, param_bits=4, techniques=["adaround", "sequential_mse"])
    lines = sim.technique_results
    assert lines[2].startswith("sequential mse: 4 layers") and lines[3].startswith("adaround: 4 layers"), lines
    paths = sim.export(tmp_path, name="small_w4")
    runtime = session(paths.qdq_onnx)
    batch = data[1].numpy()
    np.testing.assert_array_equal(sim(batch)[0], runtime.run(None, {"x": batch})[0])
