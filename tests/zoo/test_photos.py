"""Demo photos: real, non-empty, calibration and evaluation sets disjoint, augmentation deterministic."""

import numpy as np
import pytest
from PIL import Image

from lowbit.errors import DataError
from lowbit.zoo import augmented, calibration_photos, held_out_photos, labelled_photos


def test_labelled_photos():
    photos = labelled_photos()
    assert len(photos) == 20
    for img, label, name in photos:
        assert img.mode == "RGB" and 0 <= label < 1000
        assert name.startswith("imagenet_") and name.endswith(f"_{label}")


def test_calibration_photos_are_rgb():
    photos = calibration_photos()
    assert len(photos) >= 15
    assert all(img.mode == "RGB" and min(img.size) >= 100 for img, _ in photos)


def test_held_out_photos_are_rgb_photographs():
    photos = held_out_photos()
    assert [n for _, n in photos] == ["china", "flower", "grace_hopper"]
    assert all(img.mode == "RGB" and min(img.size) >= 400 for img, _ in photos)


def test_calibration_and_evaluation_disjoint():
    calibration = calibration_photos()
    evaluation = [(img, -1, n) for img, n in held_out_photos()] + labelled_photos()
    assert not {n for _, n in calibration} & {n for _, _, n in evaluation}
    for img, _, _ in evaluation:
        for other, _ in calibration:
            assert img.size != other.size or not np.array_equal(np.asarray(img), np.asarray(other))


def test_augmented_is_deterministic():
    images = [img for img, _ in calibration_photos()]
    first, again, other = augmented(images, 20, seed=3), augmented(images, 20, seed=3), augmented(images, 20, seed=4)
    assert len(first) == 20 and all(isinstance(img, Image.Image) for img in first)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    assert any(a.size != b.size or not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, other))


def test_augmented_rejects_empty_input():
    with pytest.raises(DataError):
        augmented([], 4)
