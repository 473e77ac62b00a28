"""Stand-ins for the torchvision.transforms names aimet_torch refers to."""

import torch

from . import unavailable

Compose = unavailable("transforms.Compose")
ToTensor = unavailable("transforms.ToTensor")


class Resize(torch.nn.Module):
    """Placeholder type: no model here holds one."""
