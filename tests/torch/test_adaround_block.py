"""Block-wise AdaRound: graph blocks cut where one value is live (checked by hand on a residual net),
a block's GraphModule against the modules run by hand, and the block MSEs adaround reports against
the whole sim's output error recomputed independently."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import lowbit
from lowbit.errors import OptimizationError, SpecError
from lowbit.torch.graph_blocks import block_module, fx_blocks

WEIGHT_LOW, WEIGHT_HIGH = -8, 7  # grid indices of a 4-bit signed symmetric weight


class _Residual(nn.Module):
    """stem → ReLU → (a → ReLU → b) + skip → ReLU → c → flatten → head."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.c, self.head = nn.Conv2d(4, 2, 3), nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.b(torch.relu(self.a(x))) + x)
        return self.head(torch.flatten(self.c(x), 1))


LAYERS = {"stem", "a", "b", "c", "head"}


@pytest.mark.parametrize("max_layers, expected", [
    (1, [("stem",), ("a", "b"), ("c",), ("head",)]),  # the residual span calls two layers: kept whole
    (2, [("stem",), ("a", "b"), ("c", "head")]),
    (3, [("stem", "a", "b"), ("c", "head")]),
])
def test_graph_blocks_cut_where_one_value_is_live(max_layers, expected):
    graph_module = fx.symbolic_trace(_Residual().eval())
    blocks = fx_blocks(graph_module, LAYERS, max_layers)
    assert [block.layers for block in blocks] == expected
    order = [node.name for node in graph_module.graph.nodes]
    spans = [order[order.index(b.ops[0]):order.index(b.ops[-1]) + 1] for b in blocks]
    assert [name for span in spans for name in span] == [name for b in blocks for name in b.ops]  # contiguous
    assert all(earlier.output == later.input for earlier, later in zip(blocks, blocks[1:]))


def test_block_module_runs_the_span_on_its_input():
    torch.manual_seed(0)
    model = _Residual().eval()
    graph_module = fx.symbolic_trace(model)
    residual = next(b for b in fx_blocks(graph_module, LAYERS, 1) if b.layers == ("a", "b"))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        by_hand = torch.relu(model.b(torch.relu(model.a(x))) + x)
        assert torch.equal(block_module(graph_module, residual)(x), by_hand)


