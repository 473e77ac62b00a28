"""A leaf module whose weight (and bias, as int32) is fake-quantized on every call."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.quantizer import Quantizer
from lowbit.torch.integer_emulation import emulable, integer_bias, requantized_conv


def _conv_transpose(layer, x, weight, bias):
    spatial = x.dim() - 2
    output_padding = layer._output_padding(x, None, layer.stride, layer.padding, layer.kernel_size,
                                           spatial, layer.dilation)
    function = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    return function(x, weight, bias, layer.stride, layer.padding, output_padding, layer.groups,
                    layer.dilation)


_FORWARDS = {
    nn.Linear: lambda layer, x, weight, bias: F.linear(x, weight, bias),
    nn.Conv1d: lambda layer, x, weight, bias: layer._conv_forward(x, weight, bias),
    nn.Conv2d: lambda layer, x, weight, bias: layer._conv_forward(x, weight, bias),
    nn.Conv3d: lambda layer, x, weight, bias: layer._conv_forward(x, weight, bias),
    nn.ConvTranspose1d: _conv_transpose, nn.ConvTranspose2d: _conv_transpose, nn.ConvTranspose3d: _conv_transpose,
    nn.Embedding: lambda layer, x, weight, bias: F.embedding(
        x, weight, layer.padding_idx, layer.max_norm, layer.norm_type, layer.scale_grad_by_freq, layer.sparse),
}


class WeightQuantized(nn.Module):
    """Wraps ``layer``; runs it with ``weight_quantizer(layer.weight)``.

    When ``input_quantizer`` (the per-tensor quantizer of the layer's input) is set, the bias is
    rounded to the int32 grid of scale input_scale · weight_scale, exactly as the QDQ export stores it;
    when ``output_quantizer`` is set too, convolutions are computed as onnxruntime's integer kernels
    compute them (with straight-through gradients to the float result).
    """

    def __init__(self, layer: nn.Module, weight_quantizer: Quantizer):
        super().__init__()
        self.layer = layer
        self.weight_quantizer = weight_quantizer
        self.link_input_quantizer(None)
        self.link_output_quantizer(None)
        self._forward = next((f for cls, f in _FORWARDS.items() if isinstance(layer, cls)), None)

    def __getattr__(self, name: str):
        """Attributes the wrapper lacks (weight, in_features ...) come from the wrapped layer."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def link_input_quantizer(self, quantizer: Quantizer | None) -> None:
        """Remember (without owning it as a submodule) the quantizer of this layer's input."""
        object.__setattr__(self, "input_quantizer", quantizer)

    def link_output_quantizer(self, quantizer: Quantizer | None) -> None:
        """Remember the quantizer that ends this layer's fused group (layer → activation → quantizer)."""
        object.__setattr__(self, "output_quantizer", quantizer)

    def forward(self, x, *args, **kwargs):
        weight = self.weight_quantizer(self.layer.weight)
        if self._forward is None or args or kwargs:
            return torch.func.functional_call(self.layer, {"weight": weight}, (x,) + args, kwargs)
        encodings = self._integer_encodings()
        convolve = lambda inputs, weights, bias: self._forward(self.layer, inputs, weights, bias)
        needs_gradient = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        if encodings is not None and not needs_gradient:
            return requantized_conv(convolve, x, weight, self.layer.bias, *encodings)
        output = convolve(x, weight, self._bias())
        if encodings is None:
            return output
        exact = requantized_conv(convolve, x.detach(), weight.detach(), self.layer.bias, *encodings)
        return output + (exact - output).detach()

    def _integer_encodings(self):
        """(input, weight, output) encodings when this convolution runs as an integer kernel, else None."""
        if not isinstance(self.layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return None
        quantizers = (self.input_quantizer, self.weight_quantizer, self.output_quantizer)
        if any(q is None or q.mode != "quantize" for q in quantizers):
            return None
        encodings = tuple(q.encoding for q in quantizers)
        return encodings if emulable(*encodings) else None

    def _bias(self) -> torch.Tensor | None:
        bias = getattr(self.layer, "bias", None)
        source = self.input_quantizer
        weights = self.weight_quantizer
        if (bias is None or source is None or source.mode != "quantize" or weights.mode != "quantize"
                or source.spec.axis is not None or weights.spec.block_size is not None):
            return bias
        scale = source.scale.reshape(()) * weights.scale
        return bias + (integer_bias(bias, source.scale, weights.scale) * scale - bias).detach()
