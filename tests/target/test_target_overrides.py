"""with_overrides replaces default kernels only; to_json writes AIMET format that loads back equal."""

import json

import pytest

from lowbit.errors import TargetError
from lowbit.target import Target, load_target, preset_names


def test_with_overrides_changes_defaults_but_keeps_op_specific_bits():
    config = load_target("default").to_json()
    config["op_type"]["Softmax"] = {"supported_kernels": [{"activation": {"bitwidth": 16, "dtype": "int"}}]}
    target = Target(config, name="custom")
    changed = target.with_overrides(param_bits=4, act_bits=8, per_channel=False)
    assert (changed.default_param_bits, changed.default_act_bits) == (4, 8)
    assert not changed.per_channel
    assert changed.op("Conv").param("weight").bits == 4
    assert not changed.op("Conv").param("weight").per_channel
    assert changed.op("Relu").activation.bits == 8
    assert changed.op("Softmax").activation.bits == 16
    assert target.op("Conv").param("weight").bits == 8
    assert changed.name == "custom(param_bits=4, act_bits=8, per_channel=False)"


def test_with_overrides_on_a_config_without_kernels_starts_from_8_bits():
    config = load_target("default").to_json()
    del config["defaults"]["supported_kernels"]
    changed = Target(config).with_overrides(act_bits=16)
    assert (changed.default_param_bits, changed.default_act_bits) == (8, 16)


def test_with_no_overrides_is_equal():
    target = load_target("w4a8")
    assert target.with_overrides() == target


def test_with_overrides_rejects_impossible_bits():
    with pytest.raises(TargetError, match=r"bitwidth must be an integer in 2\.\.16"):
        load_target("default").with_overrides(param_bits=40)


@pytest.mark.parametrize("name", preset_names())
def test_to_json_round_trips(name, tmp_path):
    target = load_target(name)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(target.to_json()))
    reloaded = load_target(path)
    assert reloaded == target and hash(reloaded) == hash(target)
    assert reloaded.description == target.description
    assert reloaded.op("Softmax") == target.op("Softmax")


def test_to_json_writes_string_booleans_and_can_leave_out_lowbit_key():
    target = load_target({**load_target("default").to_json(), "model_output": {"is_output_quantized": True}})
    written = target.to_json(include_lowbit=False)
    assert written["model_output"]["is_output_quantized"] == "True"
    assert "lowbit" not in written
    assert "lowbit" in target.to_json()


def test_to_json_returns_a_copy():
    target = load_target("default")
    target.to_json()["defaults"]["supported_kernels"][0]["param"]["bitwidth"] = 2
    assert target.default_param_bits == 8


def test_load_target_returns_a_target_as_is():
    target = load_target("default")
    assert load_target(target) is target
