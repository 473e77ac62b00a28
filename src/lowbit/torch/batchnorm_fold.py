"""Fold BatchNorm layers into the convolution or linear layer next to them: the one that feeds them,
or the one they feed where that is exact."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import torch
from torch import fx, nn

from lowbit.algorithms.bias_correction import expected_output_shift
from lowbit.data import as_call
from lowbit.errors import GraphCaptureError, InputError, first_line
from lowbit.torch.capture import left_out_defaults, placeholder_values
from lowbit.torch.eval_mode import eval_mode
from lowbit.torch.lora import AdaptedLayer

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FOLDABLE = _CONVOLUTIONS + _TRANSPOSED + (nn.Linear,)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class FoldedBatchNorm:
    """Output statistics N(``mean``, ``std``²) per channel of a layer that absorbed the BatchNorm after it; later
    rescaling and bias shifts of the layer are followed from its current weight and bias."""

    mean: torch.Tensor
    std: torch.Tensor
    weight_norm: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def of(cls, layer: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> FoldedBatchNorm:
        """Statistics ``mean``, ``std`` of ``layer``'s output as the layer is now."""
        return cls(mean.detach().clone(), std.detach().abs().clone(), _row_norms(layer), _bias(layer).clone())

    def moments(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of ``layer``'s output channels now (float64, on the layer's device)."""
        device = layer.weight.device
        before = self.weight_norm.to(device, torch.float64)
        ratio = torch.where(before > 0, _row_norms(layer).to(torch.float64) / before, torch.ones_like(before))
        offset = _bias(layer).to(torch.float64) - ratio * self.bias.to(device, torch.float64)
        return ratio * self.mean.to(device, torch.float64) + offset, ratio * self.std.to(device, torch.float64)


def fold_batchnorm(model: nn.Module, example_input) -> list[tuple[str, str]]:
    """Fold every BatchNorm into the adjacent Conv/ConvTranspose/Linear in place, replacing it by Identity.
    A BN after a layer is folded exactly (a layer with its own forward only if checked on ``example_input``); a BN
    before one only where exact (Linear, unpadded Conv1d/2d/3d). The layer keeps ``layer.folded_batchnorm``.
    Returns (layer, bn) name pairs."""
    args, kwargs = as_call(example_input)
    gm = trace_keeping_layers(model, args, kwargs)
    run = ExampleRun(gm)
    run.on_example(model, args, kwargs)
    uses = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    after, before = [], []
    for node in gm.graph.nodes:
        if not _calls(gm, node, _BATCHNORMS) or uses[node.target] != 1:
            continue
        source = node.args[0]
        if _calls(gm, source, _FOLDABLE + (AdaptedLayer,)) and uses[source.target] == 1 and len(source.users) == 1 \
                and _folds_after(gm, source, node, run):
            after.append((source.target, node.target))
            continue
        user = next(iter(node.users)) if len(node.users) == 1 else None
        if _calls(gm, user, _FOLDABLE) and uses[user.target] == 1 and user.args == (node,) and not user.kwargs \
                and _folds_before(gm.get_submodule(user.target), len(run.shapes[node.name])):
            before.append((user.target, node.target))
    for fold, pairs in ((fold_preceding_into, before), (fold_into, after)):
        for layer_path, bn_path in pairs:
            fold(model.get_submodule(layer_path), model.get_submodule(bn_path))
            model.set_submodule(bn_path, nn.Identity())
    return before + after


class _LayerTracer(fx.Tracer):
    """torch.fx tracing that keeps every Conv/ConvTranspose/Linear/BatchNorm, subclasses included, as
    one call_module node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (isinstance(module, _FOLDABLE + _BATCHNORMS + (AdaptedLayer,))
                or super().is_leaf_module(module, qualified_name))


def trace_keeping_layers(model: nn.Module, args: tuple, kwargs: dict) -> fx.GraphModule:
    """``model`` traced with :class:`_LayerTracer`; GraphCaptureError when torch.fx cannot trace it."""
    concrete = left_out_defaults(model, args, kwargs)
    try:
        return fx.GraphModule(model, _LayerTracer().trace(model, concrete_args=concrete))
    except Exception as error:
        raise GraphCaptureError(f"fold_batchnorm needs a torch.fx-traceable model: {error}") from None


class ExampleRun(fx.Interpreter):
    """One run on the example input: every node's output shape, and the input of every layer whose
    class overrides forward (to check its fold)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.inputs: dict[str, torch.Tensor] = {}

    def on_example(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        """Run in eval mode (BatchNorm statistics untouched), then restore every module's mode;
        InputError when the example does not fit."""
        try:
            with eval_mode(model), torch.no_grad():
                self.run(*placeholder_values(self.module, model, args, kwargs))
        except (RuntimeError, TypeError, ValueError, IndexError) as error:
            raise InputError(f"the example input does not fit the model: {first_line(error)}") from None

    def run_node(self, node: fx.Node):
        if _calls(self.module, node, _FOLDABLE) and own_forward(self.module.get_submodule(node.target)):
            self.inputs[node.target] = self.map_nodes_to_values(node.args, node)[0]
        result = super().run_node(node)
        if isinstance(result, torch.Tensor):
            self.shapes[node.name] = tuple(result.shape)
        return result


def _calls(gm: fx.GraphModule, node, types) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_module" and isinstance(gm.get_submodule(node.target), types)


def own_forward(layer: nn.Module) -> bool:
    """Whether ``layer``'s class overrides how its torch base class computes."""
    base = next(cls for cls in _FOLDABLE if isinstance(layer, cls))
    return any(getattr(type(layer), name, None) is not getattr(base, name, None)
               for name in ("forward", "_conv_forward"))


