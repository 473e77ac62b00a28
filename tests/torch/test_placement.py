"""Where quantizers go: checked on the real graphs of MobileNetV2, tiny_resnet and a Transformer."""

from __future__ import annotations

import copy
import operator
import warnings

import pytest
import torch
from torch import fx, nn

import lowbit
from lowbit.quant.quantizer import Quantizer
from lowbit.torch.insert import ACTIVATION_QUANTIZERS
from lowbit.torch.weight_quantized import WeightQuantized
from lowbit.zoo import TransformerEncoderNet


def _is_quantizer(gm: fx.GraphModule, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), Quantizer)


def _module(gm, node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _layer(module):
    return module.layer if isinstance(module, WeightQuantized) else module


def _next_compute(gm, node):
    """The users of ``node`` skipping Identity modules (folded BatchNorms)."""
    users = list(node.users)
    out = []
    for user in users:
        if isinstance(_module(gm, user), nn.Identity):
            out.extend(_next_compute(gm, user))
        else:
            out.append(user)
    return out


def _quantized(gm, node) -> bool:
    """Whether ``node``'s value reaches its readers only through a quantizer."""
    users = list(node.users)
    return bool(users) and all(_is_quantizer(gm, u) for u in users)


# --------------------------------------------------------------------------- MobileNetV2, BN folded

@pytest.fixture(scope="module")
def mobilenet_plan_sim(folded_mobilenet, calibration_batches):
    """An uncalibrated cpu-int8 sim of the BN-folded MobileNetV2 predicting x86 without VNNI (7-bit weights)."""
    model, _ = folded_mobilenet
    return lowbit.QuantSim(model, calibration_batches[0][:1], target="cpu-int8", runtime="onnxruntime-cpu-avx2")


def _convs(gm):
    return [n for n in gm.graph.nodes if isinstance(_layer(_module(gm, n)), nn.Conv2d)]


def test_mobilenet_no_quantizer_between_conv_and_relu6(mobilenet_plan_sim):
    gm = mobilenet_plan_sim.model
    clips = [n for n in gm.graph.nodes if isinstance(_module(gm, n), nn.ReLU6)]
    assert len(clips) == 35
    for clip in clips:
        assert _quantized(gm, clip), f"{clip.name}: ReLU6 output is not quantized"
        (source,) = clip.all_input_nodes
        while isinstance(_module(gm, source), nn.Identity):  # the folded BatchNorm
            (source,) = source.all_input_nodes
        assert isinstance(_layer(_module(gm, source)), nn.Conv2d), f"{clip.name} reads {source.name}"
    for conv in _convs(gm):
        followers = _next_compute(gm, conv)
        if any(isinstance(_module(gm, f), nn.ReLU6) for f in followers):
            assert not any(_is_quantizer(gm, f) for f in conv.users), f"{conv.name} quantized before ReLU6"


def test_mobilenet_projection_convs_get_an_output_quantizer(mobilenet_plan_sim):
    gm = mobilenet_plan_sim.model
    projections = [c for c in _convs(gm) if not any(isinstance(_module(gm, f), nn.ReLU6)
                                                   for f in _next_compute(gm, c))]
    assert len(projections) == 17  # one linear bottleneck per InvertedResidual
    for conv in projections:
        assert _quantized(gm, conv), f"projection {conv.name} has no output quantizer"


def test_mobilenet_one_quantizer_per_residual_add(mobilenet_plan_sim):
    gm = mobilenet_plan_sim.model
    adds = [n for n in gm.graph.nodes if (n.op == "call_function" and n.target in (operator.add, torch.add))
            or (n.op == "call_module" and n.target.startswith("integer_adds."))]
    assert len(adds) == 10
    for add in adds:
        quantizers = [u for u in add.users if _is_quantizer(gm, u)]
        assert len(quantizers) == 1 and len(add.users) == 1, add.name
        # both add inputs were already quantized: no extra input quantizers
        for argument in add.all_input_nodes:
            while isinstance(_module(gm, argument), nn.Identity):  # the folded BatchNorm
                (argument,) = argument.all_input_nodes
            assert _is_quantizer(gm, argument), f"{add.name} reads unquantized {argument.name}"
    input_points = [p for p in mobilenet_plan_sim.points if p.role == "input" and p.argument is not None]
    assert input_points == []


def test_mobilenet_weight_quantizers(mobilenet_plan_sim):
    points = mobilenet_plan_sim.points
    weights = [p for p in points if p.role == "weight"]
    convs = [p for p in weights if p.op_type == "Conv"]
    assert len(convs) == 52
    assert [p.key for p in weights if p.op_type == "Gemm"] == ["classifier.1.weight"]
    assert all(p.spec.axis == 0 and p.spec.symmetric for p in weights)
    # cpu-int8: 8 bits on the 17 depthwise convolutions (int32 kernel), 7 elsewhere
    depthwise = {p.key for p in convs if mobilenet_plan_sim.model.get_submodule(p.module).layer.groups > 1}
    assert len(depthwise) == 17
    assert all(p.spec.bits == (8 if p.key in depthwise else 7) for p in weights)
    summary = mobilenet_plan_sim.summary()["quantizers"]
    # 1 model input, 35 ReLU6, 17 projections, 10 adds, pooled features, logits
    assert summary == {"input": 1, "weight": 53, "output": 64}


def test_mobilenet_without_folding_no_quantizer_inside_conv_bn_relu6(mobilenet, calibration_batches):
    sim = lowbit.QuantSim(copy.deepcopy(mobilenet), calibration_batches[0][:1], target="cpu-int8")
    gm = sim.model
    bns = [n for n in gm.graph.nodes if isinstance(_module(gm, n), nn.BatchNorm2d)]
    assert len(bns) == 52
    for bn in bns:
        (conv,) = bn.all_input_nodes
        assert isinstance(_layer(_module(gm, conv)), nn.Conv2d)
        assert list(conv.users) == [bn], f"{conv.name} quantized before its BatchNorm"
        (after,) = bn.users
        if isinstance(_module(gm, after), nn.ReLU6):
            assert not _is_quantizer(gm, after)
            assert _quantized(gm, after)
        else:
            assert _is_quantizer(gm, after), f"projection {bn.name} has no output quantizer"
    assert sum(1 for p in sim.points if p.role == "weight") == 53


def test_passthrough_ops_have_no_quantizer_of_their_own(mobilenet_plan_sim):
    gm = mobilenet_plan_sim.model
    passthrough = [n for n in gm.graph.nodes
                   if (n.op == "call_function" and n.target in (torch.flatten, torch.reshape))
                   or isinstance(_module(gm, n), (nn.Dropout, nn.Identity, nn.Flatten))]
    assert any(n.target is torch.flatten for n in passthrough if n.op == "call_function")
    assert any(isinstance(_module(gm, n), nn.Dropout) for n in passthrough)
    for node in passthrough:
        assert node.name not in mobilenet_plan_sim.quantizers(), node.name
        assert not any(_is_quantizer(gm, u) for u in node.users), f"{node.name} has a quantizer"


def test_passthrough_reshape_view_and_identity_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.identity = nn.Identity()
            self.drop = nn.Dropout(0.1)
            self.flat = nn.Flatten()
            self.fc = nn.Linear(4 * 6 * 6 * 1, 5)

        def forward(self, x):
            y = self.identity(self.conv(x)).reshape(x.shape[0], 4, 36)
            y = y.view(x.shape[0], -1).unflatten(1, (4, 36))
            return self.fc(self.flat(self.drop(y)))

    sim = lowbit.QuantSim(Net(), torch.randn(2, 3, 8, 8))
    keys = sim.quantizers().keys()
    assert {"conv", "fc"} <= set(keys)
    for name in ("identity", "reshape", "view", "unflatten", "drop", "flat"):
        assert name not in keys, f"{name} has a quantizer: {sorted(keys)}"
    assert sorted(k for k in keys if sim.point(k).role != "weight") == ["conv", "fc", "x"]


# --------------------------------------------------------------------------- tiny_resnet: shared relu

def test_resnet_shared_relu_gets_one_quantizer_per_call_site(resnet, resnet_batches):
    sim = lowbit.QuantSim(resnet, resnet_batches[0])
    gm = sim.model
    for block in ("layer1.0", "layer2.0", "layer3.0", "layer4.0"):
        calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == f"{block}.relu"]
        assert len(calls) == 2, block
        quantizers = []
        for call in calls:
            (user,) = call.users
            assert _is_quantizer(gm, user), f"{call.name} output not quantized"
            quantizers.append(gm.get_submodule(user.target))
        assert quantizers[0] is not quantizers[1]
        assert calls[0].name in sim.quantizers() and calls[1].name in sim.quantizers()
    sim.calibrate(resnet_batches)
    first, second = (sim.quantizers()[n.name] for n in gm.graph.nodes
                     if n.op == "call_module" and n.target == "layer1.0.relu")
    assert not torch.equal(first.scale, second.scale)


