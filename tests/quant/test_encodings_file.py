"""Encodings files: bit-exact round trips, the 1.0.0 layout, 0.6.1 input, errors, atomicity."""

import json
import os

import pytest
import torch

from lowbit.errors import EncodingsFileError
from lowbit.quant.encoding import Encoding
from lowbit.quant.encodings_file import read_encodings, write_encodings
from lowbit.quant.fake_quant import fake_quantize
from lowbit.quant.spec import QuantSpec


def sample_encodings():
    """(activations, params) covering per-tensor, per-channel and per-block, with awkward scales."""
    torch.manual_seed(0)
    weight = torch.randn(2, 8)
    blocks = weight.reshape(2, 2, 4)
    activation = {
        "input": Encoding.from_range(QuantSpec(8), -1.0, 2.0),
        "relu_out": Encoding.from_range(QuantSpec(8, True, signed=False), 0.0, 6.1),
        "logits": Encoding.from_range(QuantSpec(16, True), -13.7, 9.1),
    }
    params = {
        "conv.weight": Encoding.from_range(QuantSpec(8, True, axis=0), torch.randn(5) - 2,
                                           torch.rand(5) * 1e-3),
        "fc.weight": Encoding.from_range(QuantSpec(4, axis=0, block_size=4), blocks.amin(2),
                                         blocks.amax(2)),
        "fc.bias": Encoding.from_range(QuantSpec(8), torch.tensor(-1e-7), torch.tensor(3e-5)),
    }
    return activation, params, weight


def float_bits(tensor):
    return tensor.reshape(-1).to(torch.float32).view(torch.int32).tolist()


def test_round_trip_is_bit_exact(tmp_path):
    activation, params, weight = sample_encodings()
    path = write_encodings(tmp_path / "model.encodings", activation, params,
                           float_tensors={"softmax_out": 16, "argmax_out": 32},
                           excluded=["head"], quantizer_args={"activation_bitwidth": 8})
    loaded = read_encodings(path)
    for original, read in [(activation, loaded.activation), (params, loaded.params)]:
        assert list(read) == list(original)
        for name, encoding in original.items():
            assert float_bits(read[name].scale) == float_bits(encoding.scale), name
            assert read[name].offset.reshape(-1).tolist() == encoding.offset.reshape(-1).tolist()
            assert read[name].spec.bits == encoding.spec.bits
            assert read[name].spec.symmetric == encoding.spec.symmetric
            assert read[name].spec.granularity == encoding.spec.granularity
            assert read[name].spec.block_size == encoding.spec.block_size
    assert loaded.float_tensors == {"softmax_out": 16, "argmax_out": 32}
    assert loaded.excluded == ["head"]
    assert loaded.quantizer_args == {"activation_bitwidth": 8}
    assert loaded.version == "1.0.0"
    assert not loaded.activation["relu_out"].spec.signed
    assert torch.equal(fake_quantize(weight, loaded.params["fc.weight"]),
                       fake_quantize(weight, params["fc.weight"]))


def test_json_has_the_1_0_0_keys_and_types(tmp_path):
    activation, params, _ = sample_encodings()
    path = write_encodings(tmp_path / "m.encodings", activation, params, {"softmax_out": 16})
    document = json.loads(path.read_text())
    assert set(document) == {"version", "activation_encodings", "param_encodings",
                             "excluded_layers", "quantizer_args"}
    assert document["version"] == "1.0.0"
    assert document["excluded_layers"] == [] and document["quantizer_args"] == {}
    entries = {entry["name"]: entry for entry in
               document["activation_encodings"] + document["param_encodings"]}
    assert entries["softmax_out"] == {"name": "softmax_out", "dtype": "FLOAT", "bw": 16}
    expected_types = {"PER_TENSOR": "input", "PER_CHANNEL": "conv.weight", "PER_BLOCK": "fc.weight"}
    for enc_type, name in expected_types.items():
        entry = entries[name]
        keys = {"name", "dtype", "enc_type", "bw", "is_sym", "scale", "offset"}
        assert set(entry) == keys | ({"block_size"} if enc_type == "PER_BLOCK" else set())
        assert entry["dtype"] == "INT" and entry["enc_type"] == enc_type
        assert type(entry["bw"]) is int and type(entry["is_sym"]) is bool
        assert all(type(value) is float for value in entry["scale"])
        assert all(type(value) is int for value in entry["offset"])
        assert len(entry["scale"]) == len(entry["offset"])
    assert entries["conv.weight"]["is_sym"] is True and entries["input"]["is_sym"] is False
    assert entries["conv.weight"]["offset"] == [-128] * 5 and len(entries["input"]["scale"]) == 1
    assert entries["fc.weight"]["block_size"] == 4 and len(entries["fc.weight"]["scale"]) == 4
    assert '"is_sym": true' in path.read_text()


