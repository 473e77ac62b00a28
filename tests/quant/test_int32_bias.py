"""Biases on their int32 grid: where input_scale · weight_scale is too fine for int32 (16-bit weights and
activations), the channel's scale widens so the stored bias still equals the float one, in the sim and in
the QDQ graph onnxruntime runs."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

import lowbit
from lowbit.quant.int32_bias import int32_bias
from lowbit.runtime import session


def test_grid_by_the_definition():
    bias = torch.tensor([50.0, 50.0, -0.25])
    integers, scale = int32_bias(bias, torch.tensor(1e-4), torch.tensor([1e-5, 1e-1, 1e-5]), widen=True)
    fine = torch.tensor(1e-4) * torch.tensor([1e-5, 1e-1, 1e-5])
    assert scale[1] == fine[1] and scale[2] == fine[2]  # these fit: 5e5 and -2.5e8 steps
    assert scale[0] == torch.tensor(50.0) / 2**30 and integers[0] == 2**30
    assert integers[1] == torch.round(bias[1] / fine[1]) and integers[2] == torch.round(bias[2] / fine[2])


class _BiasedConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        with torch.no_grad():
            self.conv.bias.copy_(torch.tensor([40.0, -30.0, 0.5, 3.0]))

    def forward(self, x):
        return self.conv(x)


def test_w16a16_bias_survives_in_sim_and_onnxruntime(tmp_path):
    model = _BiasedConv().eval()
    data = [torch.rand(4, 3, 8, 8)]
    sim = lowbit.quantize(model, data, param_bits=16, act_bits=16)
    with torch.no_grad():
        expected, simulated = model(data[0]), sim(data[0])
    paths = sim.export(tmp_path, name="biased")
    runtime = session(paths.qdq_onnx)
    executed = torch.from_numpy(runtime.run(None, {runtime.get_inputs()[0].name: data[0].numpy()})[0])
    step = float(sim.quantizers()["conv"].encoding.scale)  # one 16-bit output step
    assert (simulated - expected).abs().max() <= step  # the clamped bias was off by up to 40
    differ = (executed - simulated).abs()
    assert differ.max() <= 1.01 * step and (differ > 0).float().mean() < 0.01  # float-sum order flips a tie
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(paths.qdq_onnx).graph.initializer}
    integers = next(v for k, v in stored.items() if k.endswith("bias_quantized"))
    scale = next(v for k, v in stored.items() if k.endswith("bias_scale"))
    np.testing.assert_allclose(integers * scale.astype(np.float64), model.conv.bias.detach().numpy(), rtol=1e-6)


def test_eight_bit_layers_keep_the_product_grid():
    """onnxruntime's 8-bit integer kernels read the bias on input_scale · weight_scale: no widening there."""
    integers, scale = int32_bias(torch.tensor([50.0]), torch.tensor(1e-4), torch.tensor([1e-7]), widen=False)
    assert scale[0] == torch.tensor(1e-4) * torch.tensor(1e-7) and integers[0] == 2.0**31
