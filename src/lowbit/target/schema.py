"""Structure check of target JSON: AIMET's quantsim-config sections plus lowbit's own key."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping

from lowbit.errors import TargetError
from lowbit.kernels import KERNELS

Check = Callable[[object, str], None]

INT_BITWIDTHS = frozenset(range(2, 17)) | {32}
FLOAT_BITWIDTHS = frozenset({16, 32})


class _Invalid(Exception):
    """One problem in a target config, its message starting with the JSON path."""


def validate(config: dict, source: str) -> None:
    """Raise TargetError naming ``source`` and the JSON path of the first problem in ``config``."""
    try:
        _check_target(config, "")
    except _Invalid as problem:
        raise TargetError(f"target {source!r}: {problem}") from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _boolean(value: object, path: str) -> None:
    if not (isinstance(value, bool) or value in ("True", "False")):
        raise _Invalid(f'{path} must be true/false or "True"/"False", got {value!r}')


def _string(value: object, path: str) -> None:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{path} must be a non-empty string, got {value!r}")


def _one_line(value: object, path: str) -> None:
    _string(value, path)
    if "\n" in value:
        raise _Invalid(f"{path} must be one line")


def _kernels_name(value: object, path: str) -> None:
    if value not in KERNELS:
        raise _Invalid(f"{path} must name a runtime ({', '.join(KERNELS)}), got {value!r}")


def _integer(value: object, path: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(f"{path} must be an integer, got {value!r}")


def _number(value: object, path: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _Invalid(f"{path} must be a finite number, got {value!r}")


def _string_or_number(value: object, path: str) -> None:
    if not isinstance(value, str):
        _number(value, path)


def _dtype(value: object, path: str) -> None:
    if value not in ("int", "float"):
        raise _Invalid(f'{path} must be "int" or "float", got {value!r}')


def _unknown_key(path: str, key: str, known: Mapping[str, Check]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(known)
    return f"unknown key {_join(path, key)} ({hint})"


def _object(fields: Mapping[str, Check], required: tuple[str, ...] = (), item: str = "key",
            also: Check | None = None) -> Check:
    """A check for a JSON object with only ``fields``, the ``required`` ones present, then ``also``."""

    def check(value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise _Invalid(f"{path or 'the top level'} must be an object, got {_kind(value)}")
        for key in required:
            if key not in value:
                raise _Invalid(f"missing required {item} {_join(path, key)}")
        for key, member in value.items():
            if key not in fields:
                raise _Invalid(_unknown_key(path, key, fields))
            fields[key](member, _join(path, key))
        if also is not None:
            also(value, path)

    return check


def _any_keys(member_check: Check) -> Check:
    """A check for a JSON object whose keys are free names and whose values pass ``member_check``."""

    def check(value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise _Invalid(f"{path} must be an object, got {_kind(value)}")
        for key, member in value.items():
            member_check(member, _join(path, key))

    return check


def _list(item_check: Check, min_items: int = 0, noun: str = "entries") -> Check:
    """A check for a JSON list of at least ``min_items`` ``noun``, each passing ``item_check``."""

    def check(value: object, path: str) -> None:
        if not isinstance(value, list):
            raise _Invalid(f"{path} must be a list, got {_kind(value)}")
        if len(value) < min_items:
            raise _Invalid(f"{path} must list at least {min_items} {noun}, got {len(value)}")
        for index, item in enumerate(value):
            item_check(item, f"{path}[{index}]")

    return check


def _bitwidth_fits_dtype(kernel: dict, path: str) -> None:
    bits = kernel["bitwidth"]
    if kernel["dtype"] == "int" and bits not in INT_BITWIDTHS:
        raise _Invalid(f"{path}.bitwidth must be an integer in 2..16 (or 32), got {bits}")
    if kernel["dtype"] == "float" and bits not in FLOAT_BITWIDTHS:
        raise _Invalid(f'{path}.bitwidth must be 16 or 32 for dtype "float", got {bits}')


def _min_below_max(constraints: dict, path: str) -> None:
    if not constraints["min"] < constraints["max"]:
        raise _Invalid(f"{path}.min must be below {path}.max, got {constraints['min']} and {constraints['max']}")


_kernel_tensor = _object({"bitwidth": _integer, "dtype": _dtype}, required=("bitwidth", "dtype"),
                         also=_bitwidth_fits_dtype)
_param_flags = _object({"is_quantized": _boolean, "is_symmetric": _boolean})
_op_flags = {"is_input_quantized": _boolean, "is_output_quantized": _boolean, "is_symmetric": _boolean}

_defaults = _object({
    "ops": _object(_op_flags), "params": _param_flags,
    "strict_symmetric": _boolean, "unsigned_symmetric": _boolean, "per_channel_quantization": _boolean,
    "hw_version": _string,
    "supported_kernels": _list(_object({"activation": _kernel_tensor, "param": _kernel_tensor},
                                       required=("activation", "param")), min_items=1, noun="kernel"),
}, required=("ops", "params"))

_op_entry = _object({
    **_op_flags, "per_channel_quantization": _boolean, "params": _any_keys(_param_flags),
    "supported_kernels": _list(_object({"activation": _kernel_tensor, "param": _kernel_tensor},
                                       required=("activation",)), min_items=1, noun="kernel"),
    "encoding_constraints": _object({"min": _number, "max": _number}, required=("min", "max"), also=_min_below_max),
})

_check_target = _object({
    "defaults": _defaults, "params": _any_keys(_param_flags), "op_type": _any_keys(_op_entry),
    "supergroups": _list(_object({"op_list": _list(_string, min_items=2, noun="op types")}, required=("op_list",))),
    "model_input": _object({"is_input_quantized": _boolean}),
    "model_output": _object({"is_output_quantized": _boolean}),
    "supergroup_pass_list": _list(_string), "version": _string_or_number,
    "lowbit": _object({"description": _one_line, "runtime": _kernels_name,
                       "runtime_param_bits": _object({name: _integer for name in KERNELS}, item="runtime")}),
}, required=("defaults", "params", "op_type", "supergroups", "model_input", "model_output"), item="section")
