"""AIMET quantsim configs (string booleans, AIMET's own keys) load and resolve as AIMET reads them."""

import json

from lowbit.target import load_target

AIMET_DEFAULT_CONFIG = {
    "defaults": {
        "ops": {"is_output_quantized": "True"},
        "params": {"is_quantized": "True", "is_symmetric": "True"},
        "strict_symmetric": "False",
        "unsigned_symmetric": "True",
        "per_channel_quantization": "False",
    },
    "params": {"bias": {"is_quantized": "False"}},
    "op_type": {
        "Squeeze": {"is_output_quantized": "False"},
        "Pad": {"is_output_quantized": "False"},
        "Mean": {"is_output_quantized": "False"},
    },
    "supergroups": [
        {"op_list": ["Conv", "Relu"]},
        {"op_list": ["Conv", "Clip"]},
        {"op_list": ["Conv", "BatchNormalization", "Relu"]},
        {"op_list": ["Add", "Relu"]},
        {"op_list": ["Gemm", "Relu"]},
    ],
    "model_input": {"is_input_quantized": "True"},
    "model_output": {},
}

HTP_STYLE_CONFIG = {
    "defaults": {
        "hw_version": "V75",
        "ops": {"is_output_quantized": True},
        "params": {"is_quantized": True, "is_symmetric": True},
        "per_channel_quantization": True,
        "supported_kernels": [
            {"activation": {"bitwidth": 16, "dtype": "int"}, "param": {"bitwidth": 8, "dtype": "int"}},
            {"activation": {"bitwidth": 8, "dtype": "int"}, "param": {"bitwidth": 8, "dtype": "int"}},
        ],
    },
    "params": {"bias": {"is_quantized": False}},
    "op_type": {
        "LayerNormalization": {
            "per_channel_quantization": "False",
            "params": {"weight": {"is_symmetric": "False"}},
            "supported_kernels": [
                {"activation": {"bitwidth": 8, "dtype": "int"}, "param": {"bitwidth": 8, "dtype": "int"}}
            ],
        },
        "GroupNormalization": {"params": {"bias": {"is_quantized": "True"}}},
        "NonZero": {
            "is_output_quantized": "False",
            "supported_kernels": [{"activation": {"bitwidth": 32, "dtype": "int"}}],
        },
        "Cast": {"supported_kernels": [{"activation": {"bitwidth": 32, "dtype": "float"}}]},
        "Sigmoid": {"encoding_constraints": {"min": 0.0, "max": 1.0}},
    },
    "supergroup_pass_list": ["LayerNormalization"],
    "supergroups": [],
    "model_input": {"is_input_quantized": "True"},
    "model_output": {},
}


def test_aimet_default_config_file_loads_with_aimet_semantics(tmp_path):
    path = tmp_path / "aimet_default.json"
    path.write_text(json.dumps(AIMET_DEFAULT_CONFIG))
    target = load_target(path)
    assert target.name == "aimet_default" and target.description == ""
    conv = target.op("Conv")
    assert conv.output_quantized and not conv.input_quantized
    assert conv.activation.bits == 8 and not conv.activation.symmetric
    weight = conv.param("weight")
    assert weight.quantized and weight.symmetric and not weight.per_channel and weight.bits == 8
    assert not conv.param("bias").quantized
    assert conv.param("running_mean").quantized
    assert not target.op("Squeeze").output_quantized
    assert target.model_input_quantized and not target.model_output_quantized
    assert target.unsigned_symmetric and not target.strict_symmetric and not target.per_channel
    assert ("Conv", "BatchNormalization", "Relu") in target.supergroups


def test_string_path_loads_the_same_target(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(AIMET_DEFAULT_CONFIG))
    assert load_target(str(path)) == load_target(AIMET_DEFAULT_CONFIG)


def test_first_supported_kernel_sets_the_bitwidths_and_op_entries_override_defaults():
    target = load_target(HTP_STYLE_CONFIG)
    assert (target.default_act_bits, target.default_param_bits) == (16, 8)
    assert target.op("Conv").activation.bits == 16
    layer_norm = target.op("LayerNormalization")
    assert layer_norm.activation.bits == 8
    assert not layer_norm.param("weight").symmetric and not layer_norm.param("weight").per_channel
    assert target.op("GroupNormalization").param("bias").quantized
    assert not target.op("Conv").param("bias").quantized
    assert target.op("NonZero").activation.bits == 32 and not target.op("NonZero").output_quantized
    assert target.op("Cast").activation.dtype == "float"
    assert target.op("Sigmoid").encoding_constraints == (0.0, 1.0)


def test_real_and_string_booleans_mean_the_same():
    as_strings = json.loads(json.dumps(AIMET_DEFAULT_CONFIG))
    as_booleans = json.loads(json.dumps(AIMET_DEFAULT_CONFIG).replace('"True"', "true").replace('"False"', "false"))
    assert load_target(as_booleans) == load_target(as_strings)
