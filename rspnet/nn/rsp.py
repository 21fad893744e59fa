"""Recursive Stage Partial block, after CSPNet.

``rsp(x, depth)`` splits the channels into ``x_a`` (a fraction ``rsp_ratio``)
and ``x_b``; ``x_a`` goes through ``rsp(., depth - 1)``, ``rsp(., 0)`` being the
inner module (the cell), and the result is merged with ``x_b`` by concatenation
and a channel shuffle with two groups, so that the half that bypassed this
stage is processed by the next one. Only ``rsp_ratio ** depth`` of the channels
ever reach the cell, which is what makes search and network light.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from rspnet.architecture import partial_channels
from rspnet.ops import channel_merge


class RSPBlock(nn.Module):
    """Args:
        channels: input and output channels (even, for the two-group shuffle).
        inner_factory: ``inner_factory(c)`` builds the module applied to the
            innermost ``c`` partial channels; it must keep the channel count.
        rsp_ratio: fraction of the channels that take the partial branch.
        depth: how many times the split is applied (1 = CSP).

    Extra ``forward`` arguments are handed to the inner module (a search cell
    takes its architecture weights this way).
    """

    def __init__(self, channels: int, inner_factory: Callable[[int], nn.Module],
                 rsp_ratio: float = 0.5, depth: int = 1):
        super().__init__()
        if depth < 1:
            raise ValueError(f"RSPBlock: depth must be >= 1, got {depth}")
        self.split = partial_channels(channels, rsp_ratio)
        self.inner = (inner_factory(self.split) if depth == 1
                      else RSPBlock(self.split, inner_factory, rsp_ratio, depth - 1))

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        # slicing keeps both halves as views of x: no copy before the merge
        x_a, x_b = x[:, :self.split], x[:, self.split:]
        return channel_merge([self.inner(x_a, *args), x_b], groups=2)
