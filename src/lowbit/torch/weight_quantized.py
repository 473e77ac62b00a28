"""A leaf module whose weight (and bias, as int32) is fake-quantized on every call."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.int32_bias import int32_bias
from lowbit.quant.quantizer import Quantizer, fast_path_allowed
from lowbit.torch import pair_saturation
from lowbit.torch.layer_wrapper import LayerWrapper
from lowbit.torch.integer_emulation import ConvRequantization, conv_requantization, emulable, requantize_grid


def _conv_transpose(layer, x, weight, bias):
    spatial = x.dim() - 2
    output_padding = layer._output_padding(x, None, layer.stride, layer.padding, layer.kernel_size,
                                           spatial, layer.dilation)
    function = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    return function(x, weight, bias, layer.stride, layer.padding, output_padding, layer.groups,
                    layer.dilation)


def _linear(layer, x, weight, bias):
    return F.linear(x, weight, bias)


def _conv(layer, x, weight, bias):
    return layer._conv_forward(x, weight, bias)


def _embedding(layer, x, weight, bias):
    return F.embedding(x, weight, layer.padding_idx, layer.max_norm, layer.norm_type, layer.scale_grad_by_freq,
                       layer.sparse)


_FORWARDS = {
    nn.Linear: _linear, nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.ConvTranspose1d: _conv_transpose, nn.ConvTranspose2d: _conv_transpose, nn.ConvTranspose3d: _conv_transpose,
    nn.Embedding: _embedding,
}


class WeightQuantized(LayerWrapper):
    """Wraps ``layer``; runs it with ``weight_quantizer(layer.weight)``. With ``input_quantizer`` set the bias
    is rounded to the int32 export grid; with ``output_quantizer`` too, convolutions run as onnxruntime's kernels."""

    def __init__(self, layer: nn.Module, weight_quantizer: Quantizer):
        super().__init__(layer)
        self.weight_quantizer = weight_quantizer
        self.int16_pairs = False
        self.exact_training = True
        self.float_parameters = None  # the layer's float weight and bias, once a technique overwrites them
        self.links = (None, True, None)  # input quantizer, input direct, output quantizer: by reference
        self._forward = next((f for cls, f in _FORWARDS.items()
                              if isinstance(layer, cls) and type(layer).forward is cls.forward), None)

    def link_input_quantizer(self, quantizer: Quantizer | None, direct: bool = True) -> None:
        """Remember (without owning it as a submodule) the quantizer of this layer's input; ``direct``:
        no op that stays in the ONNX export (Flatten, Reshape …) lies between them."""
        self.links = (quantizer, direct, self.links[2])

    def link_output_quantizer(self, quantizer: Quantizer | None) -> None:
        """Remember the quantizer that ends this layer's fused group (layer → activation → quantizer)."""
        self.links = (self.links[0], self.links[1], quantizer)

    @property
    def input_quantizer(self) -> Quantizer | None:
        return self.links[0]

    @property
    def input_direct(self) -> bool:
        return self.links[1]

    @property
    def output_quantizer(self) -> Quantizer | None:
        return self.links[2]

    def forward(self, x, *args, **kwargs):
        if self._forward is None or args or kwargs:
            weight = self.weight_quantizer(self.layer.weight)
            return torch.func.functional_call(self.layer, {"weight": weight}, (x,) + args, kwargs)
        convolve = lambda inputs, weights, bias: self._forward(self.layer, inputs, weights, bias)
        needs_gradient = torch.is_grad_enabled() and (x.requires_grad or self.layer.weight.requires_grad)
        if not needs_gradient and self._cacheable():
            frozen = self._frozen()
            if isinstance(frozen, ConvRequantization):
                integers = self.input_quantizer.grid_integers(x, frozen.input_scale)
                output, output_integers = requantize_grid(convolve, x, frozen, integers)
                self.output_quantizer.mark_on_grid(output, output_integers)
                return output
            weight, bias, pairs = frozen
            return self._saturated(convolve(x, weight, bias), x, pairs)
        weight = self.weight_quantizer(self.layer.weight)
        encodings = self._integer_encodings()
        if encodings is not None and not needs_gradient:
            return requantize_grid(convolve, x, self._integer_form(weight, encodings))[0]
        output = convolve(x, weight, self._bias())
        if encodings is None:
            return self._saturated(output, x, self._linear_pairs(weight.detach()))
        if not self.exact_training:  # training on fake quantization alone: within an output step, one convolution
            return output
        exact = requantize_grid(convolve, x.detach(), self._integer_form(weight.detach(), encodings))[0]
        return output + (exact - output).detach()

    def _integer_form(self, weight: torch.Tensor, encodings: tuple) -> ConvRequantization:
        """The convolution's integer form, with the int16 pair saturation of the host's kernel."""
        form = conv_requantization(weight, self.layer.bias, *encodings)
        pairs = None
        if self.int16_pairs and self.input_direct and pair_saturation.applies(encodings[0], encodings[1]):
            pairs = pair_saturation.layer_pairs(self.layer, form.weights, encodings[0])
        if pairs is None:
            return form
        return form.with_saturation(functools.partial(pair_saturation.conv_correction, self.layer, pairs))

    def _linear_pairs(self, weight: torch.Tensor) -> pair_saturation.SaturatingPairs | None:
        """A Linear layer's weight pairs that saturate on a u8×s8 kernel with int16 pairs, or None."""
        source, weights = self.input_quantizer, self.weight_quantizer
        if (not self.int16_pairs or not isinstance(self.layer, nn.Linear) or source is None or not self.input_direct
                or source.mode != "quantize" or weights.mode != "quantize"
                or not pair_saturation.applies(source.encoding, weights.encoding)):
            return None
        scale = weights.scale.reshape(-1, 1) if weights.scale.dim() else weights.scale
        return pair_saturation.layer_pairs(self.layer, torch.round(weight / scale), source.encoding)

    def _saturated(self, output: torch.Tensor, x: torch.Tensor, pairs) -> torch.Tensor:
        """A Linear layer's float ``output`` plus its pair-saturation error, as onnxruntime's QGemm or
        MatMulIntegerToFloat computes it when its input's DequantizeLinear fuses into it (``pairs`` set)."""
        if pairs is None:
            return output
        source = self.input_quantizer
        integers = source.grid_integers(x, source.scale)
        if integers is None:
            integers = torch.round(x.detach() / source.scale.reshape(()))
        correction = pair_saturation.linear_correction(pairs, integers)
        return output + correction * (source.scale.reshape(()) * self.weight_quantizer.scale).detach()

    def _cacheable(self) -> bool:
        """Whether the weight quantizer fake-quantizes, the linked ones are Quantizers that learn nothing
        (a learned range changes with every step) and no graph is traced."""
        linked = (self.input_quantizer, self.output_quantizer)
        return (isinstance(self.weight_quantizer, Quantizer) and self.weight_quantizer.mode == "quantize"
                and not self.weight_quantizer.learning
                and all(q is None or (isinstance(q, Quantizer) and not q.learning) for q in linked)
                and fast_path_allowed())

    def _frozen(self):
        """The no-gradient form of the layer (integer form, or quantized weight, bias and saturating
        pairs), cached until the weight, the bias or a linked quantizer's mode or encoding changes."""
        tensors, state = self._state_tensors(), self._state()
        cached = self.__dict__.get("_frozen_cache")
        if (cached is None or cached[2] != state or len(cached[0]) != len(tensors)
                or any(a is not b for a, b in zip(cached[0], tensors))):
            with torch.no_grad():
                cached = (tensors, self._freeze(), state)
            self._frozen_cache = cached
        return cached[1]

    def _freeze(self):
        """Integer form when this convolution runs as an integer kernel, else (quantized weight, bias)."""
        weight = self.weight_quantizer(self.layer.weight)
        encodings = self._integer_encodings()
        if encodings is not None:
            return self._integer_form(weight, encodings)
        return weight, self._bias(), self._linear_pairs(weight)

    def _state_tensors(self) -> tuple:
        """The tensors the frozen form depends on (compared by identity, then by version and storage)."""
        quantizers = (self.input_quantizer, self.weight_quantizer, self.output_quantizer)
        buffers = tuple(t for q in quantizers if q is not None for t in (q.scale, q.offset))
        return (self.layer.weight, getattr(self.layer, "bias", None)) + buffers

    def _state(self) -> tuple:
        """Version and storage of every state tensor, the quantizers' modes and specs, the pair setting."""
        tensors = tuple(None if t is None else (t._version, t.data_ptr()) for t in self._state_tensors())
        quantizers = (self.input_quantizer, self.weight_quantizer, self.output_quantizer)
        return (tensors + tuple(None if q is None else (q.mode, q.spec, q.divide) for q in quantizers)
                + (self.int16_pairs,))

    def integer_kernel_in_float(self) -> bool:
        """Whether onnxruntime runs this layer as an integer kernel (a quantized Conv with quantized input and
        output, a Linear with quantized input) that the sim computes in float, so an output may differ by one step."""
        source = self.input_quantizer
        if source is None or source.mode != "quantize" or self.weight_quantizer.mode != "quantize":
            return False
        if isinstance(self.layer, nn.Linear):
            return True
        convolution = isinstance(self.layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        output = self.output_quantizer
        return convolution and output is not None and output.mode == "quantize" and self._integer_encodings() is None

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
        integers, scale = int32_bias(bias.detach(), source.scale, weights.scale,
                                     widen=max(source.spec.bits, weights.spec.bits) > 8)
        return bias + (integers * scale - bias).detach()
