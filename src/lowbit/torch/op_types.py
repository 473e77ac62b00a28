"""The ONNX op type each torch module or function exports as: the vocabulary targets speak."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

MODULE_OP_TYPES = {
    nn.Conv1d: "Conv", nn.Conv2d: "Conv", nn.Conv3d: "Conv",
    nn.ConvTranspose1d: "ConvTranspose", nn.ConvTranspose2d: "ConvTranspose",
    nn.ConvTranspose3d: "ConvTranspose",
    nn.Linear: "Gemm", nn.Embedding: "Gather",
    nn.BatchNorm1d: "BatchNormalization", nn.BatchNorm2d: "BatchNormalization",
    nn.BatchNorm3d: "BatchNormalization",
    nn.LayerNorm: "LayerNormalization", nn.GroupNorm: "GroupNormalization",
    nn.ReLU: "Relu", nn.ReLU6: "Clip", nn.Hardtanh: "Clip", nn.LeakyReLU: "LeakyRelu",
    nn.PReLU: "PRelu", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh", nn.GELU: "Gelu",
    nn.SiLU: "Silu", nn.Hardswish: "HardSwish", nn.Hardsigmoid: "HardSigmoid",
    nn.ELU: "Elu", nn.Softmax: "Softmax",
    nn.MaxPool1d: "MaxPool", nn.MaxPool2d: "MaxPool", nn.MaxPool3d: "MaxPool",
    nn.AvgPool1d: "AveragePool", nn.AvgPool2d: "AveragePool", nn.AvgPool3d: "AveragePool",
    nn.AdaptiveAvgPool1d: "GlobalAveragePool", nn.AdaptiveAvgPool2d: "GlobalAveragePool",
    nn.AdaptiveAvgPool3d: "GlobalAveragePool",
    nn.Upsample: "Resize", nn.Flatten: "Flatten", nn.Identity: "Identity", nn.Dropout: "Dropout",
    nn.Dropout1d: "Dropout", nn.Dropout2d: "Dropout",
    nn.ZeroPad2d: "Pad", nn.ConstantPad2d: "Pad", nn.ReflectionPad2d: "Pad",
}

FUNCTION_OP_TYPES = {
    operator.add: "Add", torch.add: "Add", operator.iadd: "Add",
    operator.sub: "Sub", torch.sub: "Sub", operator.mul: "Mul", torch.mul: "Mul",
    operator.imul: "Mul", operator.truediv: "Div", torch.div: "Div",
    operator.matmul: "MatMul", torch.matmul: "MatMul", torch.bmm: "MatMul",
    torch.cat: "Concat", torch.concat: "Concat", torch.stack: "Concat",
    torch.flatten: "Flatten", torch.unflatten: "Reshape", torch.reshape: "Reshape", torch.transpose: "Transpose",
    torch.permute: "Transpose", torch.squeeze: "Squeeze", torch.unsqueeze: "Unsqueeze",
    operator.getitem: "Slice", torch.chunk: "Split", torch.split: "Split",
    torch.mean: "ReduceMean", torch.sum: "ReduceSum",
    torch.relu: "Relu", F.relu: "Relu", F.relu6: "Clip", F.hardtanh: "Clip", torch.clamp: "Clip",
    torch.sigmoid: "Sigmoid", F.sigmoid: "Sigmoid", torch.tanh: "Tanh", F.tanh: "Tanh",
    F.gelu: "Gelu", F.silu: "Silu", F.hardswish: "HardSwish", F.leaky_relu: "LeakyRelu",
    torch.softmax: "Softmax", F.softmax: "Softmax", F.layer_norm: "LayerNormalization",
    F.adaptive_avg_pool2d: "GlobalAveragePool", F.avg_pool2d: "AveragePool",
    F.max_pool2d: "MaxPool", F.pad: "Pad", F.dropout: "Dropout", F.interpolate: "Resize",
    F.linear: "Gemm", F.conv2d: "Conv", F.embedding: "Gather",
}

METHOD_OP_TYPES = {
    "add": "Add", "add_": "Add", "sub": "Sub", "mul": "Mul", "mul_": "Mul", "div": "Div",
    "matmul": "MatMul", "bmm": "MatMul", "mean": "ReduceMean", "sum": "ReduceSum",
    "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax", "clamp": "Clip",
    "view": "Reshape", "reshape": "Reshape", "unflatten": "Reshape", "flatten": "Flatten", "transpose": "Transpose",
    "permute": "Transpose", "squeeze": "Squeeze", "unsqueeze": "Unsqueeze", "contiguous": "Identity",
    "expand": "Expand", "expand_as": "Expand", "chunk": "Split", "split": "Split",
    "repeat": "Tile", "masked_fill": "Where", "float": "Cast", "to": "Cast", "type_as": "Cast",
}

NON_TENSOR_METHODS = frozenset({"size", "dim", "numel", "shape", "__len__"})


def module_op_type(module: nn.Module) -> str:
    """ONNX op type of a leaf module (its class name when unknown)."""
    for cls in type(module).__mro__:
        if cls in MODULE_OP_TYPES:
            return MODULE_OP_TYPES[cls]
    return type(module).__name__


def function_op_type(function) -> str:
    """ONNX op type of a function called in the graph (its name when unknown)."""
    return FUNCTION_OP_TYPES.get(function, getattr(function, "__name__", str(function)))


def method_op_type(method: str) -> str:
    """ONNX op type of a tensor method called in the graph (its name when unknown)."""
    return METHOD_OP_TYPES.get(method, method)


WEIGHT_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0}
"""Output-channel axis of the weight of each weighted op type (per-channel quantization)."""

WEIGHTED_OP_TYPES = frozenset({"Conv", "ConvTranspose", "Gemm", "Gather"})
"""Op types whose ``weight`` parameter gets a quantizer."""
