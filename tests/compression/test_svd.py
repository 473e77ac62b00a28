"""Low-rank replacements: a layer whose weight has rank r is reproduced exactly at rank r (strides, dilations,
padding, bias kept), a lower rank is the best approximation the SVD promises, and bad layers are one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.compression import spatial_svd, weight_svd
from lowbit.errors import SpecError




@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, (2, 1), 1), ((1, 2), 0, (2, 1)), (1, "same", 1)])
def test_spatial_svd_of_a_spatially_rank_r_kernel_is_exact(stride, padding, dilation):
    generator = torch.Generator().manual_seed(0)
    layer = nn.Conv2d(6, 10, (3, 5), stride, padding, dilation)
    rank = 4
    # W[o, i, y, x] = Σ_r a[r, i, y] · b[r, o, x]: rank 4 as an (i, y) × (o, x) matrix
    a, b = torch.randn(rank, 6, 3, generator=generator), torch.randn(rank, 10, 5, generator=generator)
    with torch.no_grad():
        layer.weight.copy_(torch.einsum("riy,rox->oiyx", a, b))
    x = torch.randn(2, 6, 17, 19, generator=generator)
    pair = spatial_svd(layer, rank)
    assert [tuple(m.kernel_size) for m in pair] == [(3, 1), (1, 5)] and pair[0].out_channels == rank
    torch.testing.assert_close(pair(x), layer(x), rtol=1e-4, atol=1e-4)


def test_weight_svd_of_a_rank_r_conv_and_linear_is_exact():
    generator = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1)
    linear = nn.Linear(20, 9)
    with torch.no_grad():
        conv.weight.copy_((torch.randn(12, 3, generator=generator) @ torch.randn(3, 72, generator=generator))
                          .reshape(12, 8, 3, 3))
        linear.weight.copy_(torch.randn(9, 3, generator=generator) @ torch.randn(3, 20, generator=generator))
    x, v = torch.randn(2, 8, 15, 15, generator=generator), torch.randn(4, 20, generator=generator)
    torch.testing.assert_close(weight_svd(conv, 3)(x), conv(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(weight_svd(linear, 3)(v), linear(v), rtol=1e-4, atol=1e-4)


def test_a_lower_rank_leaves_the_error_of_the_discarded_singular_values():
    """Eckart–Young: the rank-r weight's Frobenius error is the root of the discarded singular values' squares."""
    generator = torch.Generator().manual_seed(2)
    layer = nn.Linear(16, 12)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(12, 16, generator=generator))
    pair = weight_svd(layer, 5)
    product = pair[1].weight @ pair[0].weight
    singular = torch.linalg.svdvals(layer.weight.detach().double())
    error = torch.linalg.norm((product - layer.weight).double())
    torch.testing.assert_close(error, singular[5:].pow(2).sum().sqrt(), rtol=1e-5, atol=1e-6)


def test_layers_a_replacement_cannot_keep_are_one_line():
    class OwnPadding(nn.Conv2d):
        def forward(self, x):
            return self._conv_forward(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias)

    with pytest.raises(SpecError, match="OwnPadding"):
        spatial_svd(OwnPadding(3, 4, 2), 1)
    with pytest.raises(SpecError, match="one group"):
        weight_svd(nn.Conv2d(4, 4, 3, groups=4), 1)
    with pytest.raises(SpecError, match="'same' padding of a \\(2, 2\\) kernel is uneven"):
        spatial_svd(nn.Conv2d(3, 4, 2, padding="same"), 1)
    with pytest.raises(SpecError, match="rank of at least 1"):
        weight_svd(nn.Linear(3, 4), 0)
    with pytest.raises(SpecError, match="above the layer's full rank 3"):
        weight_svd(nn.Linear(3, 4), 4)
