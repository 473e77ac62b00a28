"""Run a block with a model in eval mode, each module's own mode restored after."""

import contextlib

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Every module of ``model`` in eval mode inside the block; afterwards each module is back in its own mode."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
