"""BatchNorm folding, the first step of the inference form
(``rspnet.models.inference``): every eval-mode BatchNorm that directly
follows a convolution is merged into that convolution.

In eval mode a ``BatchNorm2d`` is the per-channel affine map
``y = (x - mean) * gamma / sqrt(var + eps) + beta`` (``gamma = 1``, ``beta =
0`` without affine parameters, as in the DARTS operations). After a
convolution ``x = w * input + b`` it is a convolution again, with

    w' = w * gamma / sqrt(var + eps)                 (per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

so the BatchNorm becomes ``nn.Identity``. Only a ``Conv2d`` immediately
followed by a ``BatchNorm2d`` in the same ``nn.Sequential`` is folded: there
the convolution's output reaches nothing but the BatchNorm. A BatchNorm after
a ReLU, a pooling, a sum or a concatenation is left (folding it into the
*next* convolution would be wrong at zero-padded borders), and so is one
without running statistics (it normalises with the batch's even in eval mode).
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["fold_conv_batchnorms"]


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


def fold_conv_batchnorms(model: nn.Module) -> tuple[int, int]:
    """In place, on an eval-mode ``model``: every ``BatchNorm2d`` that directly
    follows a ``Conv2d`` in an ``nn.Sequential`` merged into it and replaced by
    ``nn.Identity``. Returns how many were folded and how many ``BatchNorm2d``
    are left in ``model``."""
    folded = 0
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for previous, name in zip(names, names[1:]):
            conv, bn = module._modules[previous], module._modules[name]
            if _foldable(conv, bn):
                _fold_into(conv, bn)
                module._modules[name] = nn.Identity()
                folded += 1
    left = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return folded, left
