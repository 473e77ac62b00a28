"""Export a calibrated QuantSim: FP32 ONNX, AIMET encodings, and a QDQ ONNX for onnxruntime."""

from __future__ import annotations

import copy
import inspect
import io
import warnings

import onnx
import torch
from torch import nn

from lowbit.data import as_call, move_call
from lowbit.errors import ExportError, first_line
from lowbit.qdq.flatten_as_reshape import flatten_as_reshape
from lowbit.qdq.files import ExportPaths, quantizer_args, require_encodings, write_export
from lowbit.qdq.graph_index import rename_tensors
from lowbit.qdq.split import split_exported_graph
from lowbit.quant.quantizer import Quantizer
from lowbit.torch.onnx_qdq_op import ExportQuantizer
from lowbit.torch.leaf_fallback import InputQuantized, OutputQuantized
from lowbit.torch.weight_quantized import WeightQuantized

WRAPPERS = (WeightQuantized, OutputQuantized, InputQuantized)

OPSET = 17


def export_sim(sim, out_dir, name: str = "model") -> ExportPaths:
    """Write NAME.onnx, NAME.encodings and NAME.qdq.onnx (each atomically) and return their paths."""
    require_encodings(sim.quantizers())
    exported = exported_onnx(sim)
    split = split_exported_graph(exported, sim.quantizers(), parameter_renames(sim.model))
    paths = write_export(split, out_dir, name, quantizer_args(sim.target, sim.scheme))
    sim.tensor_names = split.tensor_names
    return paths


def exported_onnx(sim) -> onnx.ModelProto:
    """The sim traced to ONNX with every quantizer written as tagged QuantizeLinear/DequantizeLinear.
    Biases stay float (the QDQ step rounds them to int32 as the simulation does); Flatten(axis=1) becomes Reshape."""
    memo: dict = {}
    module = copy.deepcopy(sim.model, memo).cpu().eval()
    keys = {id(memo[id(q)]): key for key, q in sim.quantizers().items()}
    for path, child in list(module.named_modules()):
        if isinstance(child, WeightQuantized):
            child.link_input_quantizer(None)
        if isinstance(child, Quantizer):
            module.set_submodule(path, ExportQuantizer(keys[id(child)], child.encoding))
    args, kwargs = move_call(*as_call(sim.example_input), "cpu")
    if kwargs:  # the exporter's calling form: positional tensors
        module, args = KeywordCall(module, list(kwargs)), tuple(kwargs.values())
    names = module.names if isinstance(module, KeywordCall) else _input_names(module, args)
    outputs = _output_names(module, args)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=OPSET,
                              input_names=names, output_names=outputs,
                              dynamic_axes=_dynamic_axes(module, names, args, outputs),
                              do_constant_folding=True)
    except Exception as error:
        raise ExportError(f"ONNX export failed: {first_line(error)}") from None
    exported = onnx.load_from_string(buffer.getvalue())
    flatten_as_reshape(exported.graph)
    if isinstance(module, KeywordCall):
        prefix = f"{KeywordCall.INNER}."
        rename_tensors(exported.graph, {t.name: t.name.removeprefix(prefix) for t in exported.graph.initializer})
    return exported


class KeywordCall(nn.Module):
    """Calls ``model`` with keyword arguments from positional tensors (the exporter's calling form)."""

    INNER = "model"

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *values):
        return self.model(**dict(zip(self.names, values)))


def _dynamic_axes(module: nn.Module, names: list[str], args: tuple, outputs: list[str]) -> dict:
    """The batch axis of every input and output, plus each other axis the model runs at another size on (probed
    on one sample by doubling it), with the output axes that follow it."""
    axes = {name: {0: "batch"} for name in names + outputs}
    sample = tuple(a[:1] if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args)
    base = _output_shapes(module, sample)
    if base is None:
        return axes
    named = list(zip(names, [index for index, value in enumerate(args) if isinstance(value, torch.Tensor)]))
    groups = sorted({(axis, sample[position].shape[axis]) for _, position in named
                     for axis in range(1, sample[position].dim())})
    for axis, size in groups:
        members = [(name, position) for name, position in named
                   if sample[position].dim() > axis and sample[position].shape[axis] == size]
        probe = list(sample)
        for _, position in members:
            probe[position] = torch.cat([sample[position]] * 2, axis)
        shapes = _output_shapes(module, tuple(probe))
        if shapes is None or len(shapes) != len(base):
            continue
        label = f"{members[0][0]}_dim{axis}"
        for name, _ in members:
            axes[name][axis] = label
        for output, before, after in zip(outputs, base, shapes):
            for dim, (old_size, new_size) in enumerate(zip(before, after)):
                if dim and old_size != new_size:
                    axes[output].setdefault(dim, f"{output}_dim{dim}")
    return axes


def _output_shapes(module: nn.Module, args: list) -> list[tuple] | None:
    """The shapes of the model's output tensors on ``args``, or None when it does not run on them."""
    try:
        with torch.no_grad():
            result = module(*args)
    except Exception:
        return None
    return [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]


def _input_names(module, args: tuple) -> list[str]:
    """ONNX input names: the forward's parameter names for the tensors actually passed."""
    parameters = list(inspect.signature(module.forward).parameters)
    return [parameters[i] for i, a in enumerate(args) if isinstance(a, torch.Tensor)]


def _output_names(module, args: tuple) -> list[str]:
    """``output`` for a single tensor output, ``output_0`` ... for several."""
    with torch.no_grad():
        result = module(*args)
    count = len(torch.utils._pytree.tree_leaves(result))
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def parameter_renames(model) -> dict[str, str]:
    """Exported parameter names → the user's names, dropping wrapper segments
    (``a.layer.weight`` → ``a.weight``)."""
    wrappers = {path for path, child in model.named_modules() if isinstance(child, WRAPPERS)}
    renames = {}
    for name, _ in list(model.named_parameters()) + list(model.named_buffers()):
        kept, prefix = [], []
        for part in name.split("."):
            if not (part == "layer" and ".".join(prefix) in wrappers):
                kept.append(part)
            prefix.append(part)
        if len(kept) != len(prefix):
            renames[name] = ".".join(kept)
    return renames