LEGACY = """{
  "version": "0.6.1",
  "activation_encodings": {
    "input": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False",
               "max": 2.0, "min": -1.0, "offset": -85, "scale": 0.011764706}],
    "softmax_out": [{"bitwidth": 16, "dtype": "float"}]
  },
  "param_encodings": {
    "conv.weight": [
      {"bitwidth": 4, "dtype": "int", "is_symmetric": "True",
       "max": 0.7, "min": -0.8, "offset": -8, "scale": 0.1},
      {"bitwidth": 4, "dtype": "int", "is_symmetric": "True",
       "max": 1.4, "min": -1.6, "offset": -8, "scale": 0.2}
    ]
  },
  "excluded_layers": ["head"],
  "quantizer_args": {"activation_bitwidth": 8, "param_bitwidth": 4}
}"""


def test_reads_aimet_0_6_1(tmp_path):
    path = tmp_path / "legacy.encodings"
    path.write_text(LEGACY)
    loaded = read_encodings(path)
    assert loaded.version == "0.6.1"
    single = loaded.activation["input"]
    assert single.spec == QuantSpec(8, symmetric=False, axis=None)
    assert single.scale.item() == torch.tensor(0.011764706).item()
    assert single.offset.item() == -85
    channels = loaded.params["conv.weight"]
    assert channels.spec == QuantSpec(4, symmetric=True, axis=0)
    assert channels.scale.tolist() == [torch.tensor(0.1).item(), torch.tensor(0.2).item()]
    assert channels.offset.tolist() == [-8, -8]
    torch.testing.assert_close(channels.min, torch.tensor([-0.8, -1.6]))
    assert loaded.float_tensors == {"softmax_out": 16}
    assert loaded.excluded == ["head"] and loaded.quantizer_args["param_bitwidth"] == 4


def int_entry(**changes):
    entry = {"name": "x", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8, "is_sym": False,
             "scale": [0.1], "offset": [-5]}
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


def current(*entries, **top):
    document = {"version": "1.0.0", "activation_encodings": list(entries), "param_encodings": []}
    document.update(top)
    return json.dumps({key: value for key, value in document.items() if value is not None})


def legacy(**changes):
    entry = {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": -1.0, "max": 1.0,
             "scale": 0.1, "offset": -10}
    entry.update(changes)
    entry = {key: value for key, value in entry.items() if value is not None}
    return json.dumps({"version": "0.6.1", "activation_encodings": {"x": [entry]},
                       "param_encodings": {}})


