"""Graph capture with torch.fx, and the dtypes of every node from one run on the example input."""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import fx, nn

from lowbit.data import as_call
from lowbit.errors import GraphCaptureError, InputError, first_line
from lowbit.torch.module_graph import as_module_graph, has_functional_layers


def trace(model: nn.Module, args: tuple, kwargs: dict) -> fx.GraphModule:
    """Symbolically trace ``model`` called as ``model(*args, **kwargs)``; arguments left out of
    the call keep their defaults as constants. Raises whatever torch.fx raises."""
    return fx.symbolic_trace(model, concrete_args=left_out_defaults(model, args, kwargs))


def left_out_defaults(model: nn.Module, args: tuple, kwargs: dict) -> dict | None:
    """The defaults of ``model.forward``'s arguments the call leaves out (None when there are none)."""
    signature = inspect.signature(model.forward)
    bound = signature.bind_partial(*args, **kwargs)
    return {name: parameter.default for name, parameter in signature.parameters.items()
            if name not in bound.arguments and parameter.default is not inspect.Parameter.empty} or None


def placeholder_values(gm: fx.GraphModule, model: nn.Module, args: tuple, kwargs: dict) -> list:
    """The example call as one positional value per placeholder of ``gm``."""
    bound = inspect.signature(model.forward).bind_partial(*args, **kwargs)
    bound.apply_defaults()
    return [bound.arguments.get(node.target.lstrip("*")) for node in gm.graph.nodes if node.op == "placeholder"]


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
        raise InputError(f"the example input does not fit the model: {first_line(error)}") from None
    return recorder.dtypes


def check_example(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Run the model once on the example; InputError naming the cause when it does not fit."""
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        raise InputError(f"the example input does not fit the model: {first_line(error)}") from None


def trace_for(purpose: str, model: nn.Module, example_input) -> fx.GraphModule:
    """:func:`trace` on an example input; GraphCaptureError saying ``purpose`` needs a traceable model."""
    args, kwargs = as_call(example_input)
    try:
        return trace(model, args, kwargs)
    except Exception as error:
        raise GraphCaptureError(f"{purpose} needs a torch.fx-traceable model: {error}") from None


def with_layer_modules(model: nn.Module, example_input) -> nn.Module:
    """``model``, or its trace with convolution/linear/matmul calls on its own parameters as modules so BatchNorm
    folds into them; a model torch.fx cannot trace is returned as it is."""
    args, kwargs = as_call(example_input)
    try:
        gm = trace(model, args, kwargs)
    except Exception:
        return model
    return as_module_graph(gm) if has_functional_layers(gm) else model


def script_as_graph(script: torch.jit.ScriptModule, example_input) -> fx.GraphModule:
    """A TorchScript module as an eval-mode fx graph (converted by running ``example_input``), its convolutions,
    linear layers and batch norms as modules; GraphCaptureError when torch cannot convert it."""
    from torch._export.converter import TS2EPConverter

    args, kwargs = as_call(example_input)
    names = [argument.name for argument in script.forward.schema.arguments[1:]]
    if kwargs:  # the converter takes the example positionally, in forward's order
        missing = [name for name in names if name not in kwargs]
        if missing or len(kwargs) != len(names):
            raise InputError(f"the TorchScript forward takes ({', '.join(names)}); the example input has "
                             f"({', '.join(kwargs)})")
        args, kwargs = tuple(kwargs[name] for name in names), {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = TS2EPConverter(script.eval(), args).convert().module()
    except Exception as error:
        raise GraphCaptureError(f"torch cannot convert this TorchScript module to a graph: "
                                f"{first_line(error)}") from None
    codegen = gm.graph._codegen
    if getattr(codegen, "pytree_info", None) is not None and len(codegen.pytree_info.orig_args) == len(names):
        codegen.pytree_info = codegen.pytree_info._replace(orig_args=names)  # forward keeps the script's names
    return as_module_graph(without_guards(inference_form(gm)))


def guard_calls(gm: fx.GraphModule) -> list[fx.Node]:
    """torch.export's input guard calls in ``gm``: they pin the shapes of the example it was made from."""
    return [n for n in gm.graph.nodes
            if n.op == "call_module" and type(gm.get_submodule(n.target)).__name__ == "GuardsFn"]


def without_guards(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` (in place) without the guard calls nothing reads; a TorchScript module accepts the shapes
    its own code accepts."""
    guards = [n for n in guard_calls(gm) if not n.users]
    for node in guards:
        gm.graph.erase_node(node)
    if guards:
        gm.delete_all_unused_submodules()
        gm.recompile()
    return gm


def inference_form(model: nn.Module) -> nn.Module:
    """``model`` in eval mode, with nn.Module's train()/eval() usable: torch.export's module() forbids them
    through instance attributes; its graph is already in inference form."""
    model.__dict__.pop("train", None)
    model.__dict__.pop("eval", None)
    return model.eval()


class _CallRecorder(nn.Module):
    """Stands in for a module during one run, recording the arguments of its first call."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.call = inner, None

    def forward(self, *args, **kwargs):
        if self.call is None:
            self.call = (args, kwargs)
        return self.inner(*args, **kwargs)


def with_scripts_as_graphs(model: nn.Module, example_input) -> nn.Module:
    """``model`` (in place) with each outermost TorchScript submodule the example calls converted to an fx graph,
    so torch.fx traces into it; a whole ScriptModule is converted itself."""
    if isinstance(model, torch.jit.ScriptModule):
        return script_as_graph(model, example_input)
    scripts = [(name, child) for name, child in model.named_modules()
               if name and isinstance(child, torch.jit.ScriptModule)]
    outermost = [(name, child) for name, child in scripts
                 if not any(name.startswith(other + ".") for other, _ in scripts)]
    if not outermost:
        return model
    recorders = {name: _CallRecorder(child) for name, child in outermost}
    for name, recorder in recorders.items():
        model.set_submodule(name, recorder)
    try:
        args, kwargs = as_call(example_input)
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for name, child in outermost:
            model.set_submodule(name, child)
    for name, recorder in recorders.items():
        if recorder.call is not None:
            call_args, call_kwargs = recorder.call
            model.set_submodule(name, script_as_graph(recorder.inner, call_kwargs or call_args))
    return model
