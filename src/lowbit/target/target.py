"""Target: an immutable runtime description (AIMET quantsim-config format) and its per-op rules."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from types import MappingProxyType

from lowbit.target.rules import OpRule, ParamRule, TensorRule
from lowbit.target.schema import validate

PASSTHROUGH_OPS = frozenset({
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Pad", "MaxPool", "GlobalMaxPool",
    "ReduceMax", "ReduceMin", "Slice", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
})
"""Op types that never get a quantizer of their own: every output value is one of the input's values, so the input's
encoding is exact for the output (Pad's zero is on the grid). Not Gather: an embedding lookup is a weighted op."""

_FALLBACK_KERNEL = {"activation": {"bitwidth": 8, "dtype": "int"}, "param": {"bitwidth": 8, "dtype": "int"}}


class Target:
    """A validated target config with its per-op-type rules resolved on demand.
    Two targets are equal when their configs are, whatever their names."""

    __slots__ = ("_canonical", "_config", "_name", "_op_rules")

    def __init__(self, config: Mapping, name: str = "custom", source: str | None = None):
        """Validate ``config`` (errors name ``source``, else ``name``) and keep a normalised copy."""
        validate(config, source or name)
        self._name = name
        self._config = _with_string_booleans(config)
        self._canonical = json.dumps(self._config, sort_keys=True)
        self._op_rules: dict[str, OpRule] = {}

    @property
    def name(self) -> str:
        """Preset name, file stem, or "custom"."""
        return self._name

    @property
    def description(self) -> str:
        """One line from the config's ``lowbit.description``; empty if it has none."""
        return self._config.get("lowbit", {}).get("description", "")

    @property
    def runtime(self) -> str | None:
        """The runtime whose kernels the target describes (``lowbit.runtime``: a sim built for it predicts them unless
        told otherwise); None: any."""
        return self._config.get("lowbit", {}).get("runtime")

    def for_runtime(self, runtime: str) -> "Target":
        """This target as it applies to ``runtime`` (a name of ``lowbit.kernels.KERNELS``): the preset's
        ``lowbit.runtime_param_bits`` entry for it, if any, replaces the weight bitwidths."""
        bits = self._config.get("lowbit", {}).get("runtime_param_bits", {}).get(runtime)
        return self if bits is None else self.with_overrides(param_bits=bits)

    def op(self, op_type: str) -> OpRule:
        """The rule for ONNX op type ``op_type``: its op_type entry over the defaults."""
        if op_type not in self._op_rules:
            self._op_rules[op_type] = _resolve_op(self._config, self._config["op_type"].get(op_type, {}))
        return self._op_rules[op_type]

    def weight_rule(self, op_type: str, depthwise: bool) -> OpRule:
        """The rule for a layer's weights: a depthwise Conv's is op type ``DepthwiseConv``'s where the config has one
        (x86 depthwise int8 kernels' int16 sums cannot saturate, so they can take wider weights); else the op's own."""
        depthwise_rule = depthwise and op_type == "Conv" and DEPTHWISE_CONV in self._config["op_type"]
        return self.op(DEPTHWISE_CONV if depthwise_rule else op_type)

    @property
    def supergroups(self) -> tuple[tuple[str, ...], ...]:
        """Op type sequences the runtime fuses: no quantizer between their members."""
        return tuple(tuple(group["op_list"]) for group in self._config["supergroups"])

    @property
    def model_input_quantized(self) -> bool:
        """Whether the model's inputs get a quantizer."""
        return _flag("is_input_quantized", self._config["model_input"])

    @property
    def model_output_quantized(self) -> bool:
        """Whether model outputs are forced quantized; False leaves them to their producer's rule."""
        return _flag("is_output_quantized", self._config["model_output"])

    @property
    def model_output_float(self) -> bool:
        """Whether the tensors the model returns stay float: ``model_output.is_output_quantized`` set to
        "False" (absent leaves them to their producer's rule, as in AIMET)."""
        return self._config["model_output"].get("is_output_quantized") == "False"

    @property
    def strict_symmetric(self) -> bool:
        """Whether symmetric signed grids drop their most negative level (e.g. -127..127)."""
        return _flag("strict_symmetric", self._config["defaults"])

    @property
    def unsigned_symmetric(self) -> bool:
        """Whether symmetric encodings of non-negative tensors use the unsigned grid."""
        return _flag("unsigned_symmetric", self._config["defaults"])

    @property
    def per_channel(self) -> bool:
        """Whether parameters are quantized per channel unless an op type says otherwise."""
        return _flag("per_channel_quantization", self._config["defaults"])

    @property
    def default_param_bits(self) -> int:
        """Parameter bitwidth of the first default kernel (8 when the config lists none)."""
        return _default_kernel(self._config)["param"]["bitwidth"]

    @property
    def default_act_bits(self) -> int:
        """Activation bitwidth of the first default kernel (8 when the config lists none)."""
        return _default_kernel(self._config)["activation"]["bitwidth"]

    def with_overrides(self, param_bits: int | None = None, act_bits: int | None = None,
                       per_channel: bool | None = None) -> Target:
        """A copy whose default integer bitwidths / per-channel flag are replaced; op-specific kernels stay,
        except that a ``param_bits`` override applies to depthwise convolutions too."""
        config = self.to_json()
        defaults = config["defaults"]
        changes = []
        if param_bits is not None or act_bits is not None:
            kernels = defaults.setdefault("supported_kernels", [copy.deepcopy(_FALLBACK_KERNEL)])
            if param_bits is not None:
                config["op_type"].pop(DEPTHWISE_CONV, None)
                kernels[0]["param"] = {"bitwidth": param_bits, "dtype": "int"}
                changes.append(f"param_bits={param_bits}")
            if act_bits is not None:
                kernels[0]["activation"] = {"bitwidth": act_bits, "dtype": "int"}
                changes.append(f"act_bits={act_bits}")
        if per_channel is not None:
            defaults["per_channel_quantization"] = str(bool(per_channel))
            changes.append(f"per_channel={bool(per_channel)}")
        name = f"{self._name}({', '.join(changes)})" if changes else self._name
        return Target(config, name=name)

    def __reduce__(self):
        """Pickles (and copies) as its config and name; the resolved rules are rebuilt on demand."""
        return Target, (self._config, self._name)

    def __deepcopy__(self, memo) -> "Target":
        """Targets are immutable: a copy is the same object."""
        return self

    def to_json(self, include_lowbit: bool = True) -> dict:
        """The config as an AIMET-format dict with "True"/"False" booleans (loads back equal).
        AIMET rejects unknown top-level keys: pass ``include_lowbit=False`` to write a file for AIMET."""
        config = copy.deepcopy(self._config)
        if not include_lowbit:
            config.pop("lowbit", None)
        return config

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and self._canonical == other._canonical

    def __hash__(self) -> int:
        return hash(self._canonical)

    def __repr__(self) -> str:
        return f"Target({self._name!r})"


DEPTHWISE_CONV = "DepthwiseConv"
"""lowbit's op type (not ONNX's) for a Conv whose every group has one input and one output channel."""


def _with_string_booleans(value):
    """A deep copy of a JSON value with every boolean written as AIMET's "True"/"False"."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _with_string_booleans(member) for key, member in value.items()}
    if isinstance(value, list):
        return [_with_string_booleans(member) for member in value]
    return value


def _flag(key: str, *sections: Mapping) -> bool:
    """The boolean ``key`` from the first section that sets it (most specific first); False if none."""
    for section in sections:
        if key in section:
            return section[key] == "True"
    return False


def _default_kernel(config: Mapping) -> Mapping:
    """The first entry of defaults.supported_kernels: it sets the default bitwidths and dtypes."""
    return config["defaults"].get("supported_kernels", [_FALLBACK_KERNEL])[0]


def _resolve_op(config: Mapping, entry: Mapping) -> OpRule:
    """Apply one op_type ``entry`` over the config's defaults (AIMET's order of precedence)."""
    defaults = config["defaults"]
    default_kernel = _default_kernel(config)
    op_kernel = entry.get("supported_kernels", [default_kernel])[0]
    activation_kernel = op_kernel["activation"]
    param_kernel = op_kernel.get("param", default_kernel["param"])
    per_channel = _flag("per_channel_quantization", entry, defaults)

    def param_rule(*sections: Mapping) -> ParamRule:
        return ParamRule(quantized=_flag("is_quantized", *sections, defaults["params"]), bits=param_kernel["bitwidth"],
                         symmetric=_flag("is_symmetric", *sections, defaults["params"]), per_channel=per_channel,
                         dtype=param_kernel["dtype"])

    op_params = entry.get("params", {})
    kinds = {"weight", "bias", *config["params"], *op_params}
    constraints = entry.get("encoding_constraints")
    return OpRule(
        input_quantized=_flag("is_input_quantized", entry, defaults["ops"]),
        output_quantized=_flag("is_output_quantized", entry, defaults["ops"]),
        activation=TensorRule(bits=activation_kernel["bitwidth"], dtype=activation_kernel["dtype"],
                              symmetric=_flag("is_symmetric", entry, defaults["ops"])),
        params=MappingProxyType(
            {kind: param_rule(op_params.get(kind, {}), config["params"].get(kind, {})) for kind in sorted(kinds)}),
        encoding_constraints=(float(constraints["min"]), float(constraints["max"])) if constraints else None,
        default_param=param_rule(),
    )
