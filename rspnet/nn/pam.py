"""Path-Attention Module: fuse the maps arriving at a trellis node.

Each incoming path is first brought to the node's channels by ReLU, 1×1 conv
and BN at the path's own resolution (cheaper than after resampling, and the
1×1 conv commutes with the linear resampling), then ``rspnet.ops.path_fusion``
resamples every path to the node's size and sums them weighted by
``softmax(logits)`` without materialising the resampled maps.

``pool_first`` changes the order for a path into a *coarser* node: ReLU,
average pooling to the node's size, then the 1×1 conv and BN. In eval mode
it is the same function (the 1×1 conv and BN's affine map are per pixel, so
they commute with the pooling), but the conv runs on 4^d times fewer pixels
for a path d scales down: projecting at the source's resolution makes a
path from 1/4 into a 1/32 node (F channels in, 8F out) cost 64 times what it
would after pooling, and such paths were two thirds of a derived network's
FLOPs. In training BN then normalises the pooled map, so every path reaches
the fusion at unit scale (the imbalance ``normalize`` corrects, below, for
the other order).

The logits are the node's architecture parameters β during the search and the
logarithms of the fixed path weights in a derived network; the module does
not own them, so that architecture parameters stay apart from weights.

``normalize`` (a search option) divides each projected path by the root mean
square it will have *after* resampling, measured on the batch without
gradient: average pooling by a factor f shrinks a unit-variance map (to ~0.4
for f = 8), bilinear upsampling smooths it a little, so without it β weighs a
node's same-scale path against quieter resampled ones and compares
resolutions as much as what the paths carry.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from rspnet.ops import path_fusion
from rspnet.ops.reference import POOL, resample_mode, resample_ref

from .primitives import ReLUConvBN


def strided_mean(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """``F.avg_pool2d(x, (kh, kw))`` for maps whose height and width are
    multiples of the kernel: the sum of the ``kh`` row-strided views, then of
    the ``kw`` column-strided views of that, times ``1 / (kh * kw)``. The same
    numbers summed in another order (equal to fp rounding); PyTorch's CPU
    average pooling ran 4-8 times slower at one thread (1.9 against 0.2-0.4 ms
    for 32 channels at 128×256)."""
    rows = x[..., 0::kh, :]
    for a in range(1, kh):
        rows = rows + x[..., a::kh, :]
    out = rows[..., 0::kw]
    for c in range(1, kw):
        out = out + rows[..., c::kw]
    # a fresh tensor as soon as one sum ran: scaled in place
    return out.mul_(1.0 / (kh * kw)) if kh * kw > 1 else out.clone()


class PathAttention(nn.Module):
    """Args:
        in_channels: channels of each incoming path, in the order of ``forward``'s inputs.
        out_channels: the node's channels.
        affine: BN affine parameters (False during the search, as for the cell:
            an affine scale per path could undo what β learns).
        normalize: divide each path by its RMS after resampling (a search option).
        pool_first: pool paths into a coarser node before projecting them.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, affine: bool = True,
                 normalize: bool = False, pool_first: bool = False):
        super().__init__()
        self.normalize, self.pool_first = normalize, pool_first
        # inference form (rspnet.models.simplify.strided_pools): pool-first
        # paths average with strided sums instead of F.avg_pool2d
        self.strided_pool = False
        self.projections = nn.ModuleList(ReLUConvBN(c, out_channels, affine) for c in in_channels)

    def forward(self, inputs: Sequence[torch.Tensor], logits: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        if len(inputs) != len(self.projections) or logits.shape != (len(inputs),):
            raise ValueError(f"PathAttention: {len(self.projections)} paths, got "
                             f"{len(inputs)} inputs and logits of shape {tuple(logits.shape)}")
        paths = [self._project(p, x, size) for p, x in zip(self.projections, inputs)]
        if self.normalize:
            with torch.no_grad():
                rms = [resample_ref(x, tuple(size)).pow(2).mean().sqrt().clamp_min(1e-6) for x in paths]
            paths = [x / r for x, r in zip(paths, rms)]
        return path_fusion(logits, paths, size)

    def _project(self, projection: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.pool_first:
            mode, kh, kw = resample_mode(x.shape[-2:], size)
            if mode == POOL:
                relu, conv, bn = projection
                x = relu(x)
                pooled = strided_mean(x, kh, kw) if self.strided_pool else resample_ref(x, tuple(size))
                return bn(conv(pooled))
        return projection(x)

    def extra_repr(self) -> str:
        return "pool_first=True" if self.pool_first else ""
