"""quantize / dequantize / fake_quantize against hand-computed references, for every spec kind."""

import pytest
import torch

from lowbit.errors import SpecError
from lowbit.quant.encoding import Encoding
from lowbit.quant.fake_quant import dequantize, fake_quantize, fake_quantize_dividing, quantize
from lowbit.quant.spec import QuantSpec


def reference(values, lo, hi, bits, symmetric=False, signed=True):
    """(scale, offset, q, dequantized) by the AIMET formulas, in plain Python floats."""
    lo, hi, levels = min(lo, 0.0), max(hi, 0.0), 2**bits
    if symmetric and not signed and lo >= 0:
        scale, offset = hi / (levels - 1), 0
    elif symmetric:
        scale, offset = max(-lo, hi) / (levels // 2 - 1), -(levels // 2)
    else:
        scale = (hi - lo) / (levels - 1)
        offset = round(lo / scale)
    q = [min(max(round(v / scale) - offset, 0), levels - 1) for v in values]
    return scale, offset, q, [(k + offset) * scale for k in q]


def check_against_reference(x, encoding, rows, bits, symmetric=False, signed=True):
    """Each row of ``rows(x)`` (a list of value lists, one per scale) matches :func:`reference`."""
    q, real = quantize(x, encoding), dequantize(quantize(x, encoding), encoding)
    scales, offsets = encoding.scale.reshape(-1), encoding.offset.reshape(-1)
    for index, (values, q_row, real_row) in enumerate(zip(rows(x), rows(q), rows(real))):
        scale, offset, q_ref, real_ref = reference(values, min(values), max(values), bits,
                                                   symmetric, signed)
        assert scales[index].item() == pytest.approx(scale, rel=1e-6)
        assert offsets[index].item() == offset
        assert q_row == q_ref
        assert real_row == pytest.approx(real_ref, rel=1e-5, abs=1e-7)


def test_asymmetric_8bit_per_tensor_by_hand():
    encoding = Encoding.from_range(QuantSpec(8), -1.0, 2.0)
    assert encoding.scale.item() == pytest.approx(3 / 255, rel=1e-7)
    assert encoding.offset.item() == -85
    x = torch.tensor([0.77, 0.0, -1.5, 2.5, -1.0, 2.0])
    # 0.77 / (3/255) = 65.45 -> 65, q = 65 + 85 = 150; out-of-range values clip to q 0 and 255.
    assert quantize(x, encoding).tolist() == [150, 85, 0, 255, 0, 255]
    expected = torch.tensor([65 * 3 / 255, 0.0, -1.0, 2.0, -1.0, 2.0])
    torch.testing.assert_close(dequantize(quantize(x, encoding), encoding), expected)
    assert encoding.min.item() == pytest.approx(-1.0) and encoding.max.item() == pytest.approx(2.0)


def test_symmetric_signed_8bit_by_hand():
    encoding = Encoding.from_range(QuantSpec(8, symmetric=True), -1.0, 2.54)
    assert encoding.scale.item() == pytest.approx(2.54 / 127, rel=1e-7)
    assert encoding.offset.item() == -128
    x = torch.tensor([1.0, -2.6, 3.0, 0.0])
    # 1.0 / 0.02 = 50 -> q 178; -2.6 / 0.02 = -130 -> clipped to q 0 (-2.56); 3.0 -> q 255 (2.54).
    assert quantize(x, encoding).tolist() == [178, 0, 255, 128]
    torch.testing.assert_close(dequantize(quantize(x, encoding), encoding),
                               torch.tensor([1.0, -2.56, 2.54, 0.0]))
    assert encoding.is_signed_symmetric


def test_unsigned_symmetric_on_non_negative_data_by_hand():
    encoding = Encoding.from_range(QuantSpec(8, symmetric=True, signed=False), 0.0, 5.1)
    assert encoding.offset.item() == 0
    assert encoding.scale.item() == pytest.approx(5.1 / 255, rel=1e-7)
    x = torch.tensor([1.013, 0.0, 6.0])
    # 1.013 / 0.02 = 50.65 -> q 51 (1.02); 6.0 clips to q 255 (5.1).
    assert quantize(x, encoding).tolist() == [51, 0, 255]
    torch.testing.assert_close(dequantize(quantize(x, encoding), encoding),
                               torch.tensor([1.02, 0.0, 5.1]))


def test_4bit_by_hand():
    encoding = Encoding.from_range(QuantSpec(4), -1.0, 2.0)
    assert encoding.scale.item() == pytest.approx(0.2) and encoding.offset.item() == -5
    x = torch.tensor([0.33, 2.9, -0.05])
    # 0.33 / 0.2 = 1.65 -> 2, q 7 (0.4); 2.9 clips to q 15 (2.0); -0.05 / 0.2 = -0.25 -> q 5 (0.0).
    assert quantize(x, encoding).tolist() == [7, 15, 5]
    torch.testing.assert_close(dequantize(quantize(x, encoding), encoding),
                               torch.tensor([0.4, 2.0, 0.0]))


def test_16bit_by_hand():
    encoding = Encoding.from_range(QuantSpec(16), -1.0, 2.0)
    assert encoding.scale.item() == pytest.approx(3 / 65535, rel=1e-7)
    assert encoding.offset.item() == -21845
    x = torch.tensor([0.25, 0.0, 5.0])
    # 0.25 · 65535 / 3 = 5461.25 -> 5461, q 27306.
    assert quantize(x, encoding).tolist() == [27306, 21845, 65535]
    torch.testing.assert_close(dequantize(quantize(x, encoding), encoding),
                               torch.tensor([5461 * 3 / 65535, 0.0, 2.0]))


@pytest.mark.parametrize("symmetric", [False, True])
def test_per_channel_axis_0(symmetric):
    torch.manual_seed(0)
    x = torch.randn(3, 7) * torch.tensor([[0.1], [1.0], [5.0]])
    encoding = Encoding.from_range(QuantSpec(8, symmetric, axis=0), x.amin(1), x.amax(1))
    check_against_reference(x, encoding, lambda t: t.tolist(), 8, symmetric)


def test_per_channel_axis_1():
    torch.manual_seed(1)
    x = torch.randn(6, 4) * torch.tensor([0.1, 1.0, 5.0, 0.3]) + torch.tensor([0.0, 1.0, 0.0, -2.0])
    encoding = Encoding.from_range(QuantSpec(8, axis=1), x.amin(0), x.amax(0))
    check_against_reference(x, encoding, lambda t: t.T.tolist(), 8)


def test_per_channel_last_axis_of_4d():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 2, 5) * torch.tensor([0.1, 1.0, 5.0, 0.3, 2.0])
    channels = x.reshape(-1, 5)
    encoding = Encoding.from_range(QuantSpec(4, axis=-1), channels.amin(0), channels.amax(0))
    check_against_reference(x, encoding, lambda t: t.reshape(-1, 5).T.tolist(), 4)


