"""Activations fused after an integer kernel, skipped when they cannot change the kernel's output."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.quant.quantizer import Quantizer


class _SkipsOnGrid:
    """Mixin for an element-wise activation module: on a tensor that was computed on the grid of one
    of its linked quantizers (an integer kernel's output, no gradient), forward returns that tensor
    itself when the activation is the identity on every value of that grid (checked exhaustively, once
    per encoding), which saves a full pass, and lets the quantizer that follows recognise the tensor.

    Exact wherever the module is called: the check covers every tensor on the grid, signed zero included.
    """

    def link_grid_quantizer(self, quantizer: Quantizer) -> None:
        """Skip on tensors on ``quantizer``'s grid (held by reference) when that is exact."""
        linked = self.__dict__.get("_grid_quantizers", ())
        if not any(q is quantizer for q in linked):
            object.__setattr__(self, "_grid_quantizers", linked + (quantizer,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linked = self.__dict__.get("_grid_quantizers", ())
        if linked and not torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export() \
                and not torch.jit.is_tracing():
            for quantizer in linked:
                if quantizer.mode == "quantize" and quantizer._is_on_grid(x) and self._identity_on_grid(quantizer):
                    return x
        return super().forward(x)

    def _identity_on_grid(self, quantizer: Quantizer) -> bool:
        key = (id(quantizer.scale), quantizer.scale._version, id(quantizer.offset), quantizer.offset._version,
               quantizer.spec, self.training, self.extra_repr())
        # (quantizer, key, answer, the key's tensors, held so that their ids stay unique)
        cache = self.__dict__.get("_grid_identity_cache", ())
        for entry in cache:
            if entry[0] is quantizer and entry[1] == key:
                return entry[2]
        entry = (quantizer, key, self._check_identity(quantizer), (quantizer.scale, quantizer.offset))
        object.__setattr__(self, "_grid_identity_cache",
                           tuple(e for e in cache if e[0] is not quantizer) + (entry,))
        return entry[2]

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


SKIPPING = {nn.ReLU: ReLU, nn.ReLU6: ReLU6, nn.Hardtanh: Hardtanh}
"""Activation module types (exact types) → their skipping subclasses."""


def link_grid_follower(activation: nn.Module, quantizer: Quantizer) -> bool:
    """Make ``activation`` (an exact nn.ReLU, nn.ReLU6 or nn.Hardtanh, or one already made so) skip
    itself on ``quantizer``'s grid when that is exact; False when it is of another type."""
    if isinstance(activation, _SkipsOnGrid):
        activation.link_grid_quantizer(quantizer)
        return True
    skipping = SKIPPING.get(type(activation))
    if skipping is None:
        return False
    activation.__class__ = skipping
    activation.link_grid_quantizer(quantizer)
    return True