def _small_network() -> tuple[nn.Sequential, list[torch.Tensor]]:
    """Conv2d → ReLU6 → 1×1 Conv2d → ReLU → Linear (one block of three layers) and two batches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU6(), nn.Conv2d(6, 6, 1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 8 * 8, 4)).eval()
    gen = torch.Generator().manual_seed(1)
    return model, [2 * torch.randn(4, 3, 8, 8, generator=gen) for _ in range(2)]


def _output_mse(sim, model, data) -> float:
    with torch.no_grad():
        errors = [(sim(x) - model(x)).square() for x in data]
    return float(torch.cat(errors).mean())


@pytest.mark.slow
def test_block_rounding_reports_the_whole_sims_error_and_beats_nearest():
    """The network is one block from the model input to its output, so the block MSEs adaround
    reports are the output errors of a nearest-rounding sim and of the rounded sim, recomputed here
    by running both whole."""
    model, data = _small_network()
    nearest_sim = lowbit.QuantSim(model, data[0], target="w4a8").calibrate(data)
    sim = lowbit.QuantSim(model, data[0], target="w4a8").calibrate(data)
    scales = {name: sim.model.get_submodule(name).weight_quantizer.scale.clone() for name in ("0", "2", "5")}
    result = lowbit.adaround(sim, data, num_iterations=300, granularity="block", batch_samples=4)
    assert [unit.names for unit in result.layers] == [("0", "2", "5")]
    unit = result.layers[0]
    print(f"\n{result}; nearest {unit.nearest_mse:.4g} -> {unit.rounded_mse:.4g}")
    assert unit.nearest_mse == pytest.approx(_output_mse(nearest_sim, model, data), rel=1e-5)
    assert unit.rounded_mse == pytest.approx(_output_mse(sim, model, data), rel=1e-5)
    assert unit.rounded_mse < 0.9 * unit.nearest_mse
    assert str(result).startswith("adaround: 3 layers in 1 block, ")
    for index, name in enumerate(("0", "2", "5")):
        wrapper = sim.model.get_submodule(name)
        scale = scales[name].reshape((-1,) + (1,) * (wrapper.layer.weight.dim() - 1))
        ratio = model[int(name)].weight.detach() / scale
        grid = wrapper.layer.weight.detach() / scale
        assert bool((torch.isclose(grid, ratio.floor(), atol=1e-4) | torch.isclose(grid, ratio.ceil(), atol=1e-4)).all())
        assert wrapper.weight_quantizer.frozen_by == "adaround"
        assert wrapper.weight_quantizer.__class__.__name__ == "Quantizer"


def test_block_granularity_without_a_graph_rounds_layer_by_layer():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))) if x.sum() > -1e9 else x

    torch.manual_seed(1)
    data = [torch.randn(8, 4) for _ in range(2)]
    with pytest.warns(UserWarning, match="could not trace"):
        sim = lowbit.QuantSim(Untraceable().eval(), data[0], target="w4a8")
    sim.calibrate(data)
    result = lowbit.adaround(sim, data, num_iterations=20, granularity="block")
    assert [unit.names for unit in result.layers] == [("a.layer",), ("b.layer",)]


def test_unknown_granularity_is_one_line():
    model, data = _small_network()
    sim = lowbit.QuantSim(model, data[0], target="w4a8").calibrate(data)
    with pytest.raises(SpecError) as error:
        lowbit.adaround(sim, data, granularity="blocks")
    assert str(error.value) == "adaround granularity must be 'layer' or 'block', not 'blocks'"


@pytest.mark.slow
def test_mobilenet_w4a8_block_rounding(mobilenet, folded_mobilenet, calibration_batches, eval_batches):
    """Two images and 30 steps per block keep this quick; every inverted residual is one block, and
    the agreement with FP32 on the first 64 evaluation images rises far above nearest rounding's."""
    model, _ = folded_mobilenet
    sim = lowbit.QuantSim(model, calibration_batches[0][:1], target="w4a8").calibrate(calibration_batches)
    batches = eval_batches[:2]
    with torch.no_grad():
        reference_top1 = [mobilenet(batch).argmax(dim=1) for batch in batches]

    def agreement() -> float:
        with torch.no_grad():
            agree = sum(int((sim(b).argmax(dim=1) == top1).sum()) for b, top1 in zip(batches, reference_top1))
        return agree / sum(len(b) for b in batches)

    before = agreement()
    result = lowbit.adaround(sim, [calibration_batches[0][:2]], num_iterations=30, granularity="block")
    sim.calibrate(calibration_batches)
    after = agreement()
    print(f"\nw4a8: {result}; top-1 agreement with FP32 {before:.0%} -> {after:.0%}")
    assert len(result.layers) == 18 and sum(len(unit.names) for unit in result.layers) == 53
    assert [len(unit.names) for unit in result.layers][1:-1] == [3] * 16
    assert all(unit.rounded_mse <= unit.nearest_mse for unit in result.layers)
    assert after > before + 0.3


def test_non_finite_loss_names_the_block_and_restores_its_quantizers():
    model, data = _small_network()
    sim = lowbit.QuantSim(model, data[0], target="w4a8").calibrate(data)
    quantizers = {name: sim.model.get_submodule(name).weight_quantizer for name in ("0", "2", "5")}
    with torch.no_grad():
        sim.model.get_submodule("2").layer.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(OptimizationError) as error:
        lowbit.adaround(sim, data, num_iterations=20)
    assert str(error.value) == "adaround: non-finite loss in block '0+2+5', iteration 1"
    assert all(sim.model.get_submodule(name).weight_quantizer is q for name, q in quantizers.items())
