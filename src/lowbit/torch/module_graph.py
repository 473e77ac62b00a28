"""Turn functional weighted calls in fx graphs (torch.export, converted TorchScript, ``F.conv2d`` in a forward)
back into ``call_module`` nodes on new modules holding the same tensors, so lowbit can quantize and fold them."""

from __future__ import annotations

import functools
import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.torch.op_types import function_op_type

aten = torch.ops.aten

_CONV = {aten.conv1d.default: 1, aten.conv2d.default: 2, aten.conv3d.default: 3,
         aten.conv1d.padding: 1, aten.conv2d.padding: 2, aten.conv3d.padding: 3,
         F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_CONV_TRANSPOSE = {aten.conv_transpose1d.default: 1, aten.conv_transpose2d.input: 2,
                   aten.conv_transpose3d.input: 3,
                   F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3}
_LINEAR = (aten.linear.default, F.linear)
_MATMUL = (operator.matmul, torch.matmul)
_CONV_CLASSES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE_CLASSES = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCHNORM_CLASSES = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def has_functional_layers(gm: fx.GraphModule) -> bool:
    """Whether ``gm`` calls a convolution, linear or matmul function on a parameter it holds."""
    rewriter = _Rewriter(gm)
    return any(n.op == "call_function" and rewriter.functional_layer(n) for n in gm.graph.nodes)


def functional_layer_types(gm: fx.GraphModule) -> dict[str, int]:
    """Op types (with counts) of convolution and linear calls left as functions, whose weights are
    computed in the graph rather than held: their weights stay in float."""
    counts = Counter(function_op_type(n.target) for n in gm.graph.nodes
                     if n.op == "call_function" and function_op_type(n.target) in ("Conv", "ConvTranspose", "Gemm"))
    return dict(counts)


def is_aten_graph(gm: nn.Module) -> bool:
    """Whether ``gm`` is a GraphModule calling aten operators (torch.export / converted TorchScript)."""
    return isinstance(gm, fx.GraphModule) and any(
        n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) for n in gm.graph.nodes)