def test_per_block_size_4_on_2x8_weight():
    torch.manual_seed(3)
    weight = torch.randn(2, 8) * torch.tensor([1.0, 1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 4.0])
    blocks = [weight[c, b * 4:(b + 1) * 4].tolist() for c in range(2) for b in range(2)]
    lo = torch.tensor([[min(block) for block in blocks[c * 2:c * 2 + 2]] for c in range(2)])
    hi = torch.tensor([[max(block) for block in blocks[c * 2:c * 2 + 2]] for c in range(2)])
    spec = QuantSpec(4, symmetric=True, axis=0, block_size=4)
    encoding = Encoding.from_range(spec, lo, hi)
    assert encoding.scale.shape == (2, 2)
    check_against_reference(weight, encoding, lambda t: t.reshape(4, 4).tolist(), 4, True)


def test_per_block_size_not_dividing_channel_is_spec_error():
    encoding = Encoding.from_range(QuantSpec(8, axis=0, block_size=3), torch.zeros(2, 2),
                                   torch.ones(2, 2))
    with pytest.raises(SpecError):
        quantize(torch.zeros(2, 8), encoding)


def encodings_for(x):
    """Encodings of ``x``: per-tensor, per-channel (axis 1) and per-block (axis 0, size 4)."""
    blocks = x.reshape(-1, 4)
    return [Encoding.from_range(QuantSpec(8), x.min(), x.max()),
            Encoding.from_range(QuantSpec(4, True), x.min(), x.max()),
            Encoding.from_range(QuantSpec(8, axis=1), x.amin(0), x.amax(0)),
            Encoding.from_range(QuantSpec(8, True, axis=1), x.amin(0), x.amax(0)),
            Encoding.from_range(QuantSpec(4, axis=0, block_size=4), blocks.amin(1), blocks.amax(1))]


@pytest.mark.parametrize("index", range(5))
def test_fake_quantize_equals_dequantize_of_quantize(index):
    torch.manual_seed(4)
    x = torch.randn(16, 8) * 3
    encoding = encodings_for(x)[index]
    torch.testing.assert_close(fake_quantize(x, encoding),
                               dequantize(quantize(x, encoding), encoding), rtol=0, atol=0)
    scale = dequantize(quantize(torch.zeros_like(x), encoding) + 1, encoding)
    ties = (torch.randint(-8, 7, x.shape) + 0.5) * scale
    torch.testing.assert_close(fake_quantize(ties, encoding),
                               dequantize(quantize(ties, encoding), encoding), rtol=0, atol=0)


