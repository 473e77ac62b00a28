"""The graph protocol: a model as ops over named values, in the ONNX op-type vocabulary, which each
front end builds from its own graph (torch.fx, ONNX) and every graph rule reads."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Layer:
    """A layer the techniques can rescale: its channels and groups (depthwise: groups == in == out)."""

    in_channels: int
    out_channels: int
    groups: int = 1

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels


@dataclass(frozen=True)
class Op:
    """One op: ``type`` its ONNX op type (None: computes no tensor), ``inputs`` the activations it reads by position
    ("" for other operands); ``layer`` and ``clip`` mark rewrites the front end can make (rescale, Clip→Relu)."""

    name: str
    type: str | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    also_reads: tuple[str, ...] = ()
    opaque: bool = False
    weight: str | None = None
    weight_owner: str | None = None
    weight_axis: int | None = None
    depthwise: bool = False
    layer: Layer | None = None
    clip: tuple[float, float] | None = None
    module: str | None = None


@dataclass
class GraphView:
    """A graph as both front ends present it: ``ops`` in topological order, the model's ``inputs`` and
    ``outputs`` (value names), and which values are float tensors."""

    ops: list[Op]
    inputs: list[str]
    outputs: list[str]
    float_values: set[str]
    _producer: dict = field(init=False, repr=False)
    _consumers: dict = field(init=False, repr=False)
    mask_like: set[str] = field(init=False, repr=False)

    def __post_init__(self):
        self._producer = {value: op for op in self.ops for value in op.outputs if value}
        self._consumers = {}
        for op in self.ops:
            for value in dict.fromkeys([*op.inputs, *op.also_reads]):
                if value:
                    self._consumers.setdefault(value, []).append(op)
        self.mask_like = {value for value in self.inputs if value not in self.float_values}
        for op in self.ops:
            reads = [value for value in op.inputs if value]
            if op.weight is None and reads and all(value in self.mask_like for value in reads):
                self.mask_like.update(op.outputs)

    def producer(self, value: str) -> Op | None:
        """The op computing ``value`` (None for model inputs and constants)."""
        return self._producer.get(value)

    def consumers(self, value: str) -> list[Op]:
        """The ops reading ``value``, each once."""
        return self._consumers.get(value, [])

    def is_float(self, value: str) -> bool:
        return value in self.float_values

    def is_mask_like(self, value: str) -> bool:
        """Computed only from non-float model inputs (ids, masks) and constants, no weights on the way."""
        return value in self.mask_like

    def source(self, value: str, passes_through) -> str:
        """The value whose numbers ``value`` carries, looking back through ops ``passes_through(op)`` accepts."""
        op = self.producer(value)
        while op is not None and passes_through(op) and op.inputs and op.inputs[0]:
            value = op.inputs[0]
            op = self.producer(value)
        return value

    def sole_consumer(self, value: str, skipped_types, chain: list) -> Op | None:
        """The only reader of ``value`` (not a model output), looking through ops of ``skipped_types``
        (each added to ``chain``); None where there is none or several."""
        while True:
            readers = self.consumers(value)
            if len(readers) != 1 or value in self.outputs:
                return None
            if readers[0].type not in skipped_types:
                return readers[0]
            chain.append(readers[0])
            value = readers[0].outputs[0]
