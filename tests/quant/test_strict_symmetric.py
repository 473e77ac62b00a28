"""Strict symmetric grids (a target's strict_symmetric): the most negative level is dropped (−127..127 at 8 bits) in
every fake-quantization path, torch's fused kernels and the vectorised ones, with gradients zero beyond it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.errors import SpecError
from lowbit.quant.encoding import Encoding
from lowbit.quant.fake_quant import fake_quantize, fake_quantize_dividing, quantize
from lowbit.quant.spec import QuantSpec


def _values(scale: float) -> torch.Tensor:
    steps = torch.tensor([-131.0, -128.0, -127.6, -127.4, -3.2, 0.0, 5.5, 127.4, 127.6, 130.0])
    return steps * scale


def _expected(x: torch.Tensor, scale: float) -> np.ndarray:
    """By definition: round half to even of x / s, clipped to −127..127, times s."""
    return np.clip(np.rint(x.numpy() / np.float32(scale)), -127, 127) * np.float32(scale)


@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("grad", [False, True])
def test_strict_grids_stop_at_minus_127(axis, grad):
    scale = 0.02
    spec = QuantSpec(8, symmetric=True, strict=True, axis=axis)
    x = _values(scale).reshape(-1, 1) if axis == 0 else _values(scale)
    scales = torch.full((x.shape[0],), scale) if axis == 0 else torch.tensor(scale)
    offsets = torch.full((x.shape[0],), -128) if axis == 0 else torch.tensor(-128)
    encoding = Encoding.from_scale_offset(spec, scales, offsets)
    x = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y = fake_quantize(x, encoding)
    np.testing.assert_allclose(y.detach().numpy().reshape(-1), _expected(x.detach().reshape(-1), scale), rtol=1e-6)
    assert int(quantize(x.detach(), encoding).min()) == 1  # grid index 1 of 0..255: the level −127
    if grad:
        y.sum().backward()
        inside = (x.detach().reshape(-1) / scale >= -127.5) & (x.detach().reshape(-1) / scale <= 127.5)
        np.testing.assert_array_equal(x.grad.reshape(-1).numpy(), inside.float().numpy())


def test_dividing_path_and_a_full_grid_for_comparison():
    scale = 0.02
    x = _values(scale)
    strict = Encoding.from_scale_offset(QuantSpec(8, symmetric=True, strict=True), torch.tensor(scale), -128)
    full = Encoding.from_scale_offset(QuantSpec(8, symmetric=True), torch.tensor(scale), -128)
    np.testing.assert_allclose(fake_quantize_dividing(x, strict).numpy(), _expected(x, scale), rtol=1e-6)
    assert float(fake_quantize(x, full).min()) == pytest.approx(-128 * scale)  # the full grid keeps −128


def test_a_strict_grid_needs_a_symmetric_signed_spec():
    with pytest.raises(SpecError, match="strict symmetric grid needs a symmetric, signed spec"):
        QuantSpec(8, symmetric=False, strict=True)