# --------------------------------------------------------------------------- Transformer

@pytest.fixture(scope="module")
def transformer_case():
    torch.manual_seed(0)
    model = TransformerEncoderNet().eval()
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        ids = torch.randint(0, 100, (8, 24), generator=gen)
        lengths = torch.randint(4, 25, (8,), generator=gen)
        mask = (torch.arange(24)[None, :] < lengths[:, None]).long()
        batches.append((ids, mask))
    sim = lowbit.QuantSim(model, batches[0], target="transformer").calibrate(batches)
    return model, sim, batches


def _mask_derived(gm):
    """Nodes computed from attention_mask alone (ignoring dtype/shape reads of other tensors)."""
    derived = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if node.name == "attention_mask":
                derived.add(node)
            continue
        if node.op == "call_function" and node.target is getattr:
            continue
        inputs = [a for a in node.all_input_nodes
                  if not (a.op == "call_function" and a.target is getattr)]
        if inputs and all(a in derived for a in inputs):
            derived.add(node)
    return derived


def test_transformer_mask_tensors_get_no_quantizer(transformer_case):
    _, sim, _ = transformer_case
    gm = sim.model
    assert sim.capture_mode == "fx" and sim.target.name == "transformer"
    derived = _mask_derived(gm)
    names = {n.name for n in derived}
    # the additive mask: (1 - keep) * -10000, and the token count keep.sum(1)
    assert {"to", "sub", "mul", "getitem_2", "sum_2", "clamp"} <= names, sorted(names)
    for point in sim.points:
        assert point.node not in names, f"quantizer {point.key} sits on mask-derived {point.node}"
        assert point.argument not in names, f"quantizer {point.key} reads mask-derived {point.argument}"
    for node in derived:
        assert not any(_is_quantizer(gm, u) for u in node.users), node.name


