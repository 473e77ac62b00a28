"""WeightQuantized runs a layer with its fake-quantized weight, honouring a subclass's own forward."""

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.fake_quant import fake_quantize
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.spec import QuantSpec
from lowbit.torch.weight_quantized import WeightQuantized


class ReflectPaddedConv(nn.Conv2d):
    """A conv that pads its input itself (reflect) before the plain convolution."""

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 1, 1), mode="reflect"))


def test_subclass_forward_runs_with_the_quantized_weight():
    torch.manual_seed(0)
    layer = ReflectPaddedConv(3, 8, 3).eval()
    quantizer = Quantizer(QuantSpec(4, symmetric=True, axis=0))
    wrapper = WeightQuantized(layer, quantizer)
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        quantizer.start_calibration()
        quantizer(layer.weight)
        quantizer.finish_calibration()
        expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), fake_quantize(layer.weight, quantizer.encoding),
                            layer.bias)
        output = wrapper(x)
    assert output.shape == (2, 8, 10, 10)
    torch.testing.assert_close(output, expected)
