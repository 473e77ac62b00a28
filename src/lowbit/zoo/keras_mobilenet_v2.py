"""MobileNetV2 as a Keras 3 functional model, with the ImageNet weights of ``pretrained_mobilenet_v2`` (layer names
as in ``keras.applications``; symmetric padding as in torchvision, so it computes what the PyTorch model computes)."""

from __future__ import annotations

from torch import nn

from lowbit.optional import require
from lowbit.zoo.mobilenet_v2 import ConvBNReLU6, InvertedResidual, pretrained_mobilenet_v2


def keras_mobilenet_v2(input_size: int = 224):
    """A ``keras.Model`` taking NHWC ImageNet-normalised images (``photos_to_batch(...).permute(0, 2, 3, 1)``)
    and returning the 1000 logits."""
    keras = require("keras")
    torch_model = pretrained_mobilenet_v2().eval()
    inputs = keras.Input((input_size, input_size, 3), name="input")
    x = _conv_bn(keras, inputs, *_conv_and_norm(torch_model.features[0]), "Conv1", "bn_Conv1", "Conv1_relu")
    for index, block in enumerate(torch_model.features[1:18], start=1):
        x = _inverted_residual(keras, x, block, "expanded_conv" if index == 1 else f"block_{index - 1}")
    x = _conv_bn(keras, x, *_conv_and_norm(torch_model.features[18]), "Conv_1", "Conv_1_bn", "out_relu")
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    linear = torch_model.classifier[1]
    dense = keras.layers.Dense(linear.out_features, name="predictions")
    outputs = dense(x)
    dense.set_weights([linear.weight.detach().numpy().T, linear.bias.detach().numpy()])
    return keras.Model(inputs, outputs, name="mobilenetv2_1.00_224")


def _inverted_residual(keras, x, block: InvertedResidual, prefix: str):
    """Expand (where the block has it), depthwise, project; plus the input where the block adds it."""
    layers = list(block.conv)
    y = x
    if isinstance(layers[0], ConvBNReLU6) and len(layers) == 4:
        y = _conv_bn(keras, y, *_conv_and_norm(layers.pop(0)), f"{prefix}_expand", f"{prefix}_expand_BN", f"{prefix}_expand_relu")
    y = _conv_bn(keras, y, *_conv_and_norm(layers[0]), f"{prefix}_depthwise", f"{prefix}_depthwise_BN",
                 f"{prefix}_depthwise_relu")
    y = _conv_bn(keras, y, layers[1], layers[2], f"{prefix}_project", f"{prefix}_project_BN", None)
    return keras.layers.Add(name=f"{prefix}_add")([x, y]) if block.use_res_connect else y


def _conv_and_norm(stage: ConvBNReLU6) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return stage[0], stage[1]


def _conv_bn(keras, x, conv: nn.Conv2d, bn: nn.BatchNorm2d, name: str, bn_name: str, relu_name: str | None):
    """Conv2D or DepthwiseConv2D (zero padding first where strided), BatchNormalization, then ReLU6 if named."""
    kernel, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    padding = "same" if stride == 1 else "valid"
    if stride > 1 and pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    weight = conv.weight.detach()
    if conv.groups > 1:
        layer = keras.layers.DepthwiseConv2D(kernel, stride, padding, use_bias=False, name=name)
        x = layer(x)
        layer.set_weights([weight.permute(2, 3, 0, 1).numpy()])
    else:
        layer = keras.layers.Conv2D(conv.out_channels, kernel, stride, padding, use_bias=False, name=name)
        x = layer(x)
        layer.set_weights([weight.permute(2, 3, 1, 0).numpy()])
    norm = keras.layers.BatchNormalization(epsilon=bn.eps, name=bn_name)
    x = norm(x)
    norm.set_weights([t.detach().numpy() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)])
    return keras.layers.ReLU(6.0, name=relu_name)(x) if relu_name else x