def test_transformer_w8a8_close_to_fp32(transformer_case):
    model, sim, batches = transformer_case
    with torch.no_grad():
        reference = torch.cat([model(*b) for b in batches])
        simulated = torch.cat([sim(*b) for b in batches])
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), simulated.flatten(), dim=0).item()
    print(f"\ntransformer W8A8 vs FP32 cosine {cosine:.5f}")
    assert cosine >= 0.98


def test_transformer_weights_and_embedding_quantized(transformer_case):
    _, sim, _ = transformer_case
    weights = {p.key for p in sim.points if p.role == "weight"}
    assert "embedding.weight" in weights and "classifier.weight" in weights
    assert len(weights) == 1 + 2 * 6 + 1


# --------------------------------------------------------------------------- leaf fallback

class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.relu(self.conv(x))
        if y.sum() > 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


def test_leaf_fallback_warns_and_quantizes_layers():
    torch.manual_seed(0)
    model = DataDependent().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    with pytest.warns(UserWarning, match="torch.fx could not trace"):
        sim = lowbit.QuantSim(model, data[0])
    assert sim.capture_mode == "leaf-modules"
    weights = {p.key for p in sim.points if p.role == "weight"}
    assert weights == {"conv.weight", "fc.weight"}
    sim.calibrate(data)
    assert sim.is_calibrated
    with torch.no_grad():
        reference, simulated = model(data[0]), sim(data[0])
    assert not torch.equal(reference, simulated)
    assert torch.allclose(reference, simulated, atol=0.05 * reference.abs().max().item())
    # the user's layers are wrapped in the copy only
    assert isinstance(model.conv, nn.Conv2d)
