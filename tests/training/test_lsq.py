"""Learned ranges: the scale and zero-point gradients are LSQ's (Esser et al. 2020; LSQ+), checked
against the definition and, where rounding cannot move (every value clipped), finite differences; and
trained scales reduce the quantization error to near the grid-search optimum."""

from __future__ import annotations

import math

import torch

from lowbit.quant.encoding import Encoding
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.spec import QuantSpec


def _learning_quantizer(spec: QuantSpec, scale: float, offset: int) -> Quantizer:
    quantizer = Quantizer(spec)
    quantizer.encoding = Encoding(spec, torch.tensor([scale]), torch.tensor([offset]))
    quantizer.mode = "quantize"
    return quantizer.learn_ranges()


def _lsq_gradients(x, upstream, scale, zero_point, top):
    """d(Σ upstream · q(x))/d(scale, zero point) by the definition: round has gradient 1 inside the grid, and
    a clipped value is (bound − zero point) · scale; both scaled by 1 / sqrt(numel · top)."""
    factor = 1 / math.sqrt(x.numel() * top)
    grid = torch.round(x / scale + zero_point)
    inside = (grid >= 0) & (grid <= top)
    d_scale = torch.where(inside, grid - zero_point - x / scale, grid.clamp(0, top) - zero_point)
    d_zero_point = torch.where(inside, torch.zeros_like(x), torch.full_like(x, -scale))
    return float((upstream * d_scale).sum() * factor), float((upstream * d_zero_point).sum() * factor)


def test_scale_and_zero_point_gradients_are_lsqs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=generator) * 2
    upstream = torch.randn(4096, generator=generator)
    spec = QuantSpec(bits=4, symmetric=False)
    quantizer = _learning_quantizer(spec, 0.25, -7)
    (upstream * quantizer(x)).sum().backward()
    expected_scale, expected_zero_point = _lsq_gradients(x, upstream, 0.25, 7.0, 15)
    torch.testing.assert_close(float(quantizer.learned_scale.grad), expected_scale, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(float(quantizer.learned_zero_point.grad), expected_zero_point, rtol=1e-4, atol=1e-5)


def test_clipped_values_have_the_finite_difference_gradient():
    generator = torch.Generator().manual_seed(1)
    x = torch.cat([torch.rand(500, generator=generator) + 5, -torch.rand(500, generator=generator) - 5])
    upstream = torch.randn(1000, generator=generator)
    spec = QuantSpec(bits=8, symmetric=True)
    quantizer = _learning_quantizer(spec, 0.01, -128)  # range ±1.28: every value clipped
    (upstream * quantizer(x)).sum().backward()
    loss = lambda s: float((upstream * (torch.round(x / s + 128).clamp(0, 255) - 128) * s).sum())
    step = 1e-6
    finite_difference = (loss(0.01 + step) - loss(0.01 - step)) / (2 * step)
    factor = 1 / math.sqrt(x.numel() * 255)
    torch.testing.assert_close(float(quantizer.learned_scale.grad) / factor, finite_difference, rtol=1e-3, atol=1e-3)


def test_trained_scale_reaches_the_grid_search_optimum():
    """4-bit symmetric quantization of Gaussian values: min-max's scale clips nothing and wastes the grid;
    LSQ training lowers the error to within 5 % of the best scale found by scanning."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1 << 14, generator=generator)
    spec = QuantSpec(bits=4, symmetric=True)
    error = lambda s: float(((torch.round(x / s).clamp(-8, 7) * s) - x).pow(2).mean())
    start = float(x.abs().max()) / 8
    quantizer = _learning_quantizer(spec, start, -8)
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=start * 1e-2)
    for _ in range(300):
        loss = (quantizer(x) - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    best = min(error(s) for s in torch.linspace(start / 10, start, 2000).tolist())
    learned = error(float(quantizer.encoding.scale))
    assert error(start) > 1.5 * best
    assert learned <= 1.05 * best, (learned, best, error(start))


def test_per_tensor_gradients_equal_torchs_learnable_kernel_on_a_large_activation():
    """The sim's per-tensor backward (a few elementwise passes and a sum) against torch's fused learnable kernel: the
    same output and input gradient bit for bit, the same scale and zero-point gradients to float rounding."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 32, 56, 56, generator=generator).mul(2).add(1)
    upstream = torch.randn(x.shape, generator=generator)
    quantizer = _learning_quantizer(QuantSpec(bits=8, symmetric=False), 0.02, -100)
    x_ours = x.clone().requires_grad_()
    ours = quantizer(x_ours)
    ours.backward(upstream)
    x_torch = x.clone().requires_grad_()
    scale, zero_point = torch.tensor([0.02], requires_grad=True), torch.tensor([100.0], requires_grad=True)
    reference = torch._fake_quantize_learnable_per_tensor_affine(x_torch, scale, zero_point, 0, 255,
                                                                 1 / math.sqrt(x.numel() * 255))
    reference.backward(upstream)
    assert torch.equal(ours, reference) and torch.equal(x_ours.grad, x_torch.grad)
    torch.testing.assert_close(quantizer.learned_scale.grad, scale.grad, rtol=1e-4, atol=0)
    torch.testing.assert_close(quantizer.learned_zero_point.grad, zero_point.grad, rtol=1e-4, atol=0)


def test_fixed_range_training_computes_torchs_fake_quantization():
    """A quantizer that does not learn its range trains through the same kernel: values and input gradient equal
    torch's fused fake quantization, bit for bit."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(8, 32, 56, 56, generator=generator).mul(3)
    upstream = torch.randn(x.shape, generator=generator)
    spec = QuantSpec(bits=8, symmetric=True)
    quantizer = _learning_quantizer(spec, 0.03, -128).learn_ranges(False)
    x_ours, x_torch = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = quantizer(x_ours)
    ours.backward(upstream)
    reference = torch.fake_quantize_per_tensor_affine(x_torch, 0.03, 128, 0, 255)
    reference.backward(upstream)
    assert not quantizer.learning and torch.equal(ours, reference) and torch.equal(x_ours.grad, x_torch.grad)


def test_training_survives_an_in_place_operation_on_a_quantizers_output():
    """Models add in place (``out += identity``) after a quantized layer: the backward keeps only the input."""
    quantizer = _learning_quantizer(QuantSpec(bits=8, symmetric=False), 0.05, -128)
    x = torch.linspace(-8, 8, 1000, requires_grad=True)
    output = quantizer(x)
    output += 1.0
    output.sum().backward()
    expected_scale, _ = _lsq_gradients(x.detach(), torch.ones(1000), 0.05, 128.0, 255)
    torch.testing.assert_close(float(quantizer.learned_scale.grad), expected_scale, rtol=1e-4, atol=1e-6)
