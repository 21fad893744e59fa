"""Segmentation heads: last-layer maps → class scores at input size.

Two designs, named in the architecture file's ``widths.head``:

* ``concat`` (``Head``): every map upsampled to 1/4 of the input,
  concatenated, a 3×3 conv over all of their channels. Its cost grows with the
  sum of the maps' channels at 1/4 resolution: at F = 16..20 it is the largest
  single piece of a derived network (half its FLOPs, more of its CPU latency).
* ``light`` (``LightHead``): every map brought to the head's width by a 1×1
  conv at its *own* resolution (the 1×1 conv commutes with the linear
  resampling, as in the Path-Attention Module), averaged at 1/4 by
  ``rspnet.ops.path_fusion`` without materialising the resampled maps, one
  3×3 conv at the head's width, and a global-context gate (a sigmoid of a 1×1
  conv of the coarsest map's global average, as in LR-ASPP): a channel
  attention that sees the whole image, which per-pixel features of a small
  network cannot.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from rspnet.architecture import HEAD_KINDS
from rspnet.ops import path_fusion

from .primitives import ConvBNReLU, ReLUConvBN
from .recompute import Recomputable, check_memory_mode, checkpoint, labelled_cross_entropy, upsampled_cross_entropy


def _upsampled(features: Sequence[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    return [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in features]


def upsample_scores(scores: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """A head's last step: bilinear upsampling of its scores to the image size."""
    return F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=False)


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


class SegmentationHead(Recomputable, nn.Module):
    """What every head shares: ``forward`` (class scores at the image size,
    ``upsample_scores`` of the subclass's ``scores`` at 1/4 of the image) and
    ``loss``."""

    def scores(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Class scores (pre-softmax) at 1/4 of ``image_size``: what each head defines."""
        raise NotImplementedError(f"{type(self).__name__} must define scores()")

    def forward(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        return upsample_scores(self.scores(features, image_size), image_size)

    def loss(self, features: Sequence[torch.Tensor], labels: torch.Tensor,
             ignore_index: int = -100, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy of ``self(features, labels' size)`` against
        ``labels`` over the labelled pixels (``labelled_cross_entropy``;
        ``weight``: per class, the weighted mean)."""
        image_size = tuple(labels.shape[-2:])
        if self.memory == "recompute":
            return upsampled_cross_entropy(self.scores(features, image_size), labels, ignore_index, weight)
        return labelled_cross_entropy(self(features, image_size), labels, ignore_index, weight)


class Head(SegmentationHead):
    """The ``concat`` head. Upsample every map to 1/4 of the input, concatenate, 3×3 conv + BN +
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


class LightHead(SegmentationHead):
    """The ``light`` head: per map ReLU, 1×1 conv and BN to ``channels`` at the
    map's own resolution; their mean at 1/4 of the input (``path_fusion``);
    ReLU, 3×3 conv + BN + ReLU; multiplied per channel by
    ``sigmoid(conv1x1(mean(relu(coarsest map))))``; 1×1 classifier; bilinear
    upsampling to the input size.

    ``memory="recompute"`` keeps only the input maps for backward (the
    1/4-resolution part runs again), and :meth:`loss` fuses the final
    upsampling with the cross-entropy, as for ``Head``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int,
                 memory: str = "store"):
        super().__init__()
        if not in_channels:
            raise ValueError("LightHead: needs at least one input map")
        self.memory = check_memory_mode(memory, "LightHead")
        self.projections = nn.ModuleList(ReLUConvBN(c, channels) for c in in_channels)
        self.refine = ConvBNReLU(channels, channels, 3)
        self.context = nn.Conv2d(in_channels[-1], channels, 1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        # path_fusion weighs by softmax(logits): zeros give the mean
        self.register_buffer("fusion_logits", torch.zeros(len(in_channels)), persistent=False)

    def _scores(self, size: tuple[int, int], *features: torch.Tensor) -> torch.Tensor:
        if len(features) != len(self.projections):
            raise ValueError(f"LightHead: built for {len(self.projections)} maps, got {len(features)}")
        paths = [p(f) for p, f in zip(self.projections, features)]
        fused = path_fusion(self.fusion_logits.to(paths[0].dtype), paths, size)
        y = self.refine(F.relu(fused))
        coarsest = F.relu(features[-1]).mean((2, 3), keepdim=True)
        gate = torch.sigmoid(self.context(coarsest.to(y.dtype)))
        return self.classifier(y * gate)

    def scores(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Class scores (pre-softmax) at 1/4 of ``image_size``."""
        size = (image_size[0] // 4, image_size[1] // 4)
        if self.memory == "recompute":
            return checkpoint(self._scores, size, *features, modules=(self,))
        return self._scores(size, *features)


HEADS = {"concat": Head, "light": LightHead}
assert tuple(HEADS) == HEAD_KINDS


def make_head(kind: str, in_channels: Sequence[int], num_classes: int, channels: int,
              memory: str = "store") -> SegmentationHead:
    """The head named ``kind`` (a key of ``HEADS``)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}: expected one of {', '.join(HEADS)}")
    return HEADS[kind](in_channels, num_classes, channels, memory=memory)
