"""Small models written the ways people write them: module subclasses with their own forward,
functional calls, weights used directly, several inputs and outputs. Each returns (model, inputs)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _randomize_batchnorms(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics, as a trained network has."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            channels = module.num_features
            module.running_mean.copy_(torch.rand(channels, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(channels, generator=generator) - 0.5)
    return model.eval()


class SameConv(nn.Conv2d):
    """TensorFlow-style "same" convolution: padding=0 in the module, the pad in forward."""

    def __init__(self, cin, cout, k, s, groups=1):
        super().__init__(cin, cout, k, s, 0, groups=groups, bias=False)
        p = max(k - s, 0)
        self.static_padding = nn.ZeroPad2d((p // 2, p - p // 2, p // 2, p - p // 2))

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class SameConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(SameConv(3, 16, 3, 2), nn.BatchNorm2d(16), nn.ReLU6())
        self.depthwise = nn.Sequential(SameConv(16, 16, 5, 2, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.project(self.depthwise(self.stem(x)))
        return self.head(x.mean((2, 3)))


class FunctionalNet(nn.Module):
    """Parameters held directly and used with F.conv2d / F.linear."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(12, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(12) * 0.1)
        self.w2 = nn.Parameter(torch.randn(16, 12, 3, 3) * 0.15)
        self.fc_weight = nn.Parameter(torch.randn(10, 16) * 0.3)
        self.fc_bias = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        x = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        x = F.max_pool2d(x, 2)
        x = F.relu(F.conv2d(x, self.w2, None, stride=2, padding=1))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.linear(x, self.fc_weight, self.fc_bias)


class GroupedDilatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=2, dilation=2, groups=4), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=3, dilation=3, groups=8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.features(x)


class AudioConv1dNet(nn.Module):
    """A waveform classifier: strided Conv1d front end, BatchNorm1d, global pooling."""

    def __init__(self):
        super().__init__()
        self.frontend = nn.Sequential(nn.Conv1d(1, 16, 25, stride=5), nn.BatchNorm1d(16), nn.ReLU(),
                                      nn.Conv1d(16, 32, 9, stride=2, padding=4), nn.BatchNorm1d(32), nn.ReLU(),
                                      nn.Conv1d(32, 32, 3, padding=1, groups=32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(32, 6)

    def forward(self, waveform):
        return self.classifier(self.pool(self.frontend(waveform)).squeeze(-1))


class DecoderNet(nn.Module):
    """An encoder-decoder with ConvTranspose and nearest upsampling, returning an image."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                    nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.out = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        return self.out(self.up2(F.relu(self.up1(self.encode(x)))))


class AttentionNet(nn.Module):
    """Single-head self-attention on tokens, written with matmuls, then mean pooling."""

    def __init__(self, dim=32, classes=8):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, classes)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, tokens):
        q, k, v = self.query(tokens), self.key(tokens), self.value(tokens)
        attention = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        mixed = self.proj(torch.matmul(attention, v)) + tokens
        return self.classifier(mixed.mean(dim=1))


class TokenLinearNet(nn.Module):
    """A per-token MLP on (N, T, D): Linear on 3-D input, output per token."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(24, 48), nn.Linear(48, 12)

    def forward(self, tokens):
        return self.fc2(F.relu(self.fc1(tokens)))


class ActivationsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 16, 3, padding=1), nn.PReLU(16)
        self.conv2, self.act2 = nn.Conv2d(16, 16, 3, padding=1), nn.Hardswish()
        self.conv3 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        x = F.silu(self.conv3(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ConcatSplitResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.left, self.right = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 3, padding=1)
        self.mix = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(self.left(x)), F.relu(self.right(x))], dim=1)
        x = x + F.relu(self.mix(x))
        first, second = torch.split(x, 8, dim=1)
        return self.fc((first * 0.5 + second).mean((2, 3)))


class TwoHeadDetector(nn.Module):
    """Fully convolutional, PNet-style: a face-probability map through Softmax and a box map."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.classes, self.softmax = nn.Conv2d(32, 2, 1), nn.Softmax(dim=1)
        self.boxes = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x)))))))
        return self.boxes(x), self.softmax(self.classes(x))


class MatmulWeightNet(nn.Module):
    """A projection written as ``x @ self.weight + self.bias`` on flattened features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.weight = nn.Parameter(torch.randn(8 * 8 * 8, 10) * 0.05)
        self.bias = nn.Parameter(torch.randn(10) * 0.1)

    def forward(self, x):
        return torch.flatten(F.relu(self.conv(x)), 1) @ self.weight + self.bias


class PaddedLinear(nn.Linear):
    """A Linear subclass with a forward of its own (flattens first)."""

    def forward(self, x):
        return F.linear(torch.flatten(x, 1), self.weight, self.bias)


class TwoInputNet(nn.Module):
    """Two inputs (an image and side features) and two outputs (class logits, a regression)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.image_fc = PaddedLinear(8 * 8 * 8, 16)
        self.side_fc = nn.Linear(5, 16)
        self.logits, self.value = nn.Linear(16, 10), nn.Linear(16, 1)

    def forward(self, image, side):
        joint = F.relu(self.image_fc(self.conv(image)) + self.side_fc(side))
        return self.logits(joint), self.value(joint)


def _images(generator, count=64, size=16):
    return torch.rand(count, 3, size, size, generator=generator) * 2 - 1


ZOO = {
    "same_conv": (SameConvNet, lambda g: _images(g, size=32)),
    "functional": (FunctionalNet, _images),
    "grouped_dilated": (GroupedDilatedNet, _images),
    "audio_conv1d": (AudioConv1dNet, lambda g: torch.randn(64, 1, 800, generator=g) * 0.3),
    "decoder": (DecoderNet, _images),
    "attention": (AttentionNet, lambda g: torch.randn(64, 12, 32, generator=g)),
    "token_linear": (TokenLinearNet, lambda g: torch.randn(64, 10, 24, generator=g)),
    "activations": (ActivationsNet, _images),
    "concat_split_residual": (ConcatSplitResidualNet, _images),
    "two_head_detector": (TwoHeadDetector, lambda g: _images(g, size=24)),
    "matmul_weight": (MatmulWeightNet, _images),
    "two_inputs": (TwoInputNet, lambda g: (_images(g), torch.randn(64, 5, generator=g))),
}


def build(name: str):
    """The zoo model ``name`` (seeded weights, BatchNorm statistics set) and its 64 inputs."""
    factory, inputs = ZOO[name]
    torch.manual_seed(0)
    model = _randomize_batchnorms(factory())
    return model, inputs(torch.Generator().manual_seed(2))
