"""Bad target specs fail with one TargetError line naming the source and the problem."""

import copy
import json

import pytest

from lowbit.errors import LowbitError, TargetError
from lowbit.target import load_target


@pytest.fixture
def config():
    return load_target("default").to_json()


def load_error(spec) -> str:
    with pytest.raises(TargetError) as caught:
        load_target(spec)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_target_error_is_a_lowbit_error():
    assert issubclass(TargetError, LowbitError)


def test_unknown_preset_lists_the_available_ones():
    message = load_error("defualt")
    assert "unknown target preset 'defualt'" in message
    assert "cpu-int8, default, litert-int8, transformer, w4a8, w8a16" in message


def test_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    assert load_error(path) == f"target file '{path}' not found"
    assert "not found" in load_error(str(path))


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "defaults": {,\n}')
    message = load_error(path)
    assert message.startswith(f"target '{path}': malformed JSON at line 2, column 16")


def test_spec_of_the_wrong_type():
    assert "got int" in load_error(8)


def test_top_level_must_be_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[]")
    assert load_error(path) == f"target '{path}': the top level must be an object, got a list"


@pytest.mark.parametrize("bits", [40, 1])
def test_bitwidth_out_of_range(config, bits):
    config["op_type"]["Conv"] = {"supported_kernels": [{"activation": {"bitwidth": bits, "dtype": "int"}}]}
    assert load_error(config) == (
        "target '<dict>': op_type.Conv.supported_kernels[0].activation.bitwidth "
        f"must be an integer in 2..16 (or 32), got {bits}"
    )


def test_float_bitwidth_must_be_16_or_32(config):
    config["defaults"]["supported_kernels"][0]["activation"] = {"bitwidth": 8, "dtype": "float"}
    assert "defaults.supported_kernels[0].activation.bitwidth must be 16 or 32" in load_error(config)


def test_bitwidth_must_be_an_integer(config):
    config["defaults"]["supported_kernels"][0]["param"]["bitwidth"] = "8"
    assert "defaults.supported_kernels[0].param.bitwidth must be an integer, got '8'" in load_error(config)


def test_unknown_dtype(config):
    config["defaults"]["supported_kernels"][0]["param"]["dtype"] = "uint"
    assert 'defaults.supported_kernels[0].param.dtype must be "int" or "float"' in load_error(config)


def test_boolean_that_is_neither(config):
    config["model_input"]["is_input_quantized"] = "Maybe"
    assert load_error(config) == (
        """target '<dict>': model_input.is_input_quantized must be true/false or "True"/"False", got 'Maybe'"""
    )


def test_missing_section(config):
    del config["supergroups"]
    assert load_error(config) == "target '<dict>': missing required section supergroups"


def test_missing_key_inside_a_section(config):
    del config["defaults"]["ops"]
    assert load_error(config) == "target '<dict>': missing required key defaults.ops"


def test_unknown_key_suggests_the_known_one(config):
    config["op_type"]["Conv"] = {"is_output_quantised": "True"}
    assert load_error(config) == (
        "target '<dict>': unknown key op_type.Conv.is_output_quantised (did you mean 'is_output_quantized'?)"
    )


def test_unknown_top_level_key(config):
    config["supergroup"] = []
    assert "unknown key supergroup (did you mean 'supergroups'?)" in load_error(config)


def test_unknown_key_without_a_close_match_lists_the_known_ones(config):
    config["model_output"]["colour"] = "True"
    assert "unknown key model_output.colour (known: is_output_quantized)" in load_error(config)


def test_empty_op_list(config):
    config["supergroups"].append({"op_list": []})
    assert "supergroups[9].op_list must list at least 2 op types, got 0" in load_error(config)


def test_empty_supported_kernels(config):
    config["defaults"]["supported_kernels"] = []
    assert "defaults.supported_kernels must list at least 1 kernel, got 0" in load_error(config)


def test_encoding_constraints_min_below_max(config):
    config["op_type"]["Softmax"] = {"encoding_constraints": {"min": 1.0, "max": 0.0}}
    assert "op_type.Softmax.encoding_constraints.min must be below" in load_error(config)


def test_description_must_be_one_line(config):
    config["lowbit"]["description"] = "two\nlines"
    assert "lowbit.description must be one line" in load_error(config)


def test_file_errors_name_the_file(tmp_path, config):
    broken = copy.deepcopy(config)
    broken["defaults"]["ops"]["is_output_quantized"] = "yes"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(broken))
    assert load_error(path).startswith(f"target '{path}': defaults.ops.is_output_quantized must be")