def as_module_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm``'s aten conv/linear/batch-norm/embedding calls on parameters into module calls,
    in place; returns ``gm``. Calls whose weights are computed (not ``get_attr``) stay as they are."""
    _erase_unused_attributes(gm)
    rewriter = _Rewriter(gm)
    for node in list(gm.graph.nodes):
        if node.op == "call_function":
            rewriter.rewrite(node)
    _erase_unused_attributes(gm)
    rewriter.drop_moved_attributes()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _erase_unused_attributes(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)


class _Rewriter:
    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.created: dict[str, tuple] = {}  # module path -> (kind, config key)
        self.moved: set[str] = set()  # get_attr targets now held by a created module
        self.tensors = {n.target: value for n in gm.graph.nodes if n.op == "get_attr"
                        for value in [functools.reduce(lambda v, p: getattr(v, p, None), n.target.split("."), gm)]
                        if isinstance(value, torch.Tensor)}

    def functional_layer(self, node: fx.Node) -> bool:
        """Whether ``node`` calls a convolution, linear or matmul function on a parameter of ``gm``."""
        target = node.target
        if target in _CONV or target in _CONV_TRANSPOSE or target in _LINEAR:
            return self.tensor(node_arg(node, 1, "weight")) is not None
        if target in _MATMUL:
            return len(node.args) == 2 and self._matmul_weight(node) is not None
        return False

    def drop_moved_attributes(self) -> None:
        """Remove parameters that moved into a created module from their old holders, unless the graph
        still reads them there or the created module sits at the holder's path."""
        read = {n.target for n in self.gm.graph.nodes if n.op == "get_attr"}
        for target in self.moved - read:
            holder_path, _, name = target.rpartition(".")
            if target in self.created or holder_path in self.created:
                continue
            holder = self.gm.get_submodule(holder_path) if holder_path else self.gm
            if hasattr(holder, name):
                delattr(holder, name)

    # -- helpers -------------------------------------------------------------------------------
    def tensor(self, arg) -> torch.Tensor | None:
        """The tensor a ``get_attr`` node read before any rewrite, or None (also for None args)."""
        if not isinstance(arg, fx.Node) or arg.op != "get_attr":
            return None
        return self.tensors.get(arg.target)

    def path_for(self, weight_node: fx.Node, consumed: list[fx.Node], key: tuple, fallback: str) -> str | None:
        """Module path for a new module: the one already made for the same weights, else the weight's parent path
        if it holds nothing else the graph reads, else a child of it named after the layer's kind."""
        self.moved.update(n.target for n in consumed if isinstance(n, fx.Node) and n.op == "get_attr")
        existing = next((path for path, made in self.created.items() if made == key), None)
        if existing is not None:
            return existing
        parent, _, _ = weight_node.target.rpartition(".")
        kind = key[0].lower()
        candidates = [parent, f"{parent}.{kind}"] if parent else [weight_node.target, kind]
        candidates.append(fallback)
        consumed_targets = {n.target for n in consumed if isinstance(n, fx.Node)}
        for path in candidates:
            if path in self.created:
                continue
            if self._free(path, consumed_targets):
                return path
        base, index = fallback, 1
        while not self._free(f"{base}_{index}", set()) or f"{base}_{index}" in self.created:
            index += 1
        return f"{base}_{index}"

    def _free(self, path: str, consumed_targets: set) -> bool:
        """Whether ``path`` can hold a new module: unused, or a plain holder of only ``consumed_targets``."""
        try:
            existing = self.gm.get_submodule(path)
        except AttributeError:
            parent, _, name = path.rpartition(".")
            try:
                holder = self.gm.get_submodule(parent) if parent else self.gm
            except AttributeError:
                return "." not in path
            return not hasattr(holder, name) or path in consumed_targets
        if existing is self.gm or any(True for _ in existing.children()):
            return False
        for node in self.gm.graph.nodes:
            if node.op == "get_attr" and node.target.startswith(path + ".") and node.target not in consumed_targets:
                return False
            if node.op == "call_module" and node.target == path:
                return False
        return True

    def install(self, node: fx.Node, anchor: fx.Node, consumed: list, module: nn.Module, key: tuple, inputs: tuple,
                replace: fx.Node | None = None) -> None:
        """Put ``module`` at ``path_for``'s path and call it on ``inputs`` in place of ``node`` (or ``replace``)."""
        path = self.path_for(anchor, consumed, key, node.name)
        if path not in self.created:
            holder_path, _, name = path.rpartition(".")
            holder = self.gm.get_submodule(holder_path) if holder_path else self.gm
            if name in holder._parameters or name in holder._buffers:
                delattr(holder, name)  # the weight held there moves into the new module
            self.gm.set_submodule(path, module) if "." in path else setattr(self.gm, path, module)
            self.created[path] = key
        with self.gm.graph.inserting_before(node):
            call = self.gm.graph.call_module(path, inputs)
        call.meta = dict(node.meta)
        (replace or node).replace_all_uses_with(call)
        if replace is not None:
            self.gm.graph.erase_node(replace)
        self.gm.graph.erase_node(node)

    # -- rewrites --------------------------------------------------------------------------------
    def rewrite(self, node: fx.Node) -> None:
        target = node.target
        if target in _CONV:
            self.conv(node, _CONV[target], transposed=False)
        elif target in _CONV_TRANSPOSE:
            self.conv(node, _CONV_TRANSPOSE[target], transposed=True)
        elif target is aten.convolution.default:
            weight = self.tensor(node_arg(node, 1, "weight"))
            if weight is not None:
                self.conv(node, weight.dim() - 2, transposed=bool(node_arg(node, 6, "transposed", False)))
        elif target in _LINEAR:
            self.linear(node)
        elif target in _MATMUL:
            self.matmul(node)
        elif target is aten.batch_norm.default:
            if not node_arg(node, 5, "training", False):
                self.batchnorm(node, eps_index=7, replace=None)
        elif target is aten._native_batch_norm_legit_no_training.default:
            getter = _sole_first_item(node)
            if getter is not None:
                self.batchnorm(node, eps_index=6, replace=getter)
        elif target is aten.embedding.default:
            self.embedding(node)
        elif target is aten.addmm.default:
            self.addmm(node)
        elif target is aten.max_pool2d_with_indices.default:
            getter = _sole_first_item(node)
            if getter is not None:
                with self.gm.graph.inserting_before(node):
                    pool = self.gm.graph.call_function(aten.max_pool2d.default, node.args, node.kwargs)
                pool.meta = dict(getter.meta)
                getter.replace_all_uses_with(pool)
                self.gm.graph.erase_node(getter)
                self.gm.graph.erase_node(node)

    def conv(self, node: fx.Node, dims: int, transposed: bool) -> None:
        x, weight_node, bias_node = node.args[0], node_arg(node, 1, "weight"), node_arg(node, 2, "bias")
        weight, bias = self.tensor(weight_node), self.tensor(bias_node)
        if weight is None or (bias_node is not None and bias is None) or dims not in _CONV_CLASSES:
            return
        if weight.dim() != dims + 2:
            return
        if node.target is aten.convolution.default:
            stride, padding, dilation = node.args[3], node.args[4], node.args[5]
            output_padding, groups = node.args[7], node.args[8]
        elif transposed:  # conv_transposeNd(input, weight, bias, stride, padding, output_padding, groups, dilation)
            stride, padding = node_arg(node, 3, "stride", 1), node_arg(node, 4, "padding", 0)
            output_padding, groups = node_arg(node, 5, "output_padding", 0), node_arg(node, 6, "groups", 1)
            dilation = node_arg(node, 7, "dilation", 1)
        else:  # convNd(input, weight, bias, stride, padding, dilation, groups)
            stride, padding = node_arg(node, 3, "stride", 1), node_arg(node, 4, "padding", 0)
            dilation, groups, output_padding = node_arg(node, 5, "dilation", 1), node_arg(node, 6, "groups", 1), 0
        stride, dilation = _tuple(stride, dims), _tuple(dilation, dims)
        padding = padding if isinstance(padding, str) else _tuple(padding, dims)
        output_padding = _tuple(output_padding, dims)
        if not all(isinstance(v, int) for v in (*stride, *dilation, *output_padding, groups)):
            return
        if transposed:
            in_channels, out_channels = weight.shape[0], weight.shape[1] * groups
            module = _CONV_TRANSPOSE_CLASSES[dims](in_channels, out_channels, tuple(weight.shape[2:]), stride,
                                                   padding, output_padding, groups, bias is not None, dilation,
                                                   device="meta")
        else:
            if any(output_padding):
                return
            module = _CONV_CLASSES[dims](weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                                         stride, padding, dilation, groups, bias is not None, device="meta")
        kind = "ConvTranspose" if transposed else "Conv"
        key = (kind, dims, id(weight), id(bias), stride, padding, dilation, groups, output_padding)
        self.install(node, weight_node, [weight_node, bias_node], _holding(module, weight, bias), key, (x,))

    def linear(self, node: fx.Node) -> None:
        x, weight_node, bias_node = node.args[0], node_arg(node, 1, "weight"), node_arg(node, 2, "bias")
        weight, bias = self.tensor(weight_node), self.tensor(bias_node)
        if weight is None or weight.dim() != 2 or (bias_node is not None and bias is None):
            return
        module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        key = ("Linear", id(weight), id(bias))
        self.install(node, weight_node, [weight_node, bias_node], _holding(module, weight, bias), key, (x,))

    def _matmul_weight(self, node: fx.Node) -> torch.Tensor | None:
        """The 2-D parameter ``x @ weight`` multiplies by, or None."""
        weight = self.tensor(node.args[1])
        if weight is None or weight.dim() != 2 or not isinstance(node.args[0], fx.Node):
            return None
        return weight

    def matmul(self, node: fx.Node) -> None:
        """``x @ weight`` with a 2-D parameter ``weight`` as an ``nn.Linear`` holding ``weight``ᵀ."""
        if len(node.args) != 2 or node.kwargs:
            return
        weight = self._matmul_weight(node)
        if weight is None:
            return
        module = nn.Linear(weight.shape[0], weight.shape[1], bias=False, device="meta")
        module.weight = nn.Parameter(weight.detach().t().contiguous(), requires_grad=weight.requires_grad)
        key = ("Linear", id(weight), "transposed")
        self.install(node, node.args[1], [node.args[1]], module, key, (node.args[0],))

    def addmm(self, node: fx.Node) -> None:
        """``addmm(bias, x, t(weight))`` (linear after decomposition) as an nn.Linear."""
        if len(node.args) != 3 or any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
            return
        bias_node, x, transposed = node.args
        if not (isinstance(transposed, fx.Node) and transposed.op == "call_function" and len(transposed.users) == 1
                and (transposed.target is aten.t.default
                     or (transposed.target is aten.permute.default and list(transposed.args[1]) == [1, 0]))):
            return
        weight_node = transposed.args[0]
        weight, bias = self.tensor(weight_node), self.tensor(bias_node)
        if weight is None or weight.dim() != 2 or bias is None or bias.shape != (weight.shape[0],):
            return
        module = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
        key = ("Linear", id(weight), id(bias))
        self.install(node, weight_node, [weight_node, bias_node], _holding(module, weight, bias), key, (x,))
        self.gm.graph.erase_node(transposed)

    def batchnorm(self, node: fx.Node, eps_index: int, replace: fx.Node | None) -> None:
        x = node.args[0]
        nodes = [node_arg(node, i, name) for i, name in
                 enumerate(("weight", "bias", "running_mean", "running_var"), start=1)]
        tensors = [self.tensor(n) for n in nodes]
        weight, bias, mean, var = tensors
        if mean is None or var is None or any(n is not None and t is None for n, t in zip(nodes, tensors)):
            return
        if (weight is None) != (bias is None):
            return
        eps = node_arg(node, eps_index, "eps", 1e-5)
        if not isinstance(eps, (int, float)):
            return
        module = _BATCHNORM_CLASSES.get(_rank(x), nn.BatchNorm2d)(mean.shape[0], eps=float(eps),
                                                                  affine=weight is not None, device="meta")
        if weight is not None:
            _holding(module, weight, bias)
        module.running_mean, module.running_var = mean, var
        module.num_batches_tracked = torch.tensor(0, dtype=torch.long)
        module.eval()
        anchor = nodes[0] if nodes[0] is not None else nodes[2]
        key = ("BatchNorm", tuple(id(t) for t in tensors), float(eps))
        self.install(node, anchor, [n for n in nodes if n is not None], module, key, (x,), replace=replace)

    def embedding(self, node: fx.Node) -> None:
        weight_node, indices = node.args[0], node.args[1]
        weight = self.tensor(weight_node)
        padding_idx = node_arg(node, 2, "padding_idx", -1)
        if (weight is None or weight.dim() != 2 or node_arg(node, 4, "sparse", False)
                or not isinstance(padding_idx, int)):
            return
        module = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=None if padding_idx < 0 else padding_idx,
                              device="meta")
        key = ("Embedding", id(weight), padding_idx)
        self.install(node, weight_node, [weight_node], _holding(module, weight), key, (indices,))