def _folds_after(gm: fx.GraphModule, source: fx.Node, bn_node: fx.Node, run: ExampleRun) -> bool:
    layer, batchnorm = gm.get_submodule(source.target), gm.get_submodule(bn_node.target)
    if isinstance(layer, AdaptedLayer):
        linear = isinstance(layer.base, nn.Linear)
        return not own_forward(layer.base) and (not linear or len(run.shapes[source.name]) == 2)
    if isinstance(layer, nn.Linear) and len(run.shapes[source.name]) != 2:
        return False
    if not own_forward(layer):
        return True
    x = run.inputs[source.target]
    trial = copy.deepcopy(layer)
    fold_into(trial, batchnorm)
    with torch.no_grad():
        expected, got = batchnorm(layer(x)), trial(x)
    return bool((got - expected).abs().max() <= 1e-5 * expected.abs().max())


def _folds_before(layer: nn.Module, input_rank: int) -> bool:
    if isinstance(layer, nn.Linear):
        return input_rank == 2 and not own_forward(layer)
    return isinstance(layer, _CONVOLUTIONS) and not own_forward(layer) and unpadded(layer)


def unpadded(layer: nn.Module) -> bool:
    """Whether ``layer`` (a Linear or convolution) adds no padding, so a constant input shift maps to a constant
    output shift."""
    if isinstance(layer, nn.Linear):
        return True
    if isinstance(layer.padding, str):
        return layer.padding == "valid" or all(k == 1 for k in layer.kernel_size)
    return all(p == 0 for p in layer.padding)


def batchnorm_factor(batchnorm: nn.Module) -> torch.Tensor:
    """The per-channel scale of batchnorm (eval mode): batchnorm(x) = factor·(x − running_mean) + β."""
    scale = batchnorm.weight if batchnorm.affine else 1.0
    return scale / torch.sqrt(batchnorm.running_var + batchnorm.eps)


def _beta(batchnorm: nn.Module) -> torch.Tensor:
    return batchnorm.bias if batchnorm.affine else torch.zeros_like(batchnorm.running_mean)


def _bias(layer: nn.Module) -> torch.Tensor:
    channels = layer.weight.shape[1] * layer.groups if isinstance(layer, _TRANSPOSED) else layer.weight.shape[0]
    if layer.bias is None:
        return torch.zeros(channels, dtype=layer.weight.dtype, device=layer.weight.device)
    return layer.bias.detach()


def _row_norms(layer: nn.Module) -> torch.Tensor:
    """The L2 norm of the weights of each output channel."""
    weight = layer.weight.detach()
    if isinstance(layer, _TRANSPOSED):
        weight = weight.reshape(layer.groups, weight.shape[0] // layer.groups, weight.shape[1], -1).transpose(1, 2)
    return weight.reshape(_bias(layer).shape[0], -1).norm(dim=1)


def _set_bias(layer: nn.Module, bias: torch.Tensor) -> None:
    if layer.bias is None:
        layer.bias = nn.Parameter(bias)
    else:
        layer.bias.copy_(bias)


@torch.no_grad()
def fold_into(layer: nn.Module, batchnorm: nn.Module) -> None:
    """Scale ``layer``'s output channels and shift its bias so it computes batchnorm(layer(x)); record
    the BN's output statistics as ``layer.folded_batchnorm``. An adapted layer's adapters scale alike."""
    factor = batchnorm_factor(batchnorm)
    if isinstance(layer, AdaptedLayer):
        layer.scale_outputs(factor)
        layer = layer.base
    weight = layer.weight
    if isinstance(layer, _TRANSPOSED):
        grouped = weight.reshape(layer.groups, weight.shape[0] // layer.groups, weight.shape[1], -1)
        per_group = factor.reshape(layer.groups, 1, weight.shape[1], 1)
        weight.copy_((grouped * per_group).reshape(weight.shape))
    else:
        weight.mul_(factor.reshape([-1] + [1] * (weight.dim() - 1)))
    _set_bias(layer, (_bias(layer) - batchnorm.running_mean) * factor + _beta(batchnorm))
    gamma = batchnorm.weight if batchnorm.affine else torch.ones_like(batchnorm.running_mean)
    layer.folded_batchnorm = FoldedBatchNorm.of(layer, _beta(batchnorm), gamma)


@torch.no_grad()
def fold_preceding_into(layer: nn.Module, batchnorm: nn.Module) -> None:
    """Fold ``batchnorm`` into the following ``layer``'s input channels and bias: W' = W·factor, b' = b + Σ W·shift.
    Exact for a Linear and an unpadded convolution; output statistics recorded on ``layer`` stay as they were."""
    factor = batchnorm_factor(batchnorm)
    shift = _beta(batchnorm) - batchnorm.running_mean * factor
    recorded = getattr(layer, "folded_batchnorm", None)
    moments = recorded.moments(layer) if recorded is not None else None
    weight = layer.weight
    groups = getattr(layer, "groups", 1)
    added = expected_output_shift(weight, shift, groups)
    per_group = weight.shape[1]
    grouped = weight.reshape(groups, weight.shape[0] // groups, per_group, -1)
    weight.copy_((grouped * factor.reshape(groups, 1, per_group, 1)).reshape(weight.shape))
    _set_bias(layer, _bias(layer) + added)
    if moments is not None:
        layer.folded_batchnorm = FoldedBatchNorm.of(layer, *moments)
