"""Channel pruning (He et al. 2017): a layer keeps the input channels that carry most of its output, the layers
that produce them lose the matching output channels (through BatchNorm, activations and depthwise convolutions),
and the kept weights are refit by least squares so the layer's output on data stays as close as it can."""

from __future__ import annotations

import copy
import functools
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.data import as_call, batch_of, checked_calls, map_call
from lowbit.compression.svd import zero_padding
from lowbit.errors import SpecError
from lowbit.torch.batchnorm_fold import ExampleRun, own_forward, trace_keeping_layers
from lowbit.torch.eval_mode import eval_mode

_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
                nn.LeakyReLU, nn.ELU, nn.Dropout, nn.Identity)
_CHANNELWISE_FUNCTIONS = {F.relu, F.relu6, F.hardtanh, F.hardswish, F.silu, F.gelu, F.sigmoid, F.leaky_relu,
                          torch.relu, torch.sigmoid, torch.tanh}
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
MAX_ROWS = 8192
"""Sampled output positions the least-squares refit solves over."""
RIDGE = 0.01
"""Pull of the refit towards the layer's own weights, relative to the mean squared input: small where rows are plenty,
it keeps a refit from few rows from fitting them alone (docs/compression.md)."""


@dataclass
class ChannelChain:
    """What pruning ``layer``'s input channels touches: the ``producer`` whose output channels go, and the
    channel-wise modules between them (BatchNorms, depthwise convolutions) that lose the same channels."""

    layer: str
    producer: str
    between: list[str]


@dataclass
class PrunedChannels:
    """The pruned copy (``model``), the input channels ``layer`` kept, and the modules that were winnowed."""

    model: nn.Module
    layer: str
    kept: list[int]
    winnowed: list[str]


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, _CONVOLUTIONS) and module.groups == module.in_channels == module.out_channels > 1