def node_arg(node: fx.Node, index: int, name: str, default=None):
    """Argument ``index`` of a call node, or its keyword ``name``, else ``default``."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _tuple(value, dims: int) -> tuple:
    if isinstance(value, (list, tuple)):
        values = tuple(value)
        return values * dims if len(values) == 1 and dims > 1 else values
    return (value,) * dims


def _rank(node) -> int | None:
    value = node.meta.get("val", node.meta.get("example_value")) if isinstance(node, fx.Node) else None
    return value.dim() if isinstance(value, torch.Tensor) else None


def _holding(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    """``module`` with ``weight`` (and ``bias`` unless None) as its parameters, a plain tensor as a frozen one."""
    for name, tensor in (("weight", weight), ("bias", bias)):
        if isinstance(tensor, nn.Parameter):
            setattr(module, name, tensor)
        elif tensor is not None:
            setattr(module, name, nn.Parameter(tensor.detach(), requires_grad=False))
    return module


def _sole_first_item(node: fx.Node) -> fx.Node | None:
    """The ``getitem(node, 0)`` node when it is ``node``'s only user, else None."""
    getters = list(node.users)
    if (len(getters) == 1 and getters[0].op == "call_function"
            and getters[0].target.__name__ == "getitem" and getters[0].args[1] == 0):
        return getters[0]
    return None
