"""Read the `lowbit` command's model: a factory spec, a TorchScript file or a torch.export `.pt2` file."""

from __future__ import annotations

import copy
import importlib
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from lowbit.errors import DataError, ModelLoadError, first_line
from lowbit.torch.capture import guard_calls, inference_form, script_as_graph, without_guards
from lowbit.torch.module_graph import as_module_graph, is_aten_graph


def load_model(spec: str, example_input: torch.Tensor) -> nn.Module:
    """A model from a `module:factory` spec, a TorchScript file, or a torch.export `.pt2` file; files become fx graphs
    (TorchScript is converted with ``example_input``), which lowbit can trace."""
    path = Path(spec)
    if path.suffix == ".pt2":
        program = _read_file(path, lambda p: torch.export.load(str(p)))
        model = inference_form(_read_file(path, lambda p: program.module()))
        # convolutions, linear layers and batch norms as modules: lowbit quantizes, folds and emulates them
        model = as_module_graph(model) if is_aten_graph(model) else model
        return _fit_batch(model, _static_batch(program), example_input, path)
    if path.exists() or ":" not in spec:
        script = _read_file(path, lambda p: torch.jit.load(str(p), map_location="cpu"))
        return script_as_graph(script, example_input)
    return _load_factory(spec)


def _static_batch(program) -> int | None:
    """The batch size a torch.export program was exported with, when its first input's is static."""
    names = set(program.graph_signature.user_inputs)
    first = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name in names), None)
    value = None if first is None else first.meta.get("val")
    static = isinstance(value, torch.Tensor) and value.dim() > 0 and isinstance(value.shape[0], int)
    return value.shape[0] if static else None


def _fit_batch(model: nn.Module, batch: int | None, example: torch.Tensor, path: Path) -> nn.Module:
    """The .pt2 model, made to accept the data's batches: its static batch guard is dropped (with a note) where runs on
    ``example`` show its results do not depend on the batch size; otherwise a DataError names the fix."""
    if batch is None or not isinstance(example, torch.Tensor) or example.dim() == 0 or len(example) == batch:
        return model
    unguarded = _without_guards(model)
    if unguarded is not None and _batch_independent(model, unguarded, batch, example):
        print(f"note: '{path}' was exported with a static batch size of {batch}; its graph does not "
              f"depend on the batch size, so lowbit runs it on batches of {len(example)}", file=sys.stderr)
        return unguarded
    raise DataError(f"'{path}' was exported with a static batch size of {batch} and its graph depends on it: "
                    f"pass --batch-size {batch} (with a sample count divisible by it) or export with a dynamic "
                    f"batch dimension (torch.export.Dim)")


def _without_guards(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` without torch.export's input guards, or None when it has none to drop."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree spec deprecation notice on copy
        unguarded = copy.deepcopy(model)
    guards = guard_calls(unguarded)
    if not guards or any(n.users for n in guards):
        return None
    return inference_form(without_guards(unguarded))


def _batch_independent(model: nn.Module, unguarded: nn.Module, batch: int, example: torch.Tensor) -> bool:
    """Whether ``unguarded`` gives, on ``example`` at once and on its first sample alone, what ``model``
    gives at its exported batch size ``batch``."""
    count = len(example)
    chunks = -(-count // batch)
    tiled = example[torch.arange(chunks * batch) % count]
    try:
        with torch.no_grad():
            reference = [torch.cat(parts) for parts in zip(*(_leaves(model(part)) for part in tiled.split(batch)))]
            runs = [_leaves(unguarded(example)), _leaves(unguarded(example[:1]))]
    except Exception:
        return False
    for outputs, size in zip(runs, (count, 1)):
        if len(outputs) != len(reference):
            return False
        for output, expected in zip(outputs, reference):
            expected = expected[:size]
            if output.shape != expected.shape:
                return False
            scale = float(expected.abs().max()) if expected.numel() else 1.0
            if not torch.allclose(output.float(), expected.float(), rtol=1e-4, atol=1e-5 * max(scale, 1.0)):
                return False
    return True


def _leaves(value) -> list[torch.Tensor]:
    """The tensors of a model's output (tensor, tuple, list or dict)."""
    return [leaf for leaf in torch.utils._pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def _read_file(path: Path, reader):
    """``reader(path)``; ModelLoadError if the file is missing or unreadable."""
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' not found (MODEL is a module:factory spec or a model file)")
    try:
        return reader(path)
    except Exception as error:
        raise ModelLoadError(f"cannot read model file '{path}': {first_line(error)}") from None


def import_attribute(spec: str, what: str = "model spec"):
    """``module:name`` imported (with the cwd on sys.path); ModelLoadError naming the cause otherwise."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ModelLoadError(f"{what} {spec!r} is not of the form module:name")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except ImportError as error:
        raise ModelLoadError(f"cannot import module {module_name!r}: {first_line(error)}") from None
    except AttributeError:
        raise ModelLoadError(f"module {module_name!r} has no attribute {attribute!r}") from None


def _load_factory(spec: str) -> nn.Module:
    """Import `module` (with the cwd on sys.path) and call `factory()`; it must return an nn.Module."""
    factory = import_attribute(spec)
    try:
        model = factory()
    except Exception as error:
        raise ModelLoadError(f"{spec}() failed: {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()
