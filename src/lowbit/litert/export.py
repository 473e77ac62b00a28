"""``sim.export_tflite``: the sim's QDQ export converted to an int8 LiteRT file, written atomically, optionally
checked against the sim in LiteRT."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from lowbit.atomic import atomic_write_bytes
from lowbit.data import as_call
from lowbit.errors import ExportError
from lowbit.fidelity import Fidelity, compare_outputs
from lowbit.litert.convert import qdq_to_tflite
from lowbit.litert.run import LiteRtModel


@dataclass(frozen=True)
class LiteRtExport:
    """The written .tflite file and, with ``verify``, how LiteRT's run of it compares with the sim."""

    path: Path
    fidelity: Fidelity | None = None


def export_tflite(sim, path, input_shape=None, verify=None, integer_io: bool = False) -> LiteRtExport:
    """Write ``path`` (.tflite) from ``sim``; ``input_shape`` (one shape, or name → shape) fixes the sizes LiteRT
    plans with (default: the sim's example input, batch 1; the batch size stays free); ``integer_io``: int8 inputs
    and outputs on the sim's grids, for runtimes without float (microcontrollers)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as folder:
        qdq = onnx.load(str(sim.export(folder, "model").qdq_onnx))
    inputs = [i for i in qdq.graph.input if i.name not in {t.name for t in qdq.graph.initializer}]
    shapes = _input_shapes(sim, inputs, input_shape)
    content = qdq_to_tflite(qdq, shapes, "lowbit int8 export", integer_io)
    atomic_write_bytes(path, content)
    if verify is None:
        return LiteRtExport(path)
    try:
        runtime = LiteRtModel(path)
    except Exception as error:
        path.unlink(missing_ok=True)
        raise ExportError(f"LiteRT cannot load the written {path.name} (removed): {error}") from None
    return LiteRtExport(path, compare_outputs(sim, runtime.names, runtime, verify))


def _input_shapes(sim, inputs, input_shape) -> dict[str, tuple[int, ...]]:
    """Name → shape of each model input: as given, else the sim's example input's, else the file's static sizes
    (batch 1)."""
    names = [i.name for i in inputs]
    if isinstance(input_shape, dict):
        return {name: tuple(shape) for name, shape in input_shape.items()}
    if input_shape is not None:
        return {names[0]: tuple(input_shape)}
    example = getattr(sim, "example_input", None)
    tensors = [t for t in as_call(example)[0] + tuple(as_call(example)[1].values()) if hasattr(t, "shape")]
    if example is not None and len(tensors) == len(names):
        return {name: (1, *tensor.shape[1:]) for name, tensor in zip(names, tensors)}
    shapes = {}
    for value in inputs:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if any(d is None for d in dims[1:]):
            raise ExportError(f"input '{value.name}' has dynamic sizes {dims}: pass input_shape to export_tflite")
        shapes[value.name] = (1, *dims[1:])
    return shapes
