"""Plain-PyTorch oracles for every fused op.

These are the definitions the kernels are tested against, and the fallback
when the compiled extension or Triton is unavailable. They are written for
clarity, not speed: each one materialises exactly what the fused kernels avoid.
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


def resample_ref(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring ``x`` ([N, C, h, w]) to ``size``: identity, bilinear up, or
    average-pool down by an integer factor (the PAM resampling rule)."""
    h, w = x.shape[-2:]
    oh, ow = int(size[0]), int(size[1])
    if (h, w) == (oh, ow):
        return x
    if h <= oh and w <= ow:
        return F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)
    if h >= oh and w >= ow and h % oh == 0 and w % ow == 0:
        return F.avg_pool2d(x, kernel_size=(h // oh, w // ow), stride=(h // oh, w // ow))
    raise ValueError(
        f"path_fusion: cannot resample a {h}x{w} map to {oh}x{ow}: a path must be "
        "smaller in both dimensions (bilinear up), equal, or larger by an integer "
        "factor in both (average-pool down)")


def path_fusion_ref(logits: torch.Tensor, inputs: Sequence[torch.Tensor],
                    size: tuple[int, int], temperature: float = 1.0) -> torch.Tensor:
    """``sum_p softmax(logits / T)_p * resample(inputs[p] -> size)``."""
    w = torch.softmax(logits / temperature, dim=0)
    out = w[0] * resample_ref(inputs[0], size)
    for p in range(1, len(inputs)):
        out = out + w[p] * resample_ref(inputs[p], size)
    return out


def channel_shuffle_ref(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def channel_merge_ref(inputs: Sequence[torch.Tensor], groups: int) -> torch.Tensor:
    """``channel_shuffle(cat(inputs, 1), groups)``."""
    return channel_shuffle_ref(torch.cat(list(inputs), 1), groups)
