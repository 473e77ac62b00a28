"""torch.export and converted-TorchScript graphs (aten calls on get_attr weights) rewritten into
module form: same outputs, same quantizers and BN folding as the eager model, QDQ export matches."""

import copy
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.fidelity import measure_fidelity
from lowbit.torch.batchnorm_fold import fold_batchnorm
from lowbit.torch.module_graph import as_module_graph, is_aten_graph
from lowbit.torch.op_types import function_op_type
from lowbit.zoo import tiny_resnet


def _block(inp, out, stride=1, groups=1, kernel=3):
    return nn.Sequential(nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6())


class _Inverted(nn.Module):
    def __init__(self, channels, hidden):
        super().__init__()
        self.conv = nn.Sequential(_block(channels, hidden, kernel=1), _block(hidden, hidden, groups=hidden),
                                  nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.conv(x)


class SmallMobileNet(nn.Module):
    """MobileNetV2-like: stem, two inverted residuals, mean pooling, dropout and a classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(_block(3, 8, stride=2), _Inverted(8, 24), _Inverted(8, 24), _block(8, 32, kernel=1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x).mean([2, 3]))


def _seeded(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


MODELS = {"tiny_resnet": lambda: _seeded(tiny_resnet()), "small_mobilenet": lambda: _seeded(SmallMobileNet())}
DATA = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def _graph(model, kind):
    """The model as the CLI loads it: a torch.export program's module, or converted TorchScript."""
    example = DATA[0]
    if kind == "export":
        gm = torch.export.export(model, (example,)).module()
    elif kind == "decomposed":
        gm = torch.export.export(model, (example,)).run_decompositions().module()
    else:
        from torch._export.converter import TS2EPConverter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = TS2EPConverter(torch.jit.trace(model, example), (example,)).convert().module()
    gm.__dict__.pop("train", None)
    gm.__dict__.pop("eval", None)
    return gm.eval()


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("LOWBIT_QUIET", "1")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["export", "decomposed", "torchscript"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_rewrite_keeps_outputs_and_names(name, kind):
    model = MODELS[name]()
    gm = _graph(model, kind)
    assert is_aten_graph(gm)
    rewritten = as_module_graph(gm)
    with torch.no_grad():
        assert torch.allclose(rewritten(DATA[1]), model(DATA[1]), atol=1e-5)
    eager = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))}
    layers = {n for n, m in rewritten.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))}
    assert layers == eager  # the user's parameter names survive
    assert not any(n.op == "get_attr" for n in rewritten.graph.nodes)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_quantize_rewritten_matches_eager_and_onnxruntime(name, tmp_path):
    model = MODELS[name]()
    rewritten = as_module_graph(_graph(model, "export"))
    eager_pairs = fold_batchnorm(copy.deepcopy(model), DATA[0])
    graph_pairs = fold_batchnorm(copy.deepcopy(rewritten), DATA[0])
    assert len(graph_pairs) == len(eager_pairs) > 0
    eager_sim, sim = lowbit.quantize(model, DATA), lowbit.quantize(rewritten, DATA)
    assert sim.summary()["quantizers"]["weight"] == eager_sim.summary()["quantizers"]["weight"] > 0
    assert sim.summary()["quantizers"] == eager_sim.summary()["quantizers"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sim.modules())
    paths = sim.export(tmp_path, name=name)
    fidelity = measure_fidelity(sim, paths.qdq_onnx, DATA)
    assert fidelity.top1_agreement == 1.0 and fidelity.max_error_lsb <= 1.0


def test_aten_ops_have_onnx_op_types():
    aten = torch.ops.aten
    expected = {aten.relu.default: "Relu", aten.hardtanh.default: "Clip", aten.add.Tensor: "Add",
                aten.add: "Add", aten.mul.Tensor: "Mul", aten.matmul.default: "MatMul",
                aten.view.default: "Reshape", aten.flatten.using_ints: "Flatten", aten.permute.default: "Transpose",
                aten.adaptive_avg_pool2d.default: "GlobalAveragePool", aten.softmax.int: "Softmax",
                aten.layer_norm.default: "LayerNormalization", aten.gelu.default: "Gelu",
                aten.cat.default: "Concat", aten.sigmoid.default: "Sigmoid", aten.mean.dim: "ReduceMean"}
    assert {op: function_op_type(op) for op in expected} == expected
    assert function_op_type(aten.sym_size.int) is None
