"""Cross-layer equalization and bias correction on ONNX graphs, checked against the closed form and
against the PyTorch front end's implementation on the real MobileNetV2."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import lowbit
from lowbit.errors import NotCalibratedError
from lowbit.onnx import OnnxQuantSim, fold_batchnorm, load_model
from lowbit.runtime import session


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    runtime = session(model.SerializeToString())
    return runtime.run(None, {runtime.get_inputs()[0].name: x})[0]


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("trans_b", [0, 1])
def test_equalized_gemm_chain_has_equal_ranges_and_the_same_outputs(gemm_chain, trans_b):
    model = gemm_chain(trans_b)
    equalized, groups = lowbit.equalize(model)
    assert [g.layers for g in groups] == [("Gemm_0", "Gemm_2", "Gemm_4")]
    w = initializers(equalized)
    w1 = w["w1"] if trans_b else w["w1"].T
    # the paper's fixed point: output-channel range of each layer equals the next one's input-channel range
    np.testing.assert_allclose(np.abs(w1).max(axis=1), np.abs(w["w2"]).max(axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.abs(w["w2"]).max(axis=1), np.abs(w["w3"]).max(axis=0), rtol=1e-5)
    x = np.random.default_rng(4).normal(size=(4, 8)).astype(np.float32)
    np.testing.assert_allclose(run(equalized, x), run(model, x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def torch_equalized(mobilenet, calibration_batches):
    return lowbit.equalize(mobilenet, calibration_batches[0][:1])


@pytest.fixture(scope="module")
def onnx_equalized(unfused_mobilenet):
    return lowbit.equalize(str(unfused_mobilenet))


@pytest.mark.slow
def test_mobilenet_equalizes_as_the_torch_front_end_does(torch_equalized, onnx_equalized, eval_batches):
    (torch_model, torch_groups), (onnx_model, onnx_groups) = torch_equalized, onnx_equalized
    assert len(onnx_groups) == len(torch_groups) == 16
    assert [len(g.layers) for g in onnx_groups] == [len(g.layers) for g in torch_groups]
    assert sum(len(g.relu6_replaced) for g in onnx_groups) == sum(len(g.relu6_replaced) for g in torch_groups)
    assert sum(len(g.high_bias_absorbed) for g in onnx_groups) == sum(len(g.high_bias_absorbed) for g in torch_groups)
    # ReLU6 became ReLU in both: the two implementations must compute the same changed function
    x = eval_batches[0]
    with torch.no_grad():
        expected = torch_model(x).numpy()
    np.testing.assert_allclose(run(onnx_model, x.numpy()), expected, rtol=0, atol=2e-4 * np.abs(expected).max())


def per_tensor_sqnr_db(weight: np.ndarray, bits: int = 8) -> float:
    """SQNR of symmetric per-tensor quantization of ``weight``."""
    scale = np.abs(weight).max() / (2 ** (bits - 1) - 1)
    error = weight - np.round(weight / scale) * scale
    return 10 * np.log10((weight ** 2).sum() / (error ** 2).sum())


def test_depthwise_weights_quantize_better_per_tensor_after_equalization(unfused_mobilenet, onnx_equalized):
    folded, _ = fold_batchnorm(load_model(unfused_mobilenet))
    equalized, _ = onnx_equalized

    def depthwise_sqnr(model):
        w = initializers(model)
        return np.array([per_tensor_sqnr_db(w[n.input[1]]) for n in model.graph.node if n.op_type == "Conv"
                         and next(a.i for a in n.attribute if a.name == "group") > 1])

    before, after = depthwise_sqnr(folded), depthwise_sqnr(equalized)
    assert len(before) == 17 and np.median(after - before) > 3, after - before


def torch_bias(sim, weight_name: str) -> np.ndarray:
    parameters = dict(sim.model.named_parameters())
    prefix = weight_name.removesuffix(".weight")
    return next(parameters[k] for k in (f"{prefix}.layer.bias", f"{prefix}.bias") if k in parameters).detach().numpy()


@pytest.mark.slow
def test_bias_correction_matches_the_torch_front_end(mobilenet_sim, mobilenet_export, calibration_batches):
    torch_sim = copy.deepcopy(mobilenet_sim)
    onnx_sim = OnnxQuantSim(mobilenet_export.onnx, target="cpu-int8", threads=2).load_encodings(mobilenet_export.encodings)
    before = initializers(onnx_sim.model)
    torch_result = lowbit.correct_bias(torch_sim, calibration_batches)
    onnx_result = lowbit.correct_bias(onnx_sim, calibration_batches)
    assert len(onnx_result.corrected) == len(torch_result.corrected) == 53 and not onnx_result.skipped
    after = initializers(onnx_sim.model)
    nodes = [n for n in onnx_sim.model.graph.node if n.op_type in ("Conv", "Gemm")]
    for node in nodes:
        onnx_shift = before[node.input[2]] - after[node.input[2]]
        torch_shift = before[node.input[2]] - torch_bias(torch_sim, node.input[1])
        # both take E[x] from their simulation of the same encodings; the runtimes differ in summation order
        np.testing.assert_allclose(onnx_shift, torch_shift, rtol=0, atol=1e-3 * max(np.abs(torch_shift).max(), 1e-3))
    assert onnx_result.mean_abs_shift == pytest.approx(torch_result.mean_abs_shift, rel=1e-2)


def test_bias_correction_needs_a_calibrated_sim(mobilenet_export, calibration_batches):
    with pytest.raises(NotCalibratedError, match="calibrate"):
        lowbit.correct_bias(OnnxQuantSim(mobilenet_export.onnx), calibration_batches)


@pytest.mark.slow
def test_quantize_runs_both_techniques_and_the_export_computes_what_the_sim_does(unfused_mobilenet,
                                                                                 calibration_batches,
                                                                                 eval_batches, tmp_path):
    sim = lowbit.quantize(str(unfused_mobilenet), calibration_batches, target="cpu-int8",
                          techniques=["bias_correction", "equalize"])
    assert sim.technique_results[0].startswith("equalize: 16 layer groups")
    assert sim.technique_results[-1].startswith("bias correction (empirical): 53 layers")
    paths = sim.export(tmp_path, name="mobilenet_cle_bc")
    runtime = session(paths.qdq_onnx, threads=2)
    batch = eval_batches[1].numpy()
    np.testing.assert_array_equal(sim(batch)[0], runtime.run(None, {runtime.get_inputs()[0].name: batch})[0])
