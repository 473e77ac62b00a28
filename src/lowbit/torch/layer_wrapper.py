"""Base of the modules that wrap one layer: attributes they lack come from the wrapped layer."""

from __future__ import annotations

from torch import nn


class LayerWrapper(nn.Module):
    """Holds ``layer``; reads of attributes the wrapper lacks (weight, in_features ...) reach the layer,
    so code that inspects the model (Hugging Face's, for one) still works on the sim."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)
