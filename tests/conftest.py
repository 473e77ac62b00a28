"""Fixtures shared by every front end's tests: the real MobileNetV2, real photos, its cpu-int8 export."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.zoo import augmented, calibration_photos, labelled_photos, photos_to_batch, pretrained_mobilenet_v2

torch.set_num_threads(2)

CALIBRATION_IMAGES = 32
EVAL_BATCH = 25


@pytest.fixture(scope="session")
def mobilenet():
    """Pretrained MobileNetV2 in eval mode (never modified by tests: they deep-copy it)."""
    return pretrained_mobilenet_v2()


@pytest.fixture(scope="session")
def calibration_batches():
    """32 augmented crops of scikit-image's photographs, in two batches of 16."""
    photos = [img for img, _ in calibration_photos()]
    batch = photos_to_batch(augmented(photos, CALIBRATION_IMAGES, seed=1))
    return [batch[:16], batch[16:]]


@pytest.fixture(scope="session")
def eval_batches():
    """The 20 labelled ImageNet photos plus 80 augmented crops of them: 100 images, batches of 25."""
    photos = [img for img, _, _ in labelled_photos()]
    images = photos + augmented(photos, 80, seed=7)
    batch = photos_to_batch(images)
    return [batch[i:i + EVAL_BATCH] for i in range(0, len(batch), EVAL_BATCH)]


@pytest.fixture(scope="session")
def mobilenet_sim(mobilenet, calibration_batches):
    """MobileNetV2 quantized for cpu-int8 on 32 calibration photos."""
    return lowbit.quantize(mobilenet, calibration_batches, example_input=calibration_batches[0][:1],
                           target="cpu-int8")


@pytest.fixture(scope="session")
def mobilenet_export(mobilenet_sim, tmp_path_factory):
    """The three files of the MobileNetV2 sim's export."""
    return mobilenet_sim.export(tmp_path_factory.mktemp("mobilenet_export"), name="mobilenet_v2")
