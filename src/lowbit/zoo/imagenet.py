"""torchvision's standard ImageNet eval transform (resize 256, center crop 224, normalise) without torchvision."""

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def imagenet_preprocess(img: Image.Image, size: int | tuple[int, int] = 224, mean: Sequence[float] = MEAN,
                        std: Sequence[float] = STD) -> torch.Tensor:
    """Resize the shorter side to max(H, W)/0.875 (bilinear), center crop H x W (``size`` is H x W, or
    one number for a square), normalise: [3, H, W]."""
    img = img.convert("RGB")
    height, width = (size, size) if isinstance(size, int) else size
    short = round(max(height, width) / 0.875)
    portrait = img.width <= img.height
    new = (short, int(short * img.height / img.width)) if portrait else (int(short * img.width / img.height), short)
    img = img.resize(new, Image.Resampling.BILINEAR)
    left = int(round((img.width - width) / 2.0))
    top = int(round((img.height - height) / 2.0))
    img = img.crop((left, top, left + width, top + height))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def photos_to_batch(images: Sequence[Image.Image], size: int = 224, mean: Sequence[float] = MEAN,
                    std: Sequence[float] = STD) -> torch.Tensor:
    """Preprocess PIL images and stack them into a float32 batch [N, 3, size, size]."""
    return torch.stack([imagenet_preprocess(img, size, mean, std) for img in images])