BAD_FILES = {
    "not JSON": ('{"version": "1.0.0",\n  "activation_encodings": [', "not JSON (line 2"),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8"),
    "top level a list": ("[]", "top level must be an object"),
    "unknown version": (current(version="2.0.0"), "unknown version '2.0.0'"),
    "missing version": (current(version=None), "missing key 'version'"),
    "version a number": (current(version=1.0), "'version' must be a string"),
    "missing param_encodings": (current(param_encodings=None), "missing key 'param_encodings'"),
    "encodings not a list": (current(activation_encodings={}), "must be a list"),
    "entry not an object": (current(5), "activation_encodings[0] must be an object"),
    "missing name": (current(int_entry(name=None)), "missing key 'name'"),
    "missing bw": (current(int_entry(bw=None)), "missing key 'bw'"),
    "bw a string": (current(int_entry(bw="8")), "'bw' must be a 32-bit integer, got \"8\""),
    "bw a float": (current(int_entry(bw=8.0)), "'bw' must be a 32-bit integer"),
    "bw a boolean": (current(int_entry(bw=True)), "'bw' must be a 32-bit integer"),
    "bw 1": (current(int_entry(bw=1)), "2..16"),
    "bw 17": (current(int_entry(bw=17)), "2..16"),
    "unknown dtype": (current(int_entry(dtype="int8")), "unknown dtype 'int8'"),
    "missing enc_type": (current(int_entry(enc_type=None)), "missing key 'enc_type'"),
    "unknown enc_type": (current(int_entry(enc_type="PER_ROW")), "unknown enc_type 'PER_ROW'"),
    "LPBQ": (current(int_entry(enc_type="LPBQ")), "unknown enc_type 'LPBQ'"),
    "is_sym a string": (current(int_entry(is_sym="True")), "'is_sym' must be a boolean"),
    "scale not a list": (current(int_entry(scale=0.1)), "'scale' must be a list"),
    "scale of strings": (current(int_entry(scale=["0.1"])), "'scale'[0] must be a float32 number"),
    "scale NaN": (current(int_entry(scale=[float("nan")])), "'scale'[0] must be a float32 number"),
    "scale zero": (current(int_entry(scale=[0.0])), "must be positive"),
    "scale too large": (current(int_entry(scale=[1e39])), "'scale'[0] must be a float32 number"),
    "offset a float": (current(int_entry(offset=[-5.5])), "'offset'[0] must be a 32-bit integer"),
    "length mismatch": (current(int_entry(enc_type="PER_CHANNEL", scale=[0.1, 0.2])),
                        "same, non-zero length, got 2 and 1"),
    "empty channel list": (current(int_entry(enc_type="PER_CHANNEL", scale=[], offset=[])),
                           "non-zero length"),
    "per-tensor with two scales": (current(int_entry(scale=[0.1, 0.2], offset=[0, 0])),
                                   "PER_TENSOR needs one scale, got 2"),
    "per-block without block_size": (current(int_entry(enc_type="PER_BLOCK")),
                                     "missing key 'block_size'"),
    "per-block of size 0": (current(int_entry(enc_type="PER_BLOCK", block_size=0)),
                            "block size must be positive"),
    "FLOAT of 8 bits": (current({"name": "x", "dtype": "FLOAT", "bw": 8}), "16 or 32, got 8"),
    "duplicate name": (current(int_entry(), int_entry()), "duplicate name"),
    "excluded not a list": (current(excluded_layers="head"), "'excluded_layers' must be a list"),
    "excluded of numbers": (current(excluded_layers=[1]), "'excluded_layers'[0] must be a string"),
    "quantizer_args a list": (current(quantizer_args=[]), "'quantizer_args' must be an object"),
    "0.6.1 lists": (json.dumps({"version": "0.6.1", "activation_encodings": [],
                                "param_encodings": {}}), "must be an object"),
    "0.6.1 is_symmetric": (legacy(is_symmetric="yes"), "'is_symmetric' must be 'True' or 'False'"),
    "0.6.1 missing bitwidth": (legacy(bitwidth=None), "missing key 'bitwidth'"),
    "0.6.1 scale a list": (legacy(scale=[0.1]), "'scale' must be a float32 number"),
    "0.6.1 unknown dtype": (legacy(dtype="INT"), "unknown dtype 'INT'"),
    "0.6.1 empty list": (json.dumps({"version": "0.6.1", "activation_encodings": {"x": []},
                                     "param_encodings": {}}), "empty list of encodings"),
}


@pytest.mark.parametrize("content, problem", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_input_is_one_line_encodings_file_error(tmp_path, content, problem):
    path = tmp_path / "bad.encodings"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(EncodingsFileError) as caught:
        read_encodings(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert problem in message, message


def test_missing_file_and_folder_are_encodings_file_errors(tmp_path):
    with pytest.raises(EncodingsFileError, match="file not found"):
        read_encodings(tmp_path / "absent.encodings")
    with pytest.raises(EncodingsFileError, match="cannot read"):
        read_encodings(tmp_path)


def test_0_6_1_channels_must_agree(tmp_path):
    document = json.loads(legacy())
    channel = document["activation_encodings"]["x"][0]
    document["activation_encodings"]["x"].append({**channel, "bitwidth": 4})
    path = tmp_path / "mixed.encodings"
    path.write_text(json.dumps(document))
    with pytest.raises(EncodingsFileError, match="channels differ"):
        read_encodings(path)


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    activation, params, _ = sample_encodings()
    with pytest.raises(EncodingsFileError, match="cannot write"):
        write_encodings(tmp_path / "new.encodings", activation, params,
                        quantizer_args={"bad": object()})
    assert list(tmp_path.iterdir()) == []
    path = write_encodings(tmp_path / "old.encodings", activation, params)
    before = path.read_bytes()
    with pytest.raises(EncodingsFileError, match="16 or 32"):
        write_encodings(path, activation, params, float_tensors={"x": 8})
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    with pytest.raises(EncodingsFileError, match="both INT and FLOAT"):
        write_encodings(path, activation, params, float_tensors={"input": 16})
    assert path.read_bytes() == before


def test_interrupted_atomic_write_removes_its_temp_file(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError("disk full")

    activation, params, _ = sample_encodings()
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_encodings(tmp_path / "m.encodings", activation, params)
    assert list(tmp_path.iterdir()) == []


def test_written_file_has_ordinary_permissions(tmp_path):
    activation, params, _ = sample_encodings()
    path = write_encodings(tmp_path / "m.encodings", activation, params)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
