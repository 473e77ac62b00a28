"""AIMET encodings files: written in format 1.0.0; read in 1.0.0 and AIMET 1.x's 0.6.1.
Neither format stores the channel axis (read encodings carry axis 0); per-channel/per-block values read flat, 1-D."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from lowbit.atomic import atomic_write_text
from lowbit.errors import EncodingsFileError, SpecError
from lowbit.quant.encoding import Encoding
from lowbit.quant.spec import QuantSpec

VERSION = "1.0.0"
LEGACY_VERSION = "0.6.1"
FLOAT_BITWIDTHS = (16, 32)
ENC_TYPES = {"per_tensor": "PER_TENSOR", "per_channel": "PER_CHANNEL", "per_block": "PER_BLOCK"}

_FLOAT32_MAX = torch.finfo(torch.float32).max
_INTEGER, _NUMBER = "a 32-bit integer", "a float32 number"
_KINDS = {
    "a string": lambda value: isinstance(value, str),
    "a boolean": lambda value: isinstance(value, bool),
    "'True' or 'False'": lambda value: isinstance(value, bool) or value in ("True", "False"),
    _INTEGER: lambda value: isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**31,
    _NUMBER: lambda value: (isinstance(value, (int, float)) and not isinstance(value, bool)
                            and abs(value) <= _FLOAT32_MAX),
    "a list": lambda value: isinstance(value, list),
    "an object": lambda value: isinstance(value, dict),
}


@dataclass(frozen=True)
class EncodingsFile:
    """An encodings file's contents: INT encodings by tensor name, FLOAT tensors' bitwidths."""

    activation: dict[str, Encoding]
    params: dict[str, Encoding]
    float_tensors: dict[str, int] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    quantizer_args: dict = field(default_factory=dict)
    version: str = VERSION


def write_encodings(path, activation: Mapping[str, Encoding], params: Mapping[str, Encoding],
                    float_tensors: Mapping[str, int] = MappingProxyType({}),
                    excluded: Sequence[str] = (), quantizer_args: Mapping | None = None) -> Path:
    """Write an encodings file (format 1.0.0) atomically; FLOAT entries join the activations."""
    path = Path(path)
    both = sorted(set(activation) & set(float_tensors))
    if both:
        raise EncodingsFileError(f"{path}: cannot write encodings: {both} are both INT and FLOAT")
    try:
        document = {
            "version": VERSION,
            "activation_encodings": [_int_entry(name, enc) for name, enc in activation.items()]
            + [_float_entry(name, bits) for name, bits in float_tensors.items()],
            "param_encodings": [_int_entry(name, enc) for name, enc in params.items()],
            "excluded_layers": list(excluded),
            "quantizer_args": dict(quantizer_args or {}),
        }
        text = json.dumps(document, indent=2, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise EncodingsFileError(f"{path}: cannot write encodings: {error}") from None
    return atomic_write_text(path, text + "\n")


def read_encodings(path) -> EncodingsFile:
    """Read an encodings file in format 1.0.0 or 0.6.1; any problem is an EncodingsFileError."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EncodingsFileError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise EncodingsFileError(f"{path}: not JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    except UnicodeDecodeError:
        raise EncodingsFileError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise EncodingsFileError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return _parse(document)
    except EncodingsFileError as error:
        raise EncodingsFileError(f"{path}: {error}") from None


def _int_entry(name: str, encoding: Encoding) -> dict:
    spec = encoding.spec
    entry = {"name": name, "dtype": "INT", "enc_type": ENC_TYPES[spec.granularity],
             "bw": spec.bits, "is_sym": bool(spec.symmetric),
             "scale": encoding.scale.detach().to(torch.float32).reshape(-1).tolist(),
             "offset": [int(offset) for offset in encoding.offset.reshape(-1).tolist()]}
    if spec.block_size is not None:
        entry["block_size"] = spec.block_size
    return entry


def _float_entry(name: str, bits: int) -> dict:
    if bits not in FLOAT_BITWIDTHS:
        raise ValueError(f"FLOAT tensor {name!r} has bitwidth {bits!r}; use 16 or 32")
    return {"name": name, "dtype": "FLOAT", "bw": bits}


def _parse(document) -> EncodingsFile:
    _check(document, "an object", "top level")
    version = _get(document, "version", "a string", "top level")
    readers = {VERSION: _read_list, LEGACY_VERSION: _read_legacy_dict}
    if version not in readers:
        raise EncodingsFileError(f"unknown version {version!r} (readable: {', '.join(readers)})")
    activation, activation_floats = readers[version](document, "activation_encodings")
    params, param_floats = readers[version](document, "param_encodings")
    excluded = document.get("excluded_layers", [])
    _check_items(_check(excluded, "a list", "'excluded_layers'"), "a string", "'excluded_layers'")
    quantizer_args = _check(document.get("quantizer_args", {}), "an object", "'quantizer_args'")
    return EncodingsFile(activation, params, {**activation_floats, **param_floats}, excluded, quantizer_args, version)


