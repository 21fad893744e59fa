"""Segmentation heads: last-layer maps → class scores at input size.

Three designs, named in the architecture file's ``widths.head``:

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
* ``detail`` (``DetailHead``): the ``light`` head, whose refined and gated
  1/4-scale map is upsampled to 1/2 and added to a 1×1 projection of the
  stem's first (1/2-scale) map before the classifier, so the scores are at
  1/2 of the input: a pole a few pixels wide is less than one pixel at 1/4,
  and a head that classifies there cannot draw it. It reads the stem's 1/2
  map as its first input (``reads_stem``; ``Stem(keep_half=True)``).
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
    ``upsample_scores`` of the subclass's ``scores`` at 1/4 of the image, 1/2
    for ``DetailHead``) and ``loss``. ``reads_stem``: the head's first input
    is the stem's 1/2-scale map (then the last layer's maps)."""

    reads_stem = False

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

    def _gated(self, size: tuple[int, int], features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The refined, context-gated map at ``size`` (1/4 of the image)."""
        if len(features) != len(self.projections):
            raise ValueError(f"{type(self).__name__}: built for {len(self.projections)} maps, "
                             f"got {len(features)}")
        paths = [p(f) for p, f in zip(self.projections, features)]
        fused = path_fusion(self.fusion_logits.to(paths[0].dtype), paths, size)
        y = self.refine(F.relu(fused))
        coarsest = F.relu(features[-1]).mean((2, 3), keepdim=True)
        gate = torch.sigmoid(self.context(coarsest.to(y.dtype)))
        return y * gate

    def _scores(self, size: tuple[int, int], *features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._gated(size, features))

    def scores(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Class scores (pre-softmax) at 1/4 of ``image_size``."""
        size = (image_size[0] // 4, image_size[1] // 4)
        if self.memory == "recompute":
            return checkpoint(self._scores, size, *features, modules=(self,))
        return self._scores(size, *features)


class DetailHead(LightHead):
    """The ``detail`` head: ``LightHead`` up to its gated 1/4-scale map, which
    is upsampled (bilinear) to the stem's 1/2-scale map and added to that map
    through ReLU, 1×1 conv and BN to ``channels``; ReLU, 1×1 classifier at
    1/2, bilinear upsampling to the input size. ``in_channels``: the stem's
    channels, then the last layer's maps' (its inputs in that order).

    ``scores`` are at the size of the stem's map (``features[0]``). Per
    pixel of the input it adds ``(c_stem + classes) * channels / 4``
    multiply-adds to the light head's (the classifier moves from 1/4 to 1/2).
    """

    reads_stem = True

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int,
                 memory: str = "store"):
        if len(in_channels) < 2:
            raise ValueError("DetailHead: needs the stem's channels and at least one input map")
        super().__init__(in_channels[1:], num_classes, channels, memory=memory)
        self.detail = ReLUConvBN(in_channels[0], channels)

    def _scores(self, size: tuple[int, int], half: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        y = self._gated(size, features)
        y = F.interpolate(y, size=half.shape[-2:], mode="bilinear", align_corners=False) + self.detail(half)
        return self.classifier(F.relu(y))


HEADS = {"concat": Head, "light": LightHead, "detail": DetailHead}
assert tuple(HEADS) == HEAD_KINDS


def head_reads_stem(kind: str) -> bool:
    """Whether the head named ``kind`` reads the stem's 1/2-scale map first."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}: expected one of {', '.join(HEADS)}")
    return HEADS[kind].reads_stem


def make_head(kind: str, in_channels: Sequence[int], num_classes: int, channels: int,
              memory: str = "store", stem_channels: int | None = None) -> SegmentationHead:
    """The head named ``kind`` (a key of ``HEADS``) over maps of
    ``in_channels``; a head that ``reads_stem`` also over the stem's 1/2-scale
    map of ``stem_channels`` (its first input)."""
    if head_reads_stem(kind):
        if stem_channels is None:
            raise ValueError(f"head {kind!r} reads the stem's 1/2-scale map: give stem_channels")
        in_channels = [stem_channels, *in_channels]
    return HEADS[kind](in_channels, num_classes, channels, memory=memory)
