"""The clipping activation (ReLU, ReLU6, Hardtanh) that directly follows a layer in the sim's graph,
so a layer-wise loss can be measured after it, where the next layer sees the output."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import fx, nn

_FUNCTIONS = {torch.relu: torch.relu, F.relu: torch.relu, F.relu6: partial(torch.clamp, min=0.0, max=6.0)}


def following_activation(model: nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An out-of-place version of the ReLU / ReLU6 / Hardtanh that is the only consumer of module
    ``name``'s output (identities in between skipped), or None."""
    if not isinstance(model, fx.GraphModule):
        return None
    node = next((n for n in model.graph.nodes if n.op == "call_module" and n.target == name), None)
    while node is not None and len(node.users) == 1:
        user = next(iter(node.users))
        if user.op == "call_function" and not user.kwargs and len(user.args) == 1:
            return _FUNCTIONS.get(user.target)
        if user.op != "call_module":
            return None
        module = model.get_submodule(user.target)
        if isinstance(module, nn.ReLU):
            return torch.relu
        if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
            return partial(torch.clamp, min=module.min_val, max=module.max_val)
        if not isinstance(module, nn.Identity):
            return None
        node = user
    return None
