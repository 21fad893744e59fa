"""Plain-PyTorch oracles for every fused op.

These are the definitions the kernels are tested against, and the fallback
when the compiled extension or Triton is unavailable. They are written for
clarity, not speed: each one materialises exactly what the fused kernels avoid.

This module also owns path_fusion's resampling rule (``resample_mode``), which
the reference, the input validation and the Triton host code all use.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def mixed_sum_ref(weights: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``y = sum_k weights[k] * inputs[k]``."""
    out = weights[0] * inputs[0]
    for k in range(1, len(inputs)):
        out = out + weights[k] * inputs[k]
    return out


# How path_fusion brings an input map to the output size; the numbering is
# what the Triton kernels take as MODE<k> (kernels/path_fusion.py).
IDENTITY, BILINEAR, POOL = 0, 1, 2


def resample_mode(in_hw: Sequence[int], size: Sequence[int], index: int = 0) -> tuple[int, int, int]:
    """path_fusion's resampling rule: ``(mode, kh, kw)`` for bringing
    ``inputs[index]``, an ``in_hw`` map, to ``size``. Identity when equal,
    bilinear up when smaller or equal in both dimensions, average-pool down by
    ``(kh, kw)`` when larger by an integer factor in both; any other ratio
    (mixed up/down, non-integer down) is a ValueError.

    The one statement of the rule in Python (the C++ kernels' copy, with the
    same message, is ``resample_rule`` in csrc/common.h)."""
    h, w = int(in_hw[0]), int(in_hw[1])
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return IDENTITY, 1, 1
    if h <= H and w <= W:
        return BILINEAR, 1, 1
    if h >= H and w >= W and h % H == 0 and w % W == 0:
        return POOL, h // H, w // W
    raise ValueError(
        f"path_fusion: cannot resample inputs[{index}] of size {h}x{w} to {H}x{W}: a path must be smaller in both "
        "dimensions (bilinear up), equal, or larger by an integer factor in both (average-pool down)")


def resample_ref(x: torch.Tensor, size: tuple[int, int], index: int = 0) -> torch.Tensor:
    """Bring ``x`` ([N, C, h, w]), path_fusion's ``inputs[index]``, to ``size``
    as ``resample_mode`` says: identity, bilinear up, or average-pool down."""
    mode, kh, kw = resample_mode(x.shape[-2:], size, index)
    if mode == IDENTITY:
        return x
    if mode == BILINEAR:
        return F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
    return F.avg_pool2d(x, kernel_size=(kh, kw), stride=(kh, kw))


def path_fusion_ref(logits: torch.Tensor, inputs: Sequence[torch.Tensor],
                    size: tuple[int, int], temperature: float = 1.0) -> torch.Tensor:
    """``sum_p softmax(logits / T)_p * resample(inputs[p] -> size)``."""
    w = torch.softmax(logits / temperature, dim=0)
    out = w[0] * resample_ref(inputs[0], size, 0)
    for p in range(1, len(inputs)):
        out = out + w[p] * resample_ref(inputs[p], size, p)
    return out


def channel_shuffle_ref(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def channel_merge_ref(inputs: Sequence[torch.Tensor], groups: int) -> torch.Tensor:
    """``channel_shuffle(cat(inputs, 1), groups)``."""
    return channel_shuffle_ref(torch.cat(list(inputs), 1), groups)
