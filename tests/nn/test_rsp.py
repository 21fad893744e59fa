import pytest
import torch
import torch.nn as nn

from rspnet.nn import RSPBlock


def _shuffle2(t):
    """channel shuffle with two groups, written out: out[2i] = t[i], out[2i+1] = t[C/2 + i]."""
    half = t.shape[1] // 2
    order = [j for i in range(half) for j in (i, half + i)]
    return t[:, order]


class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.w = nn.Parameter(torch.arange(1.0, c + 1).double())

    def forward(self, x, factor=1.0):
        assert x.shape[1] == self.c
        return x * self.w[:, None, None] * factor


def test_depth_one_is_csp():
    block = RSPBlock(8, Scale)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    expected = _shuffle2(torch.cat([block.inner(x[:, :4]), x[:, 4:]], 1))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


def test_depth_two_recurses_on_the_partial_branch_and_passes_arguments():
    block = RSPBlock(8, Scale, depth=2)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    inner = block.inner.inner
    assert inner.c == 2
    partial = _shuffle2(torch.cat([inner(x[:, :2], 3.0), x[:, 2:4]], 1))
    expected = _shuffle2(torch.cat([partial, x[:, 4:]], 1))
    torch.testing.assert_close(block(x, 3.0), expected, rtol=0, atol=0)


def test_ratio_and_gradients():
    block = RSPBlock(8, Scale, rsp_ratio=0.25)
    assert block.split == 2
    x = torch.randn(1, 8, 2, 2, dtype=torch.float64, requires_grad=True)
    block(x).sum().backward()
    torch.testing.assert_close(x.grad[0, :2, 0, 0], torch.tensor([1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(x.grad[0, 2:, 0, 0], torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("channels, ratio, depth", [(7, 0.5, 1), (8, 0.0, 1), (8, 0.5, 0), (6, 0.5, 2)])
def test_impossible_splits_raise(channels, ratio, depth):
    with pytest.raises(ValueError):
        RSPBlock(channels, Scale, ratio, depth)
