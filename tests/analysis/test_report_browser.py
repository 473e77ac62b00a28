"""The analysis report drawn by a real browser: headless Chromium screenshots it, and the plots' colours
must cover the areas their bars take (sensitivity bars, weight ranges, histograms, clipping lines)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

import lowbit
from lowbit.analysis.svg import COLOURS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _pixels(image: np.ndarray, colour: str) -> int:
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image[..., :3].astype(int) - rgb).max(-1) <= 12).sum())


@pytest.fixture(scope="module")
def screenshot(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed here (Debian: apt-get install chromium; .ci/run installs it)")
    from PIL import Image
    from lowbit.zoo.resnet import tiny_resnet
    torch.manual_seed(0)
    data = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    folder = tmp_path_factory.mktemp("browser")
    result = lowbit.analyze(tiny_resnet().eval(), data, example_input=data[0][:1], out_dir=folder)
    shot = folder / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={folder / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1100,4000", result.report_path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return result, np.asarray(Image.open(shot).convert("RGB"))


def test_every_plot_family_drew(screenshot):
    result, image = screenshot
    plotted = result.layers[:12]
    histograms = sum(layer.activation is not None for layer in plotted)
    ranges = sum(layer.weight_ranges is not None for layer in plotted)
    # blue: sensitivity/weight bars and each histogram (at least a 5x40-pixel area of bars per plot)
    assert _pixels(image, COLOURS[0]) >= 200 * (histograms + 1)
    # orange: all-but bars and each weight-range plot
    assert _pixels(image, COLOURS[1]) >= 200 * (ranges + 1)
    # red: two clipping lines of ~120 px per histogram
    assert _pixels(image, "#d62728") >= 150 * histograms


def test_the_page_is_not_blank_top_to_bottom(screenshot):
    _, image = screenshot
    drawn_rows = np.nonzero((image < 200).any(axis=(1, 2)))[0]
    assert drawn_rows.size > 0 and drawn_rows.max() - drawn_rows.min() > 800
