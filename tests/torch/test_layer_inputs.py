"""LayerInputs: the paused graph runs (each node once per batch) give exactly the rows that re-running
the model from its input for every layer gives, and collecting out of order restarts them."""

from __future__ import annotations

import torch
from torch import nn

import lowbit
from lowbit.torch.layer_inputs import LayerInputs


class _Residual(nn.Module):
    """Conv → ReLU6 → depthwise conv → ReLU6 → conv, added to its input, then a Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project = nn.Conv2d(16, 8, 1)
        self.act = nn.ReLU6()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.act(self.stem(x))
        y = self.project(self.act(self.depthwise(self.act(self.expand(x)))))
        return self.head((x + y).mean(dim=(2, 3)))


def _model_and_data():
    torch.manual_seed(0)
    model = _Residual().eval()
    return model, [torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def _sim_and_calls():
    model, data = _model_and_data()
    sim = lowbit.QuantSim(model, data[0], target="w4a8").calibrate(data)
    return sim, [((batch,), {}) for batch in data]


def _rows(names, paused: bool) -> dict:
    """Rows of each layer in ``names`` order; after each, the layer's weight is halved, as a technique
    writes a layer's final weight before the next layer is collected."""
    sim, calls = _sim_and_calls()
    inputs = LayerInputs(sim, calls)
    assert inputs._node_index is not None
    if not paused:
        inputs._node_index = None
    generator = torch.Generator().manual_seed(0)
    rows = {}
    for name in names:
        with inputs.collect(name, 64, 1 << 30, generator, "test") as cache:
            rows[name] = tuple(t.clone() for t in cache.all("cpu"))
        with torch.no_grad():
            sim.model.get_submodule(name).layer.weight.mul_(0.5)
    return rows


def test_paused_runs_give_the_rows_of_full_reruns():
    sim, calls = _sim_and_calls()
    order = LayerInputs(sim, calls).layer_order()
    assert order == ["stem", "expand", "depthwise", "project", "head"]
    first, second = _rows(order, paused=True), _rows(order, paused=False)
    for name in order:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)


def test_going_back_restarts_the_paused_runs():
    names = ["project", "expand", "head"]
    first, second = _rows(names, paused=True), _rows(names, paused=False)
    for name in names:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)


def test_the_reference_is_the_float_model_after_adaround_wrote_its_rounding():
    """A layer-wise technique run after AdaRound (a second AdaRound, say) fits to the float model's outputs,
    not to the rounded weights AdaRound wrote into the sim's layers."""
    model, data = _model_and_data()
    sim = lowbit.quantize(model, data, target="w4a8", techniques=("adaround",))
    assert not torch.equal(sim.model.get_submodule("stem").layer.weight, model.stem.weight)
    reference = LayerInputs(sim, [((batch,), {}) for batch in data]).reference
    with torch.no_grad():
        torch.testing.assert_close(reference(data[0]), model(data[0]), rtol=0, atol=1e-6)


def test_quantizer_values_read_the_float_model_after_adaround():
    """The float side of ``quantizer_values`` (analysis' activation views) is the float model's: the float
    weights and the activations they give, not AdaRound's rounded weights."""
    model, data = _model_and_data()
    sim = lowbit.quantize(model, data, target="w4a8", techniques=("adaround",))
    floats, quantized = sim.quantizer_values((data[0],), {}, ["stem.weight", "head"])
    with torch.no_grad():
        torch.testing.assert_close(floats["head"], model(data[0]).flatten(), rtol=0, atol=1e-6)
        torch.testing.assert_close(floats["stem.weight"], model.stem.weight.flatten(), rtol=0, atol=0)
        torch.testing.assert_close(quantized["head"], sim(data[0]).flatten(), rtol=0, atol=0)