def _is_dense(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or isinstance(module, _CONVOLUTIONS) and module.groups == 1


_POOLS = {**{getattr(nn, f"{kind}{d}d"): d for kind in ("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool")
              for d in (1, 2, 3)},
          **{getattr(F, f"{kind}{d}d"): d for kind in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool")
             for d in (1, 2, 3)}}
"""Pooling modules and functions, by the spatial dimensions they pool (each channel alone)."""
_PADS = (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
         nn.modules.padding._CircularPadNd)


def _passes_channels(gm: fx.GraphModule, node: fx.Node, shape_of) -> bool:
    """Whether ``node`` maps each channel to the same channel alone: an activation, Dropout or Identity; padding or
    pooling of the spatial axes; a flatten or mean that keeps the channel axis (``shape_of``: a node's output shape)."""
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    if isinstance(module, _CHANNELWISE):
        return True
    if node.op == "call_function" and node.target in _CHANNELWISE_FUNCTIONS:
        return not any(isinstance(a, fx.Node) for a in node.args[1:])
    kind = type(module) if module is not None else node.target
    if kind not in _POOLS and not isinstance(module, (*_PADS, nn.Flatten)) \
            and kind not in (F.pad, torch.flatten, "flatten", torch.mean, "mean"):
        return False
    shape = shape_of(node.args[0])
    if shape is None or len(shape) < 3:
        return False
    if kind in _POOLS:
        return len(shape) == _POOLS[kind] + 2
    if isinstance(module, _PADS) or kind is F.pad:
        pad = module.padding if module is not None else (node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
        return len(pad) <= 2 * (len(shape) - 2)
    if isinstance(module, nn.Flatten) or kind in (torch.flatten, "flatten"):
        start, end = (module.start_dim, module.end_dim) if module is not None else _flatten_dims(node)
        return start == 1 and end in (-1, len(shape) - 1) and all(size == 1 for size in shape[2:])
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = [dims] if isinstance(dims, int) else dims
    return dims is not None and all(isinstance(d, int) and d % len(shape) > 1 for d in dims)


def _flatten_dims(node: fx.Node) -> tuple[int, int]:
    """(start_dim, end_dim) of a torch.flatten call or a tensor's flatten method."""
    dims = {"start_dim": 0, "end_dim": -1} | node.kwargs | dict(zip(("start_dim", "end_dim"), node.args[1:]))
    return dims["start_dim"], dims["end_dim"]


def channel_chain(gm: fx.GraphModule, node: fx.Node, shape_of) -> ChannelChain | str:
    """The chain feeding the layer ``node`` calls, or why its input channels cannot be pruned (``shape_of``: a
    node's output shape on an example)."""
    current, between = node.args[0] if node.args else None, []
    while True:
        if not isinstance(current, fx.Node) or current.op == "placeholder":
            return "its input is the model's input"
        if len(current.users) != 1:
            return f"its input channels also feed {len(current.users) - 1} other op(s) at {current.name}"
        module = gm.get_submodule(current.target) if current.op == "call_module" else None
        if module is not None and _is_dense(module):
            return ChannelChain(node.target, current.target, between)
        if module is not None and (isinstance(module, nn.modules.batchnorm._BatchNorm) or _is_depthwise(module)):
            between.append(current.target)
        elif not _passes_channels(gm, current, shape_of):
            return f"{current.name} lies between it and the layer that makes its input"
        current = current.args[0]


def prunable_layers(model: nn.Module, example_input) -> dict[str, ChannelChain | str]:
    """Every Conv (one group) and Linear of ``model`` by name: its chain, or why its input channels cannot be pruned."""
    args, kwargs = as_call(example_input)
    gm = trace_keeping_layers(model, args, kwargs)
    shape_of = _example_shapes(gm, model, *map_call(_first_sample, args, kwargs))
    calls = [node for node in gm.graph.nodes if node.op == "call_module"]
    uses = Counter(node.target for node in calls)
    chains = {}
    for node in calls:
        if _is_dense(gm.get_submodule(node.target)):
            chain = channel_chain(gm, node, shape_of)
            shared = [name for name in ([node.target] + ([chain.producer] + chain.between
                                                         if isinstance(chain, ChannelChain) else [])) if uses[name] > 1]
            chains[node.target] = f"{shared[0]} is called more than once" if shared else chain
    return chains


def _example_shapes(gm: fx.GraphModule, model: nn.Module, args: tuple, kwargs: dict):
    """A function giving a node's output shape on the example, which runs the first time it is asked."""

    @functools.cache
    def shapes() -> dict[str, tuple[int, ...]]:
        run = ExampleRun(gm)
        run.on_example(model, args, kwargs)
        return run.shapes

    return lambda node: shapes().get(node.name)


def _first_sample(value):
    return value[:1] if isinstance(value, torch.Tensor) and value.dim() else value


def _input_rows(layer: nn.Module, inputs: list[torch.Tensor], rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B): up to ``rows`` sampled output positions of ``layer`` on ``inputs``; A holds each position's input
    window per input channel ([positions, channels, window]), B the layer's output there without bias."""
    generator = torch.Generator().manual_seed(0)
    samples = [x.reshape(-1, x.shape[-1]) if isinstance(layer, nn.Linear) else x for x in inputs]
    count = sum(len(s) for s in samples)
    windows, outputs = [], []
    for sample in samples:
        share = max(1, rows * len(sample) // count)
        if isinstance(layer, nn.Linear):
            picked = sample[torch.randperm(len(sample), generator=generator)[:share]]
            windows.append(picked[:, :, None])
            outputs.append(picked @ layer.weight.T)
            continue
        for image in sample:
            patches = F.unfold(image[None], layer.kernel_size, layer.dilation, zero_padding(layer), layer.stride)[0]
            chosen = torch.randperm(patches.shape[1], generator=generator)[:max(1, share // len(sample))]
            picked = patches[:, chosen]
            windows.append(picked.T.reshape(len(chosen), layer.in_channels, -1))
            outputs.append(picked.T @ layer.weight.reshape(layer.out_channels, -1).T)
    return torch.cat(windows), torch.cat(outputs)


def anchored_least_squares(inputs: torch.Tensor, outputs: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """argmin_W ‖inputs·W − outputs‖² + λ‖W − anchor‖², λ = RIDGE × the mean squared input: least squares where the
    sampled rows determine W, the layer's own weights where they do not (a 7×7 feature map of a few images)."""
    gram = inputs.T @ inputs
    weight = RIDGE * gram.diagonal().mean().clamp(min=1e-12)
    gram.diagonal().add_(weight)
    return torch.linalg.solve(gram, inputs.T @ outputs + weight * anchor)


def _layer_inputs(model: nn.Module, layer: str, calls) -> list[torch.Tensor]:
    """The inputs module ``layer`` of ``model`` receives over ``calls``, one tensor per call."""
    inputs: list[torch.Tensor] = []
    hook = model.get_submodule(layer).register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    try:
        with eval_mode(model):
            for args, kwargs in calls:
                model(*args, **kwargs)
    finally:
        hook.remove()
    return inputs


def _refits(layer: nn.Module) -> bool:
    """Whether the least-squares refit knows how ``layer`` computes (torch's Conv2d or Linear, zero padding)."""
    return (isinstance(layer, (nn.Linear, nn.Conv2d)) and not own_forward(layer)
            and getattr(layer, "padding_mode", "zeros") == "zeros")


def _slice(module: nn.Module, kept: torch.Tensor, axis: int) -> None:
    """Keep the channels ``kept`` of ``module`` along its weight's ``axis`` (0: outputs, 1: inputs), in place."""
    count = len(kept)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = count
        for name in ("weight", "bias"):
            if getattr(module, name) is not None:
                setattr(module, name, nn.Parameter(getattr(module, name).detach()[kept]))
        for name in ("running_mean", "running_var"):
            if getattr(module, name) is not None:
                setattr(module, name, getattr(module, name)[kept].clone())
        return
    module.weight = nn.Parameter(module.weight.detach().index_select(axis, kept))
    if axis == 0 and module.bias is not None:
        module.bias = nn.Parameter(module.bias.detach()[kept])
    if isinstance(module, nn.Linear):
        setattr(module, "out_features" if axis == 0 else "in_features", count)
    elif _is_depthwise(module):
        module.in_channels = module.out_channels = module.groups = count
    else:
        setattr(module, "out_channels" if axis == 0 else "in_channels", count)


@torch.no_grad()
def prune_channels(model: nn.Module, layer: str, keep: int, data, num_batches: int = 4,
                   reconstruct: bool = True, reference: nn.Module | None = None) -> PrunedChannels:
    """A copy of ``model`` where ``layer`` keeps ``keep`` input channels (those with the most weight norm × input
    RMS on ``data``), its producers lose the others, and (``reconstruct``) its kept weights are refit by least
    squares to its original output on ``data``: that of the same layer in ``reference`` (the uncompressed model,
    whose output this one's layers then keep close to in turn) or else in ``model``. SpecError where the chain
    cannot be pruned."""
    calls = list(checked_calls(data, None, num_batches))
    pruned = copy.deepcopy(model)
    chains = prunable_layers(pruned, batch_of(calls[0]))
    if layer not in chains:
        raise SpecError(f"{layer!r} is not a convolution with one group or a Linear layer of the model")
    chain = chains[layer]
    if isinstance(chain, str):
        raise SpecError(f"cannot prune the input channels of {layer!r}: {chain}")
    target = pruned.get_submodule(layer)
    channels = target.weight.shape[1]
    if not 1 <= keep <= channels:
        raise SpecError(f"{layer!r} has {channels} input channels: keep between 1 and {channels}, got {keep}")
    inputs = _layer_inputs(pruned, layer, calls)
    flat = [x.reshape(-1, channels) if isinstance(target, nn.Linear) else x.transpose(0, 1).reshape(channels, -1).T
            for x in inputs]
    rms = torch.cat(flat).pow(2).mean(0).sqrt()
    score = target.weight.detach().transpose(0, 1).reshape(channels, -1).norm(dim=1) * rms
    kept = score.topk(keep).indices.sort().values
    if reconstruct and _refits(target) and keep < channels:
        windows, outputs = _input_rows(target, inputs, MAX_ROWS)
        if reference is not None:  # the same positions (same sample counts and sizes), the original layer's output
            outputs = _input_rows(reference.get_submodule(layer), _layer_inputs(reference, layer, calls), MAX_ROWS)[1]
        original = target.weight.detach()[:, kept].reshape(target.weight.shape[0], -1).T
        solution = anchored_least_squares(windows[:, kept].reshape(len(windows), -1).double(), outputs.double(),
                                          original.double())
        weight = solution.T.reshape(target.weight.shape[0], keep, *target.weight.shape[2:])
        target.weight = nn.Parameter(weight.to(target.weight.dtype))
        setattr(target, "in_features" if isinstance(target, nn.Linear) else "in_channels", keep)
    else:
        _slice(target, kept, 1)
    for name in chain.between + [chain.producer]:
        _slice(pruned.get_submodule(name), kept, 0)
    return PrunedChannels(pruned, layer, kept.tolist(), [chain.producer] + chain.between)
