"""Real photographs shipped inside installed wheels: labelled (foolbox) and unlabelled (scikit-learn, matplotlib)
evaluation photos, and calibration photos (scikit-image); the sets never overlap."""

import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from lowbit.errors import DataError
from lowbit.zoo._packages import package_dir

_LABELLED = re.compile(r"imagenet_\d+_(\d+)\.jpg")

# scikit-image's photographs (colour and greyscale); its synthetic images (chessboard, phantom, logo, ...) are left out
CALIBRATION_FILES = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
    "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png", "coins.png", "moon.png", "brick.png",
    "grass.png", "gravel.png", "page.png",
)


def _data_dir(package: str, install: str) -> Path:
    """Return `<package>/data` of an installed package, or raise DataError saying how to install it."""
    folder = package_dir(package)
    if folder is None or not (folder / "data").is_dir():
        raise DataError(f"photos need the {package} package; run: {install}")
    return folder / "data"


def _read_rgb(path: Path) -> Image.Image:
    """Read an image file fully and convert it to RGB."""
    with Image.open(path) as img:
        return img.convert("RGB")


def labelled_photos() -> list[tuple[Image.Image, int, str]]:
    """Return foolbox's 20 ImageNet photos as (RGB image, ImageNet class index, name)."""
    folder = _data_dir("foolbox", "pip install --no-deps foolbox==3.3.4")
    matches = [_LABELLED.fullmatch(p.name) for p in sorted(folder.glob("imagenet_*.jpg"))]
    photos = [(_read_rgb(folder / m.group(0)), int(m.group(1)), Path(m.group(0)).stem) for m in matches if m]
    if not photos:
        raise DataError(f"no imagenet_XX_LABEL.jpg photos in {folder}")
    return photos


def calibration_photos() -> list[tuple[Image.Image, str]]:
    """Return scikit-image's photographs as (RGB image, name); greyscale ones are converted to RGB."""
    folder = _data_dir("skimage", "pip install scikit-image")
    missing = [f for f in CALIBRATION_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(f"scikit-image in {folder} lacks photos {missing}")
    return [(_read_rgb(folder / f), Path(f).stem) for f in CALIBRATION_FILES]


# (package, folder inside it, install hint, photographs): the sample photos of other wheels; their
# charts, logos and clip-art (matplotlib's gift box) are left out
HELD_OUT_FILES = (
    ("sklearn", "datasets/images", "pip install scikit-learn", ("china.jpg", "flower.jpg")),
    ("matplotlib", "mpl-data/sample_data", "pip install matplotlib", ("grace_hopper.jpg",)),
)


def held_out_photos() -> list[tuple[Image.Image, str]]:
    """Return the photographs shipped in scikit-learn and matplotlib as (RGB image, name)."""
    photos = []
    for package, sub, install, files in HELD_OUT_FILES:
        folder = package_dir(package)
        if folder is None or not all((folder / sub / f).is_file() for f in files):
            raise DataError(f"held-out photos need the {package} package's sample images; run: {install}")
        photos += [(_read_rgb(folder / sub / f), Path(f).stem) for f in files]
    return photos


def _random_crop(img: Image.Image, gen: torch.Generator) -> Image.Image:
    """Crop 30-100% of the area with aspect ratio in [3/4, 4/3], then flip left-right half the time."""
    u = torch.rand(5, generator=gen).tolist()
    area = img.width * img.height * (0.3 + 0.7 * u[0])
    ratio = math.exp(math.log(3 / 4) + u[1] * math.log(16 / 9))
    w = min(img.width, round(math.sqrt(area * ratio)))
    h = min(img.height, round(math.sqrt(area / ratio)))
    left = int(u[2] * (img.width - w + 1))
    top = int(u[3] * (img.height - h + 1))
    crop = img.crop((left, top, left + w, top + h))
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if u[4] < 0.5 else crop


def augmented(photos: Sequence[Image.Image], count: int, seed: int = 0) -> list[Image.Image]:
    """Return `count` random crops/flips cycling over `photos`; the same seed gives the same images."""
    if not photos or count < 1:
        raise DataError(f"augmented needs at least one photo and count >= 1, got {len(photos)} photos, count {count}")
    gen = torch.Generator().manual_seed(seed)
    return [_random_crop(photos[i % len(photos)], gen) for i in range(count)]
