"""Every shipped preset loads and resolves to the rules its description promises."""

import pytest

from lowbit.target import PASSTHROUGH_OPS, load_target, preset_names

DEFAULT_SUPERGROUPS = {
    ("Conv", "Relu"),
    ("Conv", "Clip"),
    ("Conv", "BatchNormalization", "Relu"),
    ("Conv", "BatchNormalization", "Clip"),
    ("Conv", "BatchNormalization"),
    ("ConvTranspose", "Relu"),
    ("Gemm", "Relu"),
    ("MatMul", "Relu"),
    ("Add", "Relu"),
}


def test_preset_names_lists_the_shipped_presets():
    assert preset_names() == ["cpu-int8", "default", "litert-int8", "transformer", "w4a8", "w8a16"]


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_with_a_one_line_description(name):
    target = load_target(name)
    assert target.name == name
    assert target.description and "\n" not in target.description
    if name != "transformer":
        assert target.model_input_quantized and target.model_output_quantized
    assert set(target.supergroups) >= DEFAULT_SUPERGROUPS
    assert not target.op("Conv").param("bias").quantized


def test_default_is_per_channel_symmetric_int8_weights_and_asymmetric_8_bit_activations():
    target = load_target("default")
    conv = target.op("Conv")
    assert conv.param("weight").quantized
    assert conv.param("weight").bits == 8
    assert conv.param("weight").symmetric
    assert conv.param("weight").per_channel
    assert conv.param("weight").dtype == "int"
    assert conv.activation.bits == 8 and not conv.activation.symmetric and conv.activation.dtype == "int"
    assert conv.output_quantized and not conv.input_quantized
    assert not target.op("Squeeze").output_quantized
    assert (target.default_param_bits, target.default_act_bits) == (8, 8)
    assert target.per_channel and target.unsigned_symmetric and not target.strict_symmetric


def test_cpu_int8_weights_are_7_bit_so_int16_pair_sums_cannot_saturate():
    target = load_target("cpu-int8")
    weight = target.op("Conv").param("weight")
    assert weight.bits == 7 and weight.symmetric and weight.per_channel
    assert not target.unsigned_symmetric
    largest_weight = 2 ** (weight.bits - 1)
    assert 255 * largest_weight * 2 < 2**15
    assert target.op("MatMul").activation.bits == 8 and not target.op("MatMul").activation.symmetric


def test_transformer_quantizes_only_what_integer_kernels_read():
    target = load_target("transformer")
    for op_type in ("Gemm", "MatMul", "Conv"):
        rule = target.op(op_type)
        assert rule.input_quantized and rule.activation.bits == 8 and not rule.activation.symmetric
        assert rule.param("weight").quantized and rule.param("weight").per_channel
    for op_type in ("Add", "LayerNormalization", "Softmax", "Gelu", "Mul", "Div"):
        assert not target.op(op_type).output_quantized, op_type
    assert target.op("Softmax").encoding_constraints == (0.0, 1.0)
    assert not target.model_input_quantized and not target.model_output_quantized


def test_w4a8_has_4_bit_weights():
    weight = load_target("w4a8").op("Gemm").param("weight")
    assert weight.bits == 4 and weight.symmetric and weight.per_channel


def test_w8a16_has_16_bit_asymmetric_activations():
    target = load_target("w8a16")
    assert target.op("Relu").activation.bits == 16 and not target.op("Relu").activation.symmetric
    assert target.op("Conv").param("weight").bits == 8


def test_unknown_op_types_get_the_defaults():
    target = load_target("default")
    assert target.op("SomeCustomOp") == target.op("Conv")


def test_passthrough_ops_only_move_or_select_data():
    assert {"Reshape", "Transpose", "Flatten", "MaxPool", "Slice"} <= PASSTHROUGH_OPS
    assert not {"Gather", "Concat", "Conv", "Relu", "Add"} & PASSTHROUGH_OPS
