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


WEIGHTED_OP_TYPES = frozenset({"Conv", "ConvTranspose", "Gemm", "Gather"})
"""Op types whose ``weight`` parameter gets a quantizer."""


def _aten_op_types() -> dict:
    """ONNX op types of the aten operators in torch.export and converted-TorchScript graphs, keyed by
    both the overload (``aten.relu.default``) and its packet (``aten.relu``); None for non-tensor ops."""
    aten = torch.ops.aten
    names = {
        "Add": ["add.Tensor", "add_.Tensor", "add.Scalar"], "Sub": ["sub.Tensor", "sub.Scalar", "rsub.Scalar"],
        "Mul": ["mul.Tensor", "mul_.Tensor", "mul.Scalar"], "Div": ["div.Tensor", "div.Scalar"],
        "MatMul": ["matmul.default", "mm.default", "bmm.default"], "Gemm": ["linear.default", "addmm.default"],
        "Conv": ["conv1d.default", "conv2d.default", "conv3d.default", "conv1d.padding", "conv2d.padding",
                 "conv3d.padding", "convolution.default"],
        "ConvTranspose": ["conv_transpose1d.default", "conv_transpose2d.input", "conv_transpose3d.input"],
        "BatchNormalization": ["batch_norm.default", "_native_batch_norm_legit_no_training.default"],
        "Concat": ["cat.default", "stack.default", "concat.default"],
        "Reshape": ["view.default", "reshape.default", "_unsafe_view.default", "unflatten.int"],
        "Flatten": ["flatten.using_ints"],
        "Transpose": ["transpose.int", "permute.default", "t.default"],
        "Squeeze": ["squeeze.dim", "squeeze.dims", "squeeze.default"], "Unsqueeze": ["unsqueeze.default"],
        "Slice": ["slice.Tensor", "select.int", "narrow.default"],
        "Identity": ["contiguous.default", "clone.default", "alias.default", "detach.default"],
        "Expand": ["expand.default"], "Split": ["split.Tensor", "split_with_sizes.default", "chunk.default"],
        "ReduceMean": ["mean.dim", "mean.default"], "ReduceSum": ["sum.dim_IntList", "sum.default"],
        "Relu": ["relu.default", "relu_.default"],
        "Clip": ["hardtanh.default", "hardtanh_.default", "clamp.default", "clamp.Tensor", "clamp_min.default",
                 "clamp_max.default"],
        "Sigmoid": ["sigmoid.default"], "Tanh": ["tanh.default"], "Gelu": ["gelu.default"], "Silu": ["silu.default"],
        "HardSwish": ["hardswish.default"], "HardSigmoid": ["hardsigmoid.default"],
        "LeakyRelu": ["leaky_relu.default"], "Elu": ["elu.default"],
        "Softmax": ["softmax.int", "_softmax.default"], "LayerNormalization": ["layer_norm.default"],
        "GroupNormalization": ["group_norm.default"],
        "GlobalAveragePool": ["adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default",
                              "_adaptive_avg_pool2d.default", "adaptive_avg_pool3d.default"],
        "AveragePool": ["avg_pool1d.default", "avg_pool2d.default", "avg_pool3d.default"],
        "MaxPool": ["max_pool1d.default", "max_pool2d.default", "max_pool3d.default"],
        "Pad": ["pad.default", "constant_pad_nd.default"],
        "Resize": ["upsample_nearest2d.vec", "upsample_bilinear2d.vec", "upsample_nearest2d.default",
                   "upsample_bilinear2d.default"],
        "Dropout": ["dropout.default"], "Gather": ["embedding.default"],
        None: ["sym_size.int", "sym_numel.default", "_assert_scalar.default", "_assert_tensor_metadata.default"],
    }
    table = {}
    for op_type, overloads in names.items():
        for name in overloads:
            packet_name, _, overload_name = name.partition(".")
            packet = getattr(aten, packet_name, None)
            overload = getattr(packet, overload_name, None) if packet is not None else None
            if overload is None:
                continue
            table[overload] = op_type
            table.setdefault(packet, op_type)
    return table


FUNCTION_OP_TYPES.update(_aten_op_types())
