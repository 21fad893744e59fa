"""Segmentation head: last-layer maps → class scores at input size."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .primitives import ConvBNReLU
from .recompute import Recomputable, check_memory_mode, checkpoint, upsampled_cross_entropy


def _upsampled(features: Sequence[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    return [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in features]


class _UpsampleConcatConv(torch.autograd.Function):
    """``conv(cat(upsample(features), 1))`` one image at a time, keeping only
    the features: the head's concatenation at 1/4 resolution (and the
    convolution's workspace for it) never exists for more than one image.
    Backward rebuilds each image's concatenation, takes the convolution's
    gradients (``aten.convolution_backward``) and sends the input gradient back
    through the upsampling. The convolution has no bias."""

    @staticmethod
    def forward(ctx, conv, size, weight, *features):
        n = features[0].shape[0]
        out = None
        for b in range(n):
            x = torch.cat(_upsampled([f[b:b + 1] for f in features], size), 1)
            y = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
            if out is None:
                out = y.new_empty((n,) + y.shape[1:])
            out[b:b + 1] = y
            del x, y
        ctx.save_for_backward(weight, *features)
        ctx.conv, ctx.size = conv, size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weight, *features = ctx.saved_tensors
        conv = ctx.conv
        need_w, need_f = ctx.needs_input_grad[2], ctx.needs_input_grad[3:]
        dw = torch.zeros_like(weight) if need_w else None
        df = [torch.empty_like(f) if need else None for f, need in zip(features, need_f)]
        for b in range(grad.shape[0]):
            with torch.enable_grad():
                parts = [f[b:b + 1].detach().requires_grad_(need) for f, need in zip(features, need_f)]
                x = torch.cat(_upsampled(parts, ctx.size), 1)
            # in the gradient's dtype: the forward's convolution may have run under autocast
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad[b:b + 1], x.detach().to(grad.dtype), weight.to(grad.dtype), None, conv.stride,
                conv.padding, conv.dilation, False, [0] * len(conv.stride), conv.groups,
                [any(need_f), need_w, False])
            if need_w:
                dw += gw
            if any(need_f):
                wanted = [i for i, need in enumerate(need_f) if need]
                grads = torch.autograd.grad(x, [parts[i] for i in wanted], gx.to(x.dtype))
                for i, g in zip(wanted, grads):
                    df[i][b:b + 1] = g
            del x, gx, gw
        return (None, None, dw, *df)


class Head(Recomputable, nn.Module):
    """Upsample every map to 1/4 of the input, concatenate, 3×3 conv + BN +
    ReLU, 1×1 classifier, bilinear upsampling to the input size.

    ``memory="recompute"`` (search supernets) keeps only the input maps for
    backward: the 1/4-resolution part runs again in backward, and
    :meth:`loss` fuses the final upsampling with the cross-entropy
    (``upsampled_cross_entropy``). ``store`` (default) is the plain network.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int,
                 memory: str = "store"):
        super().__init__()
        self.memory = check_memory_mode(memory, "Head")
        self.fuse = ConvBNReLU(sum(in_channels), channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def _recomputed_scores(self, size: tuple[int, int], *features: torch.Tensor) -> torch.Tensor:
        conv, bn, relu = self.fuse
        y = _UpsampleConcatConv.apply(conv, size, conv.weight, *features)
        if conv.bias is not None:   # a BatchNorm folded into the conv (rspnet.models.fold)
            y = y + conv.bias.view(1, -1, 1, 1)
        return self.classifier(relu(bn(y)))

    def scores(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Class scores (pre-softmax) at 1/4 of ``image_size``."""
        size = (image_size[0] // 4, image_size[1] // 4)
        if self.memory == "recompute":
            return checkpoint(self._recomputed_scores, size, *features, modules=(self,))
        return self.classifier(self.fuse(torch.cat(_upsampled(features, size), 1)))

    def forward(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        scores = self.scores(features, image_size)
        return F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=False)

    def loss(self, features: Sequence[torch.Tensor], labels: torch.Tensor,
             ignore_index: int = -100) -> torch.Tensor:
        """Mean cross-entropy of ``self(features, labels' size)`` against ``labels``."""
        image_size = tuple(labels.shape[-2:])
        if self.memory == "recompute":
            return upsampled_cross_entropy(self.scores(features, image_size), labels, ignore_index)
        return F.cross_entropy(self(features, image_size), labels, ignore_index=ignore_index)
