"""Stand-ins for the torchvision.ops names aimet_torch refers to (custom RoIAlign/NMS modules, ONNX maps)."""

import torch

from . import unavailable

roi_align = unavailable("ops.roi_align")
nms = unavailable("ops.nms")


class RoIPool(torch.nn.Module):
    """Placeholder type: no model here holds one."""
