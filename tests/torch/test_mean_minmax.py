"""The mean_minmax scheme in a QuantSim: inner activations get the mean of each sample's extremes,
the tensor the model returns keeps its full observed range."""

from __future__ import annotations

import torch
from torch import nn

import lowbit
from lowbit.quant.encoding import Encoding


class TwoLayers(nn.Module):
    """Linear → ReLU → Linear → Flatten: the last Linear's output is returned through a pass-through."""

    def __init__(self):
        super().__init__()
        self.first, self.relu, self.last = nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5)

    def forward(self, x):
        return torch.flatten(self.last(self.relu(self.first(x))), 1)


def test_inner_activation_averages_sample_extremes_and_returned_tensor_keeps_full_range():
    torch.manual_seed(0)
    model = TwoLayers().eval()
    data = [torch.randn(4, 6) * (1 + i) for i in range(3)]
    sim = lowbit.QuantSim(model, data[0], scheme="mean_minmax")
    outputs = {sim.point(key).node: q for key, q in sim.quantizers().items() if sim.point(key).role == "output"}
    inner, returned = outputs["relu"], outputs["last"]
    seen = {"inner": [], "returned": []}
    inner.register_forward_pre_hook(lambda module, args: seen["inner"].append(args[0].detach().clone()))
    returned.register_forward_pre_hook(lambda module, args: seen["returned"].append(args[0].detach().clone()))
    sim.calibrate(data)
    hidden, logits = torch.cat(seen["inner"]), torch.cat(seen["returned"])
    expected_inner = Encoding.from_range(inner.spec, hidden.amin(1).mean(), hidden.amax(1).mean())
    expected_returned = Encoding.from_range(returned.spec, logits.min(), logits.max())
    assert inner.scheme == "mean_minmax" and returned.scheme == "minmax"
    torch.testing.assert_close(inner.encoding.scale, expected_inner.scale, rtol=1e-5, atol=0)
    torch.testing.assert_close(returned.encoding.scale, expected_returned.scale, rtol=1e-5, atol=0)
    assert torch.equal(returned.encoding.offset, expected_returned.offset)
