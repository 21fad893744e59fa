"""The candidate operations of a cell edge (DARTS's eight, and the light set's
inverted residuals) and small conv blocks.

``PRIMITIVES`` keeps DARTS's names and order so that genotypes read the same
as in the DARTS papers and code. ``OPS[name](C, affine)`` builds the stride-1
operation on ``C`` channels: in RSPNet every cell keeps its resolution (the
change of scale happens between cells), so there are no reduction variants.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class Zero(nn.Module):
    """The ``none`` operation: a zero map of the input's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class SepConv(nn.Sequential):
    """DARTS's separable convolution: (ReLU, depthwise k×k, pointwise, BN) twice."""

    def __init__(self, C: int, kernel_size: int, padding: int, affine: bool):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(C, C, kernel_size, padding=padding, groups=C, bias=False),
            nn.Conv2d(C, C, 1, bias=False),
            nn.BatchNorm2d(C, affine=affine),
            nn.ReLU(),
            nn.Conv2d(C, C, kernel_size, padding=padding, groups=C, bias=False),
            nn.Conv2d(C, C, 1, bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


class DilConv(nn.Sequential):
    """DARTS's dilated separable convolution: ReLU, dilated depthwise, pointwise, BN."""

    def __init__(self, C: int, kernel_size: int, padding: int, dilation: int, affine: bool):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(C, C, kernel_size, padding=padding, dilation=dilation, groups=C, bias=False),
            nn.Conv2d(C, C, 1, bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2's block at stride 1: 1×1 expansion to ``expand·C`` (BN,
    ReLU), k×k depthwise (BN, ReLU), 1×1 projection back to ``C`` (BN), plus
    the input (the shapes always match on a cell edge)."""

    def __init__(self, C: int, kernel_size: int, expand: int, affine: bool):
        super().__init__()
        hidden = C * expand
        self.body = nn.Sequential(
            nn.Conv2d(C, hidden, 1, bias=False), nn.BatchNorm2d(hidden, affine=affine), nn.ReLU(),
            nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden, affine=affine), nn.ReLU(),
            nn.Conv2d(hidden, C, 1, bias=False), nn.BatchNorm2d(C, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


OPS = {
    "none": lambda C, affine: Zero(),
    "max_pool_3x3": lambda C, affine: nn.MaxPool2d(3, stride=1, padding=1),
    "avg_pool_3x3": lambda C, affine: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    "skip_connect": lambda C, affine: nn.Identity(),
    "sep_conv_3x3": lambda C, affine: SepConv(C, 3, 1, affine),
    "sep_conv_5x5": lambda C, affine: SepConv(C, 5, 2, affine),
    "dil_conv_3x3": lambda C, affine: DilConv(C, 3, 2, 2, affine),
    "dil_conv_5x5": lambda C, affine: DilConv(C, 5, 4, 2, affine),
    "mbconv_3x3_e3": lambda C, affine: InvertedResidual(C, 3, 3, affine),
    "mbconv_3x3_e6": lambda C, affine: InvertedResidual(C, 3, 6, affine),
    "mbconv_5x5_e3": lambda C, affine: InvertedResidual(C, 5, 3, affine),
    "mbconv_5x5_e6": lambda C, affine: InvertedResidual(C, 5, 6, affine),
}


class ConvBNReLU(nn.Sequential):
    """Conv (no bias, 'same' padding), BN, ReLU: the stem, the stride-2 links of
    the single-path network and the head."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int = 3, stride: int = 1,
                 affine: bool = True):
        super().__init__(
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
            nn.ReLU(),
        )


class ReLUConvBN(nn.Sequential):
    """ReLU, 1×1 conv, BN: DARTS's preprocessing block (used by the PAM's paths)."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )
