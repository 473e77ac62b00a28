"""A fake-quant op that the TorchScript ONNX exporter writes as QuantizeLinear → DequantizeLinear."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.qdq.split import QUANTIZER_KEY_ATTRIBUTE, WIDE_WEIGHT_ATTRIBUTE
from lowbit.qdq.storage import onnx_storage
from lowbit.quant.encoding import Encoding

_TORCH_DTYPES = {"int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16}


class _QuantizeDequantize(torch.autograd.Function):
    """forward: quantize-dequantize (torch's fused kernels); symbolic: Q/DQ nodes tagged with the quantizer's key.
    A 16-bit ``weight`` exports as an 8-bit pair tagged with its real type, for ``widen_weight_pairs`` to restore."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, axis, type_name, low, high, key, weight):
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), low, high)
        scale_t = torch.tensor(scale, dtype=torch.float32, device=x.device)
        zero_t = torch.tensor(zero_point, dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_channel_affine(x, scale_t, zero_t, axis, low, high)

    @staticmethod
    def symbolic(g, x, scale, zero_point, axis, type_name, low, high, key, weight):
        scale_value = torch.tensor(scale, dtype=torch.float32)
        zero_value = torch.tensor(zero_point, dtype=_TORCH_DTYPES.get(type_name, torch.int32))
        if axis is None:
            scale_value, zero_value = scale_value.reshape(()), zero_value.reshape(())
        axis_attribute = {"axis_i": axis} if axis is not None else {}
        domain = "" if type_name in ("int8", "uint8") else "com.microsoft::"
        tag = {f"{QUANTIZER_KEY_ATTRIBUTE}_s": key}
        if domain and weight:  # see the class docstring
            domain = ""
            zeros = ",".join(str(int(z)) for z in zero_value.reshape(-1).tolist())
            tag[f"{WIDE_WEIGHT_ATTRIBUTE}_s"] = f"{type_name}:{zeros}"
            zero_value = torch.zeros(zero_value.shape, dtype=torch.int8)
        scale_node = g.op("Constant", value_t=scale_value)
        zero_node = g.op("Constant", value_t=zero_value)
        quantized = g.op(f"{domain}QuantizeLinear", x, scale_node, zero_node, **axis_attribute, **tag)
        return g.op(f"{domain}DequantizeLinear", quantized, scale_node, zero_node, **axis_attribute)


class ExportQuantizer(nn.Module):
    """Stands in for a calibrated Quantizer while exporting: same values, exported as Q/DQ."""

    def __init__(self, key: str, encoding: Encoding):
        super().__init__()
        self.key = key
        self.encoding = encoding

    def forward(self, x):
        encoding = self.encoding
        type_name, zero_point = onnx_storage(encoding)
        start = int(encoding.offset.reshape(-1)[0]) if type_name.startswith("int") else 0
        low, high = start + encoding.spec.qmin, start + encoding.spec.qmax
        axis = None if encoding.spec.axis is None else encoding.spec.axis % x.dim()
        scale = encoding.scale.reshape(-1).tolist()
        zero = zero_point.reshape(-1).tolist()
        if axis is None:
            scale, zero = scale[0], zero[0]
        weight = isinstance(x, nn.Parameter)
        return _QuantizeDequantize.apply(x, scale, zero, axis, type_name, low, high, self.key, weight)
