"""Activations fused after an integer kernel, skipped when they cannot change the kernel's output."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.quant.quantizer import Quantizer, fast_path_allowed


class _SkipsOnGrid:
    """Mixin for an element-wise activation: returns its input itself when it lies on a linked quantizer's grid
    and the activation is the identity on every value of that grid (checked exhaustively once per encoding)."""

    grid_quantizers: tuple = ()

    def link_grid_quantizer(self, quantizer: Quantizer) -> None:
        """Skip on tensors on ``quantizer``'s grid (held by reference, not as a submodule) when that is exact."""
        if not any(q is quantizer for q in self.grid_quantizers):
            self.grid_quantizers = self.grid_quantizers + (quantizer,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linked = self.grid_quantizers
        if linked and not torch.is_grad_enabled() and fast_path_allowed():
            for quantizer in linked:
                if quantizer.mode == "quantize" and quantizer._is_on_grid(x) and self._identity_on_grid(quantizer):
                    return x
        return super().forward(x)

    def _identity_on_grid(self, quantizer: Quantizer) -> bool:
        state = (quantizer.scale._version, quantizer.offset._version, quantizer.spec, self.training, self.extra_repr())
        # (quantizer, its scale and offset tensors, their state, answer): tensors compared by identity
        cache = self.__dict__.get("_grid_identity_cache", ())
        for entry in cache:
            if (entry[0] is quantizer and entry[1][0] is quantizer.scale and entry[1][1] is quantizer.offset
                    and entry[2] == state):
                return entry[3]
        entry = (quantizer, (quantizer.scale, quantizer.offset), state, self._check_identity(quantizer))
        self._grid_identity_cache = tuple(e for e in cache if e[0] is not quantizer) + (entry,)
        return entry[3]

    def _check_identity(self, quantizer: Quantizer) -> bool:
        encoding = quantizer.encoding
        if (encoding is None or encoding.spec.axis is not None or encoding.spec.block_size is not None
                or encoding.scale.numel() != 1):
            return False
        scale = encoding.scale.reshape(())
        low = int(encoding.offset.reshape(()))
        centred = torch.arange(low, low + encoding.spec.levels, dtype=torch.float32, device=scale.device)
        # the signed zero too (a rounded small negative accumulator)
        centred = torch.cat([centred, torch.tensor([-0.0], device=scale.device)])
        values = centred * scale
        with torch.no_grad():
            return torch.equal(super().forward(values.clone()), values)


class ReLU(_SkipsOnGrid, nn.ReLU):
    """nn.ReLU that skips itself on grids it cannot change (see :class:`_SkipsOnGrid`)."""


class ReLU6(_SkipsOnGrid, nn.ReLU6):
    """nn.ReLU6 that skips itself on grids it cannot change (see :class:`_SkipsOnGrid`)."""


class Hardtanh(_SkipsOnGrid, nn.Hardtanh):
    """nn.Hardtanh that skips itself on grids it cannot change (see :class:`_SkipsOnGrid`)."""


_SKIPPING_COPIES = {  # by exact type (ReLU6 subclasses Hardtanh): a new skipping module computing the same
    nn.ReLU: lambda a: ReLU(a.inplace),
    nn.ReLU6: lambda a: ReLU6(a.inplace),
    nn.Hardtanh: lambda a: Hardtanh(a.min_val, a.max_val, a.inplace),
}


def link_grid_follower(gm: nn.Module, path: str, quantizer: Quantizer) -> bool:
    """Let the activation at ``path`` in ``gm`` skip itself on ``quantizer``'s grid when exact, replacing a plain
    ReLU, ReLU6 or Hardtanh by its skipping copy. False when the module is of another type."""
    activation = gm.get_submodule(path)
    if not isinstance(activation, _SkipsOnGrid):
        copy = _SKIPPING_COPIES.get(type(activation))
        if copy is None:
            return False
        activation = copy(activation).train(activation.training)
        gm.set_submodule(path, activation)
    activation.link_grid_quantizer(quantizer)
    return True
