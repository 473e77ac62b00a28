"""imagenet_preprocess: output shape and normalisation checked by hand on a constant-colour image."""

import torch
from PIL import Image

from lowbit.zoo import imagenet_preprocess, photos_to_batch


def test_constant_colour_is_normalised():
    rgb = (200, 100, 30)
    x = imagenet_preprocess(Image.new("RGB", (300, 500), rgb))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip(rgb, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    torch.testing.assert_close(x.mean(dim=(1, 2)), torch.tensor(expected), rtol=0, atol=1e-5)
    assert x.std(dim=(1, 2)).max() < 1e-5


def test_greyscale_and_batch():
    batch = photos_to_batch([Image.new("L", (640, 480), 128), Image.new("RGB", (224, 224))])
    assert batch.shape == (2, 3, 224, 224)
