"""Path-Attention Module: fuse the maps arriving at a trellis node.

Each incoming path is first brought to the node's channels by ReLU, 1×1 conv
and BN at the path's own resolution (cheaper than after resampling, and the
1×1 conv commutes with the linear resampling), then ``rspnet.ops.path_fusion``
resamples every path to the node's size and sums them weighted by
``softmax(logits)`` without materialising the resampled maps.

``pool_first``: a path into a *coarser* node is ReLU, average pooling to the
node's size, then the 1×1 conv and BN — in eval mode the same function (the
conv and BN's affine map are per pixel), on 4^d times fewer pixels for a path
d scales down (such paths were two thirds of a derived network's FLOPs). In
training BN then normalises the pooled map, so every path reaches the fusion
at unit scale.

The logits are the node's architecture parameters β during the search and the
logarithms of the fixed path weights in a derived network; the module does
not own them, so that architecture parameters stay apart from weights.

``normalize`` (a search option) divides each projected path by the root mean
square it will have *after* resampling, measured on the batch without
gradient: pooling shrinks a unit-variance map (to ~0.4 for a factor 8), so
without it β would compare resolutions as much as what the paths carry.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from rspnet.ops import path_fusion
from rspnet.ops.reference import POOL, resample_mode, resample_ref

from .primitives import ReLUConvBN


def fuse_paths(paths: Sequence[torch.Tensor], logits: torch.Tensor, size: tuple[int, int],
               normalize: bool = False) -> torch.Tensor:
    """``path_fusion`` of the projected paths, each first divided by its RMS
    after resampling when ``normalize`` (the training form and the inference
    form of a PAM fuse the same way)."""
    if normalize:
        with torch.no_grad():
            rms = [resample_ref(x, tuple(size)).pow(2).mean().sqrt().clamp_min(1e-6) for x in paths]
        paths = [x / r for x, r in zip(paths, rms)]
    return path_fusion(logits, paths, size)


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
        self.projections = nn.ModuleList(ReLUConvBN(c, out_channels, affine) for c in in_channels)

    def forward(self, inputs: Sequence[torch.Tensor], logits: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        if len(inputs) != len(self.projections) or logits.shape != (len(inputs),):
            raise ValueError(f"PathAttention: {len(self.projections)} paths, got "
                             f"{len(inputs)} inputs and logits of shape {tuple(logits.shape)}")
        return fuse_paths([self._project(p, x, size) for p, x in zip(self.projections, inputs)], logits, size,
                          self.normalize)

    def _project(self, projection: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.pool_first:
            mode, _, _ = resample_mode(x.shape[-2:], size)
            if mode == POOL:
                relu, conv, bn = projection
                return bn(conv(resample_ref(relu(x), tuple(size))))
        return projection(x)

    def extra_repr(self) -> str:
        return "pool_first=True" if self.pool_first else ""
