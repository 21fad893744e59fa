"""BatchNorm folding: an inference copy of a network in which every BatchNorm
that directly follows a convolution is merged into that convolution.

In eval mode a ``BatchNorm2d`` is a per-channel affine map with its running
statistics, ``y = (x - mean) * gamma / sqrt(var + eps) + beta`` (``gamma = 1``
and ``beta = 0`` when it has no affine parameters, as in the DARTS
operations). Applied to the output of a convolution ``x = w * input + b`` it
gives a convolution again, with

    w' = w * gamma / sqrt(var + eps)                 (per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

so the BatchNorm is replaced by ``nn.Identity`` and costs nothing at run time.
Only a ``Conv2d`` immediately followed by a ``BatchNorm2d`` in the same
``nn.Sequential`` is folded: there the convolution's output reaches nothing
but the BatchNorm. A BatchNorm after a ReLU, a pooling, a sum or a
concatenation (the search cell's ``skip_connect`` BN, for one) is left as it
is: no convolution's weights can absorb it exactly (folding it into the
*next* convolution would be wrong at zero-padded borders). A BatchNorm without
running statistics (``track_running_stats=False``) normalises with the batch's
statistics even in eval mode and is left too.

After the BatchNorms, every ``DerivedCell`` is replaced by its
``FoldedCell`` (``rspnet.models.simplify``): the cell states that are scalar
multiples of the cell's input (``skip_connect`` chains) are merged into the
projection's weights, so their concatenation and sums are never computed;
the trellis's ReLUs are shared, its RSP blocks skip their channel shuffle
(the readers' weights carry it), the stem runs channels-last, pool-first paths
pool with strided sums and the head upsamples channels-last (the rest of the
inference form, ``rspnet.models.simplify``).
``cells=False`` leaves all of that out (BatchNorm folding alone).

The folded copy is for inference only (eval mode; training it would train a
different network).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from .simplify import (channels_last_upsampling, fold_cells, share_relus, stem_channels_last, strided_pools,
                       unshuffle_merges)

__all__ = ["fold_batchnorm", "FoldCount"]


@dataclass(frozen=True)
class FoldCount:
    """How many ``BatchNorm2d`` modules were folded into a convolution and
    how many were left in the network; ``cells``: how many derived cells had
    linear states merged into their projection."""
    folded: int
    left: int
    cells: int = 0

    def __str__(self) -> str:
        text = f"{self.folded} BatchNorm folded, {self.left} left"
        if self.cells:
            text += f", linear states of {self.cells} cell{'s' if self.cells != 1 else ''} merged"
        return text


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            and bn.running_mean is not None and bn.running_var is not None
            and conv.out_channels == bn.num_features)


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Merge eval-mode ``bn`` into ``conv``'s weight and bias (computed in
    float64, stored in the convolution's dtype)."""
    w = conv.weight
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    # Conv2d weights are [out, in / groups, kh, kw] whatever the groups: the
    # output channel is always the first dimension
    conv.weight = nn.Parameter((w.double() * scale.view(-1, 1, 1, 1)).to(w.dtype),
                               requires_grad=w.requires_grad)
    conv.bias = nn.Parameter(bias.to(w.dtype), requires_grad=w.requires_grad)


def fold_batchnorm(model: nn.Module, inplace: bool = False, cells: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` (``model`` itself with ``inplace``)
    with every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an
    ``nn.Sequential`` folded into it and replaced by ``nn.Identity``, then,
    with ``cells``, every ``DerivedCell`` replaced by its ``FoldedCell``
    (a ``DerivedCell`` given as ``model`` is returned as a ``FoldedCell``),
    the trellis paths' ReLUs shared and the layout and kernel choices of
    ``rspnet.models.simplify`` made.

    Its outputs equal the eval-mode original's up to fp32 rounding (a
    network's output is channels-last: the head's final upsampling writes it
    so). The
    counts are on the returned model as ``bn_folding`` (a ``FoldCount``:
    BatchNorms folded here, those left because no convolution directly
    precedes them or they have no running statistics, and the cells whose
    linear states were merged)."""
    folded = model if inplace else copy.deepcopy(model)
    folded.eval()
    count = 0
    for module in list(folded.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for previous, name in zip(names, names[1:]):
            conv, bn = module._modules[previous], module._modules[name]
            if _foldable(conv, bn):
                _fold_into(conv, bn)
                module._modules[name] = nn.Identity()
                count += 1
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    simplified = 0
    if cells:
        folded, simplified = fold_cells(folded, inplace=True)
        share_relus(folded)
        unshuffle_merges(folded)
        stem_channels_last(folded)
        strided_pools(folded)
        channels_last_upsampling(folded)
    folded.bn_folding = FoldCount(folded=count, left=left, cells=simplified)
    return folded