def _read_list(document: dict, key: str):
    """Format 1.0.0: a list of {name, dtype, enc_type, bw, is_sym, scale, offset[, block_size]}."""
    encodings, floats = {}, {}
    for index, entry in enumerate(_get(document, key, "a list", "top level")):
        where = f"{key}[{index}]"
        _check(entry, "an object", where)
        name = _get(entry, "name", "a string", where)
        where = f"{where} {name!r}"
        if name in encodings or name in floats:
            raise EncodingsFileError(f"{where}: duplicate name")
        dtype = _get(entry, "dtype", "a string", where)
        bits = _get(entry, "bw", _INTEGER, where)
        if dtype == "FLOAT":
            floats[name] = _float_bits(bits, where)
        elif dtype == "INT":
            encodings[name] = _read_int_entry(entry, bits, where)
        else:
            raise EncodingsFileError(f"{where}: unknown dtype {dtype!r} (expected INT or FLOAT)")
    return encodings, floats


def _read_int_entry(entry: dict, bits: int, where: str) -> Encoding:
    enc_type = _get(entry, "enc_type", "a string", where)
    if enc_type not in ENC_TYPES.values():
        raise EncodingsFileError(f"{where}: unknown enc_type {enc_type!r} (readable: {', '.join(ENC_TYPES.values())})")
    symmetric = _get(entry, "is_sym", "a boolean", where)
    scale = _check_items(_get(entry, "scale", "a list", where), _NUMBER, f"{where}: 'scale'")
    offset = _check_items(_get(entry, "offset", "a list", where), _INTEGER, f"{where}: 'offset'")
    block_size = _get(entry, "block_size", _INTEGER, where) if enc_type == "PER_BLOCK" else None
    if enc_type == "PER_TENSOR" and len(scale) != 1:
        raise EncodingsFileError(f"{where}: PER_TENSOR needs one scale, got {len(scale)}")
    return _encoding(bits, symmetric, None if enc_type == "PER_TENSOR" else 0, block_size, scale, offset, where)


def _read_legacy_dict(document: dict, key: str):
    """Format 0.6.1: name → list of {bitwidth, dtype, is_symmetric, min, max, scale, offset}."""
    encodings, floats = {}, {}
    for name, channels in _get(document, key, "an object", "top level").items():
        where = f"{key}[{name!r}]"
        if not _check(channels, "a list", where):
            raise EncodingsFileError(f"{where}: empty list of encodings")
        fields = [_legacy_fields(channel, f"{where}[{index}]") for index, channel in enumerate(channels)]
        if len({kind for kind, _, _ in fields}) > 1:
            raise EncodingsFileError(f"{where}: channels differ in dtype, bitwidth or is_symmetric")
        (dtype, bits, symmetric), _, _ = fields[0]
        if dtype == "float":
            floats[name] = _float_bits(bits, where)
        else:
            axis = 0 if len(fields) > 1 else None
            scale, offset = [scale for _, scale, _ in fields], [offset for _, _, offset in fields]
            encodings[name] = _encoding(bits, symmetric, axis, None, scale, offset, where)
    return encodings, floats


def _legacy_fields(channel, where: str):
    """((dtype, bits, symmetric), scale, offset) of one 0.6.1 entry; FLOAT ones carry no scale."""
    _check(channel, "an object", where)
    dtype = _check(channel.get("dtype", "int"), "a string", f"{where}: 'dtype'")
    bits = _get(channel, "bitwidth", _INTEGER, where)
    if dtype == "float":
        return (dtype, bits, False), None, None
    if dtype != "int":
        raise EncodingsFileError(f"{where}: unknown dtype {dtype!r} (expected 'int' or 'float')")
    symmetric = _get(channel, "is_symmetric", "'True' or 'False'", where) in (True, "True")
    scale = _get(channel, "scale", _NUMBER, where)
    offset = _get(channel, "offset", _INTEGER, where)
    return (dtype, bits, symmetric), scale, offset


def _encoding(bits, symmetric, axis, block_size, scale, offset, where) -> Encoding:
    """Encoding from checked file values; unsigned-symmetric when symmetric with all offsets 0."""
    if len(scale) != len(offset) or not scale:
        raise EncodingsFileError(f"{where}: 'scale' and 'offset' need the same, non-zero length, "
                                 f"got {len(scale)} and {len(offset)}")
    scale_tensor = torch.tensor(scale, dtype=torch.float32)
    if not bool((scale_tensor > 0).all()):
        raise EncodingsFileError(f"{where}: 'scale' values must be positive")
    signed = not (symmetric and all(value == 0 for value in offset))
    try:
        spec = QuantSpec(bits, symmetric, signed, axis, block_size)
    except SpecError as error:
        raise EncodingsFileError(f"{where}: {error}") from None
    if axis is None:
        return Encoding.from_scale_offset(spec, scale_tensor[0], offset[0])
    return Encoding.from_scale_offset(spec, scale_tensor, offset)


def _float_bits(bits: int, where: str) -> int:
    if bits not in FLOAT_BITWIDTHS:
        raise EncodingsFileError(f"{where}: FLOAT bitwidth must be 16 or 32, got {bits}")
    return bits


def _get(mapping: dict, key: str, kind: str, where: str):
    """``mapping[key]``, checked to be of ``kind``."""
    if key not in mapping:
        raise EncodingsFileError(f"{where}: missing key {key!r}")
    return _check(mapping[key], kind, f"{where}: {key!r}")


def _check(value, kind: str, what: str):
    """``value`` if it is of ``kind`` (a key of _KINDS), else an error naming ``what``."""
    if not _KINDS[kind](value):
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise EncodingsFileError(f"{what} must be {kind}, got {shown}")
    return value


def _check_items(values: list, kind: str, what: str) -> list:
    for index, value in enumerate(values):
        _check(value, kind, f"{what}[{index}]")
    return values
