"""ONNX graphs beyond CNNs: a transformer encoder (MatMul, Softmax, LayerNormalization, Gelu, an int
attention mask) and a recurrent net (LSTM, which stays in float and is listed as such)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import lowbit
from lowbit.quant.fake_quant import fake_quantize
from lowbit.runtime import session
from lowbit.zoo import TransformerEncoderNet


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    torch.manual_seed(0)
    model = TransformerEncoderNet().eval()
    ids, mask = torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.int64)
    path = tmp_path_factory.mktemp("encoder") / "encoder.onnx"
    torch.onnx.export(model, (ids, mask), str(path), dynamo=False, opset_version=20,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}})
    return path


def token_batches(count: int = 4):
    """Random token ids with right padding of random lengths, as the model's two int64 inputs."""
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(count):
        ids = rng.integers(0, 100, (8, 16)).astype(np.int64)
        lengths = rng.integers(4, 17, 8)
        mask = (np.arange(16)[None, :] < lengths[:, None]).astype(np.int64)
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def test_transformer_encoder_quantizes_without_touching_the_mask(encoder_path):
    graph = onnx.load(encoder_path).graph
    assert {"MatMul", "Softmax", "LayerNormalization", "Gelu"} <= {n.op_type for n in graph.node}
    sim = lowbit.quantize(encoder_path, token_batches(), target="transformer")
    quantized_ops = {sim.point(k).op_type for k in sim.quantizers()}
    assert {"MatMul", "Gather"} <= quantized_ops
    mask_path = _tensors_computed_only_from(graph, "attention_mask")
    assert mask_path and not mask_path & set(sim.quantizers())
    assert sim.summary()["float_ops"] == {}
    # second front end as the reference: the PyTorch sim of the model the file was exported from
    torch.manual_seed(0)
    model = TransformerEncoderNet().eval()
    torch_batches = [{k: torch.from_numpy(v) for k, v in b.items()} for b in token_batches()]
    torch_sim = lowbit.quantize(model, torch_batches, target="transformer")
    assert torch_sim.summary()["quantizers"] == sim.summary()["quantizers"]
    fp32 = session(encoder_path)
    for batch, torch_batch in zip(token_batches(2), torch_batches):
        expected = fp32.run(None, batch)[0]
        with torch.no_grad():
            reference = relative_error(torch_sim(**torch_batch).numpy(), expected)
        assert abs(relative_error(sim(batch)[0], expected) - reference) <= 0.1 * reference


@pytest.mark.slow
def test_sequential_mse_and_adaround_round_the_encoders_matmuls(encoder_path):
    fp32 = session(encoder_path)
    held_out = token_batches(6)[4:]

    def error(sim) -> float:
        return float(np.mean([relative_error(sim(b)[0], fp32.run(None, b)[0]) for b in held_out]))

    plain = lowbit.quantize(encoder_path, token_batches(), target="transformer", param_bits=4)
    sim = lowbit.quantize(encoder_path, token_batches(), target="transformer", param_bits=4,
                          techniques=["sequential_mse"])
    result = lowbit.adaround(sim, token_batches(), num_iterations=200)
    sim.calibrate(token_batches())
    assert sum(r.names[0].endswith("/MatMul") for r in result.layers) == 12
    assert len(result.layers) == 13 and list(result.skipped) == ["/embedding/Gather"]
    assert error(sim) < error(plain)


def test_bias_correction_of_a_matmul_corrects_the_add_after_it(encoder_path):
    sim = lowbit.quantize(encoder_path, token_batches(), target="transformer", param_bits=4)
    fc2 = next(n for n in sim.model.graph.node if n.name == "/layers.1/fc2/MatMul")
    add = next(n for n in sim.model.graph.node if fc2.output[0] in n.input)
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in sim.model.graph.initializer}
    bias_name = next(i for i in add.input if i in weights)
    # second method: the layer's whole quantized input, read from the QDQ graph and averaged in numpy
    qdq = sim.split().qdq_model
    probe_input = next(n for n in qdq.graph.node if n.name == fc2.name).input[0]
    probe = onnx.ModelProto()
    probe.CopyFrom(qdq)
    del probe.graph.output[:]
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(probe_input))
    runtime = session(probe.SerializeToString())
    rows = np.concatenate([runtime.run(None, b)[0].reshape(-1, weights[fc2.input[1]].shape[0]) for b in token_batches()])
    quantized = fake_quantize(torch.from_numpy(weights[fc2.input[1]]).float(),
                              sim.quantizers()[fc2.input[1]].encoding).double().numpy()
    expected_shift = rows.astype(np.float64).mean(axis=0) @ (quantized - weights[fc2.input[1]])
    result = lowbit.correct_bias(sim, token_batches())
    assert fc2.name in result.corrected and result.skipped == ("/embedding/Gather",)
    corrected = next(numpy_helper.to_array(t) for t in sim.model.graph.initializer if t.name == bias_name)
    np.testing.assert_allclose(weights[bias_name] - corrected, expected_shift, rtol=1e-4, atol=1e-6)


def _tensors_computed_only_from(graph: onnx.GraphProto, source: str) -> set[str]:
    """Tensors whose every data input (initializers aside) descends from ``source`` alone."""
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    reached = {source}
    for node in graph.node:
        inputs = [i for i in node.input if i and i not in constants]
        if inputs and all(i in reached for i in inputs):
            reached.update(node.output)
    return reached - {source}


class Recurrent(nn.Module):
    """Linear → LSTM → Linear on the last step."""

    def __init__(self):
        super().__init__()
        self.embed, self.lstm, self.head = nn.Linear(8, 16), nn.LSTM(16, 16, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        out, _ = self.lstm(torch.relu(self.embed(x)))
        return self.head(out[:, -1])


def test_lstm_stays_in_float_and_is_listed(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "lstm.onnx"
    torch.onnx.export(Recurrent().eval(), (torch.randn(1, 5, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((6, 5, 8)).astype(np.float32) for _ in range(3)]
    sim = lowbit.quantize(path, data)
    summary = sim.summary()
    assert summary["float_ops"] == {"LSTM": 1} and "left in float: LSTM ×1" in summary["note"]
    assert summary["quantizers"]["weight"] == 2
    qdq = onnx.load(sim.export(tmp_path / "out", "lstm").qdq_onnx)
    lstm = next(n for n in qdq.graph.node if n.op_type == "LSTM")
    float_weights = {t.name for t in qdq.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert lstm.input[1] in float_weights and lstm.input[2] in float_weights
    fp32 = session(path).run(None, {"x": data[0]})[0]
    assert relative_error(sim(data[0])[0], fp32) <= 0.1
