"""The peers rspnet's fused ops are measured against, and the device's copy ceiling.

A peer is what a user would write with plain PyTorch instead of calling
``rspnet.ops``; each is given here once so that every benchmark runs the same
definitions beside rspnet's ops, in the same process (figures are ratios from
one run). The DARTS-cell peers (eager cell, checkpoint per edge, PC-DARTS
partial channels) are larger and live in ``cell_workload.py``.

* weighted sum of K maps (a DARTS mixed edge): ``sum_k w_k x_k`` written as
  a Python sum of products (eager), as ``einsum`` over ``torch.stack`` of the
  maps, and the Python sum under ``torch.compile``;
* PAM path fusion: ``sum_p w_p resample_p(x_p)`` with ``w = softmax(logits)``,
  ``F.interpolate(bilinear, align_corners=False)`` for the smaller paths and
  ``F.avg_pool2d`` for larger ones, eager and compiled;
* RSP channel merge: ``channel_shuffle(cat(xs, 1), groups)``, eager and
  compiled;
* the copy ceiling: a device-to-device ``copy_`` of 1 GiB, read + write bytes
  per second -- the most a memory-bound op can reach.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_sum_eager(w: torch.Tensor, *xs: torch.Tensor) -> torch.Tensor:
    return sum(wi * xi for wi, xi in zip(w, xs))


def weighted_sum_stacked(w: torch.Tensor, *xs: torch.Tensor) -> torch.Tensor:
    return torch.einsum("k,k...->...", w.to(xs[0].dtype), torch.stack(xs))


def path_fusion_eager(logits: torch.Tensor, *fs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b = F.softmax(logits, 0).to(fs[0].dtype)
    y = None
    for bi, f in zip(b, fs):
        if tuple(f.shape[2:]) == tuple(size):
            r = f
        elif f.shape[2] <= size[0] and f.shape[3] <= size[1]:
            r = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        else:
            r = F.avg_pool2d(f, (f.shape[2] // size[0], f.shape[3] // size[1]))
        y = bi * r if y is None else y + bi * r
    return y


def channel_merge_eager(*xs: torch.Tensor, groups: int) -> torch.Tensor:
    x = torch.cat(xs, 1)
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def compiled(fn):
    """``fn`` under ``torch.compile`` (default mode), as a user would write it."""
    return torch.compile(fn)