def straight_through_case(granularity):
    """(x, encoding, inside): values in [-1, 1] are inside every grid, ±(3..4) are clipped."""
    torch.manual_seed(5)
    inside = torch.rand(4, 8) < 0.6
    x = torch.where(inside, torch.rand(4, 8) * 1.8 - 0.9, (torch.rand(4, 8) + 3) * torch.sign(
        torch.randn(4, 8)))
    spec = {"per_tensor": QuantSpec(8), "per_channel": QuantSpec(8, True, axis=0),
            "per_block": QuantSpec(8, axis=0, block_size=4)}[granularity]
    shape = {"per_tensor": (), "per_channel": (4,), "per_block": (4, 2)}[granularity]
    return x, Encoding.from_range(spec, -torch.ones(shape), torch.ones(shape)), inside


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_block"])
def test_straight_through_gradient(granularity):
    x, encoding, inside = straight_through_case(granularity)
    x.requires_grad_(True)
    fake_quantize(x, encoding).sum().backward()
    assert x.grad.tolist() == inside.float().tolist()


@pytest.mark.parametrize("low, high", [(-1.0, 2.0), (-3.3, 0.7), (0.0, 6.0)])
def test_per_tensor_gradient_path_matches_torch_kernel_and_division(low, high):
    """With a gradient, per-tensor fake quantization gives torch's fused kernel's values and
    gradient bit for bit (channels-last input included), and the dividing form gives
    round(x / scale) on the grid, by definition, with the same in-range gradient."""
    torch.manual_seed(7)
    encoding = Encoding.from_range(QuantSpec(8), torch.tensor(low), torch.tensor(high))
    scale, zero_point = encoding.scale.reshape(1), (-encoding.offset).to(torch.int32).reshape(1)
    ties = (torch.randint(-140, 140, (2, 3, 5, 5)) + 0.5) * encoding.scale
    for x in (torch.randn(2, 3, 5, 5) * 4, ties, ties.contiguous(memory_format=torch.channels_last)):
        x = x.clone().requires_grad_(True)
        reference = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
        ours = fake_quantize(x, encoding)
        assert torch.equal(ours, reference)
        assert torch.equal(torch.autograd.grad(ours.sum(), x)[0], torch.autograd.grad(reference.sum(), x)[0])
        grid = torch.round(x.detach() / encoding.scale) - encoding.offset
        dividing = fake_quantize_dividing(x, encoding)
        assert torch.equal(dividing, (grid.clamp(0, 255) + encoding.offset) * encoding.scale)
        inside = ((grid >= 0) & (grid <= 255)).float()
        assert torch.equal(torch.autograd.grad(dividing.sum(), x)[0], inside)


@pytest.mark.parametrize("index", range(5))
def test_zero_maps_to_exactly_zero(index):
    torch.manual_seed(6)
    encoding = encodings_for(torch.randn(16, 8))[index]
    zeros = torch.zeros(16, 8)
    assert torch.equal(fake_quantize(zeros, encoding), zeros)
    assert torch.equal(dequantize(quantize(zeros, encoding), encoding), zeros)


def test_dead_channel_and_all_zero_tensor_give_no_nan():
    weight = torch.randn(3, 5)
    weight[1] = 0.0
    for spec in (QuantSpec(8, axis=0), QuantSpec(8, True, axis=0)):
        encoding = Encoding.from_range(spec, weight.amin(1), weight.amax(1))
        out = fake_quantize(weight, encoding)
        assert torch.isfinite(encoding.scale).all() and torch.isfinite(out).all()
        assert torch.equal(out[1], torch.zeros(5))
    zeros = torch.zeros(4, 4)
    for spec in (QuantSpec(8), QuantSpec(8, True), QuantSpec(8, True, signed=False)):
        encoding = Encoding.from_range(spec, zeros.min(), zeros.max())
        assert torch.equal(fake_quantize(zeros, encoding), zeros)


@pytest.mark.parametrize("value", [0.7, -3.0, 1e-3])
def test_constant_tensor_gives_no_nan(value):
    x = torch.full((4, 4), value)
    for spec in (QuantSpec(8), QuantSpec(8, True), QuantSpec(8, True, signed=False)):
        out = fake_quantize(x, Encoding.from_range(spec, x.min(), x.max()))
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, x, rtol=1e-5, atol=0)


@pytest.mark.parametrize("bits", [1, 17, 0, 8.0])
def test_bad_bitwidth_is_spec_error(bits):
    with pytest.raises(SpecError):
        QuantSpec(bits)


@pytest.mark.parametrize("lo, hi", [(0.5, 2.0), (-3.0, -1.0), (1e-4, 1e4)])
@pytest.mark.parametrize("spec", [QuantSpec(8), QuantSpec(4), QuantSpec(8, True),
                                  QuantSpec(8, True, signed=False)])
def test_range_without_zero_still_represents_zero(lo, hi, spec):
    encoding = Encoding.from_range(spec, lo, hi)
    zero = torch.zeros(1)
    assert dequantize(quantize(zero, encoding), encoding).item() == 0.0
    assert 0 <= encoding.zero_point.item() <= spec.levels - 1
    assert encoding.min.item() <= min(lo, 0.0) * (1 - 1e-6)
    assert encoding.max.item() >= max(hi, 0.0) * (1 - 1e-6)
