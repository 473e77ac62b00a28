"""The ONNX op types lowbit quantizes: ops outside this set (recurrent cells, custom ops ...) run in
float, get no quantizer of their own, and are listed as such in a sim's summary."""

QUANTIZED_OP_TYPES = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Gather",
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Gelu", "Silu", "HardSwish", "HardSigmoid", "Elu",
    "Softplus", "Softmax", "LogSoftmax", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "Neg", "Abs",
    "Add", "Sub", "Mul", "Div", "Min", "Max", "Mean", "Sum", "Where",
    "Concat", "ReduceMean", "ReduceSum", "AveragePool", "GlobalAveragePool", "Resize", "Upsample",
})
"""Op types given quantizers per the target (pass-through ops such as Reshape carry their input's encoding: see
``lowbit.target.PASSTHROUGH_OPS``). "Silu" is torch's SiLU, one op there (ONNX writes it as Sigmoid then Mul)."""
