"""tiny_resnet, resnet18 and TransformerEncoderNet: forward shapes and torch.fx traceability."""

import torch
import torch.fx
from torch import nn

from lowbit.zoo import TransformerEncoderNet, resnet18, tiny_resnet

torch.set_num_threads(2)


def test_tiny_resnet_forward_and_trace():
    model = tiny_resnet().eval()
    x = torch.randn(2, 3, 32, 32)
    traced = torch.fx.symbolic_trace(model)
    assert model(x).shape == (2, 10)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=1e-6)


def test_basic_block_calls_one_relu_twice():
    traced = torch.fx.symbolic_trace(tiny_resnet())
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert calls.count("layer1.0.relu") == 2


def test_resnet18_keys_match_torchvision():
    keys = resnet18().state_dict().keys()
    assert len(keys) == 122
    assert {"conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_mean", "fc.bias"} <= keys


def _transformer_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (3, 12), generator=gen)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    return ids, mask


def test_transformer_trace_matches_eager():
    torch.manual_seed(0)
    model = TransformerEncoderNet().eval()
    ids, mask = _transformer_inputs()
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        eager = model(ids, mask)
        torch.testing.assert_close(traced(ids, mask), eager, rtol=0, atol=1e-6)
    assert eager.shape == (3, 10)
    assert sum(isinstance(m, nn.GELU) for m in traced.modules()) == 2


def test_transformer_ignores_padded_tokens():
    torch.manual_seed(0)
    model = TransformerEncoderNet().eval()
    ids, mask = _transformer_inputs()
    changed = ids.clone()
    changed[1, 8:] = (changed[1, 8:] + 1) % 100
    with torch.no_grad():
        torch.testing.assert_close(model(changed, mask)[1], model(ids, mask)[1], rtol=0, atol=1e-5)
