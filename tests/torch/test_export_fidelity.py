"""Export: the QDQ model onnxruntime runs must agree with the simulation, numerically."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import lowbit
from lowbit.errors import NotCalibratedError
from lowbit.fidelity import measure_fidelity, output_lsb
from lowbit.runtime import run, session

GOAL = 0.995


def _sim_outputs(sim, batches):
    with torch.no_grad():
        return np.concatenate([sim(b).numpy() for b in batches])


def _ort_outputs(path, batches, optimize=True):
    runtime = session(path, threads=2, optimize=optimize)
    return np.concatenate([run(runtime, b)[0] for b in batches])


# --------------------------------------------------------------------------- MobileNetV2, cpu-int8

@pytest.fixture(scope="module")
def mobilenet_fidelity(mobilenet_sim, mobilenet_export, eval_batches):
    result = measure_fidelity(mobilenet_sim, mobilenet_export.qdq_onnx, eval_batches, threads=2)
    print(f"\nMobileNetV2 cpu-int8 sim vs onnxruntime (optimised): {result.row()}")
    return result


@pytest.mark.slow
def test_mobilenet_fidelity_uses_at_least_100_real_images(mobilenet_fidelity):
    assert mobilenet_fidelity.samples >= 100


def test_mobilenet_sim_agrees_with_onnxruntime_top1(mobilenet_fidelity):
    """The sim computes convolutions and additions as onnxruntime's integer kernels do."""
    print(f"\nMobileNetV2 sim vs onnxruntime: {mobilenet_fidelity.row()}")
    assert mobilenet_fidelity.top1_agreement >= GOAL, mobilenet_fidelity.row()
    assert mobilenet_fidelity.max_error_lsb <= 1.001, mobilenet_fidelity.row()


@pytest.fixture(scope="module")
def mobilenet_sim_outputs(mobilenet_sim, eval_batches):
    return _sim_outputs(mobilenet_sim, eval_batches)


@pytest.mark.slow
def test_mobilenet_fp32_onnx_matches_user_model(mobilenet, mobilenet_export, eval_batches):
    with torch.no_grad():
        expected = mobilenet(eval_batches[0]).numpy()
    got = _ort_outputs(mobilenet_export.onnx, eval_batches[:1])
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- tiny_resnet, default

@pytest.mark.slow
def test_resnet_qdq_equals_sim_within_one_lsb(resnet_sim, resnet_export, resnet_batches):
    lsb = output_lsb(resnet_sim)
    assert lsb == lsb and lsb > 0
    host = resnet_sim.runtime
    for optimize in (True, False):
        # unoptimized, onnxruntime runs float Conv/Gemm between Q and DQ: no int16 pair saturation
        resnet_sim.runtime = host if optimize else "onnxruntime-cpu-vnni"
        simulated = _sim_outputs(resnet_sim, resnet_batches)
        executed = _ort_outputs(resnet_export.qdq_onnx, resnet_batches, optimize)
        error = float(np.abs(simulated - executed).max())
        print(f"\ntiny_resnet default: max error {error / lsb:.2f} LSB (optimize={optimize})")
        assert error <= lsb * 1.0001
    resnet_sim.runtime = host


def test_resnet_fp32_onnx_matches_torch(resnet, resnet_export, resnet_batches):
    with torch.no_grad():
        expected = np.concatenate([resnet(b).numpy() for b in resnet_batches])
    got = _ort_outputs(resnet_export.onnx, resnet_batches)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- file contents

def _dequantize_nodes(model):
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    return inits, producers, [n for n in model.graph.node if n.op_type == "DequantizeLinear"]


@pytest.mark.parametrize("which", ["mobilenet", "resnet"])
def test_qdq_file_has_integer_weights_and_int32_biases(which, request):
    paths = request.getfixturevalue(f"{which}_export")
    model = onnx.load(str(paths.qdq_onnx))
    inits, producers, _ = _dequantize_nodes(model)
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert weighted
    for node in weighted:
        weight_dq = producers[node.input[1]]
        assert weight_dq.op_type == "DequantizeLinear", node.name
        stored = inits[weight_dq.input[0]]
        assert stored.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8), node.name
        if node.op_type == "Conv":
            axes = [a.i for a in weight_dq.attribute if a.name == "axis"]
            assert axes == [0], f"{node.name}: per-channel weight DQ needs axis=0"
            scale = numpy_helper.to_array(inits[weight_dq.input[1]]) if weight_dq.input[1] in inits else None
            if scale is not None:
                assert scale.size == numpy_helper.to_array(stored).shape[0]
        assert len(node.input) >= 3, f"{node.name} has no bias"
        bias_dq = producers[node.input[2]]
        assert bias_dq.op_type == "DequantizeLinear"
        assert inits[bias_dq.input[0]].data_type == onnx.TensorProto.INT32
    # no float weights remain as Conv/Gemm weights
    float_weights = [n.input[1] for n in weighted if n.input[1] in inits]
    assert float_weights == []


def test_mobilenet_qdq_weights_have_cpu_int8_bits_for_the_runtime_and_8_bit_depthwise(mobilenet_sim, mobilenet_export):
    """cpu-int8 gives 7-bit weights where the runtime's kernels saturate int16 pairs (x86 without VNNI), else 8."""
    low = -64 if mobilenet_sim.runtime.int16_pairs else -128
    model = onnx.load(str(mobilenet_export.qdq_onnx))
    inits, producers, _ = _dequantize_nodes(model)
    depthwise = 0
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        values = numpy_helper.to_array(inits[producers[node.input[1]].input[0]])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        assert values.dtype == np.int8
        if group > 1 and values.shape[:2] == (group, 1):
            depthwise += 1
            assert values.min() >= -128 and values.max() <= 127 and np.abs(values).max() > 63, node.name
        else:
            assert values.min() >= low and values.max() <= -low - 1 and np.abs(values).max() > -low // 2 - 1, node.name
    assert depthwise == 17


def test_encodings_file_lists_every_quantizer(mobilenet_sim, mobilenet_export):
    document = json.loads(mobilenet_export.encodings.read_text())
    count = len(document["activation_encodings"]) + len(document["param_encodings"])
    assert count == len(mobilenet_sim.quantizers())


# --------------------------------------------------------------------------- encodings round trip

@pytest.mark.slow
def test_encodings_round_trip_is_bit_exact(mobilenet_sim, mobilenet_export, fresh_mobilenet_sim, eval_batches):
    """A fresh sim of the same folded model, loaded from the file, is the same sim bit for bit."""
    fresh = fresh_mobilenet_sim
    lowbit.load_encodings(fresh, mobilenet_export.encodings)
    original, loaded = mobilenet_sim.quantizers(), fresh.quantizers()
    assert original.keys() == loaded.keys()
    for key in original:
        assert torch.equal(original[key].scale, loaded[key].scale), key
        assert torch.equal(original[key].offset, loaded[key].offset), key
        assert original[key].spec == loaded[key].spec, key
    with torch.no_grad():
        assert torch.equal(mobilenet_sim(eval_batches[0]), fresh(eval_batches[0]))


def test_export_before_calibrate_raises(resnet, resnet_batches, tmp_path):
    sim = lowbit.QuantSim(resnet, resnet_batches[0])
    with pytest.raises(NotCalibratedError):
        sim.export(tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
