"""Graph capture with torch.fx, and the dtypes of every node from one run on the example input."""

from __future__ import annotations

import inspect

import torch
from torch import fx, nn

from lowbit.data import as_call
from lowbit.errors import GraphCaptureError, InputError


def trace(model: nn.Module, args: tuple, kwargs: dict) -> fx.GraphModule:
    """Symbolically trace ``model`` called as ``model(*args, **kwargs)``; arguments left out of
    the call keep their defaults as constants. Raises whatever torch.fx raises."""
    signature = inspect.signature(model.forward)
    bound = signature.bind_partial(*args, **kwargs)
    concrete = {name: parameter.default for name, parameter in signature.parameters.items()
                if name not in bound.arguments and parameter.default is not inspect.Parameter.empty}
    return fx.symbolic_trace(model, concrete_args=concrete or None)


def placeholder_values(gm: fx.GraphModule, model: nn.Module, args: tuple, kwargs: dict) -> list:
    """The example call as one positional value per placeholder of ``gm``."""
    bound = inspect.signature(model.forward).bind_partial(*args, **kwargs)
    bound.apply_defaults()
    values = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            values.append(bound.arguments.get(node.target.lstrip("*")))
    return values


class _DtypeRecorder(fx.Interpreter):
    """Runs the graph once, remembering each node's output dtype."""

    def __init__(self, gm):
        super().__init__(gm)
        self.dtypes: dict[str, torch.dtype] = {}

    def run_node(self, node):
        result = super().run_node(node)
        if isinstance(result, torch.Tensor):
            self.dtypes[node.name] = result.dtype
        return result


def node_dtypes(gm: fx.GraphModule, values: list) -> dict[str, torch.dtype]:
    """dtype of every tensor-valued node, from one run; InputError when the example does not fit."""
    recorder = _DtypeRecorder(gm)
    try:
        with torch.no_grad():
            recorder.run(*values)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"the example input does not fit the model: {first_line}") from None
    return recorder.dtypes


def check_example(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Run the model once on the example; InputError naming the cause when it does not fit."""
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"the example input does not fit the model: {first_line}") from None


def trace_for(purpose: str, model: nn.Module, example_input) -> fx.GraphModule:
    """:func:`trace` on an example input; GraphCaptureError saying ``purpose`` needs a traceable model."""
    args, kwargs = as_call(example_input)
    try:
        return trace(model, args, kwargs)
    except Exception as error:
        raise GraphCaptureError(f"{purpose} needs a torch.fx-traceable model: {error}") from None
