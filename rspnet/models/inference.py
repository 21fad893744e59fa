"""The inference form of a network: ``inference_form(model)`` is an eval-mode
copy that gives ``model``'s eval-mode outputs to fp32 rounding, faster, built
of inference-only modules from the trained modules' weights (the training
blocks of ``rspnet.nn`` are left as they are). In order:

1. BatchNorms folded into the convolutions before them (``rspnet.models.fold``).
2. Every ``DerivedCell`` replaced by its ``FoldedCell`` (``rspnet.models.simplify``).
3. In a network of a ``Stem`` and a ``TrellisBackbone`` (RSPNet, the macro
   supernet) the trellis becomes an ``InferenceTrellis``: each node but the
   last layer's is rectified once and the path projections lose their ReLUs
   (relu∘relu = relu; the stem ends in a ReLU); pool-first paths average by
   strided sums. With a ``Head`` or ``LightHead``, each depth-1 RSP block
   becomes an ``UnshuffledRSPBlock``: the channel shuffle's permutation moves
   into the input channels of the convolutions that read the node, which
   is exact because every reader (the next layer's paths, the head) starts
   with per-channel operations (ReLU, pooling, a global mean).
4. Every ``Stem`` runs on a channels-last copy of the image (``ChannelsLast``)
   and every segmentation head upsamples channels-last (``InferenceHead``):
   the network's output is then a channels-last tensor.

Each rewrite computes the same numbers; why each pays, with the timings, is
docs/design.md §15. What was done is the network's ``inference_report``.
These modules write in place when no graph is recorded: inference only.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn as nn

from rspnet.nn.pam import fuse_paths
from rspnet.nn import (STEM, Head, LightHead, PathAttention, RSPBlock, SegmentationHead, Stem, TrellisBackbone,
                       upsample_scores)
from rspnet.ops.reference import POOL, resample_mode

from .fold import fold_conv_batchnorms
from .simplify import AvgPool3x3, MaxPool3x3, fold_cells

__all__ = ["ChannelsLast", "FoldCount", "InferenceFormReport", "InferenceHead", "InferencePathAttention",
           "InferenceTrellis", "UnshuffledRSPBlock", "inference_form", "fold_batchnorm", "shuffle_permutation",
           "strided_mean"]


@dataclass(frozen=True)
class InferenceFormReport:
    """What ``inference_form`` did: BatchNorms folded and left (no convolution
    directly before them, or no running statistics), derived cells whose
    linear states were merged, 3×3 max and average poolings made separable, path ReLUs
    dropped for a node rectified once, RSP blocks whose shuffle moved into
    the readers' weights, pool-first paths averaged by strided sums, stems
    run channels-last, heads upsampling channels-last."""
    batchnorms_folded: int
    batchnorms_left: int
    cells_merged: int = 0
    max_pools_separable: int = 0
    avg_pools_separable: int = 0
    relus_shared: int = 0
    shuffles_moved: int = 0
    pools_strided: int = 0
    stems_channels_last: int = 0
    heads_channels_last: int = 0

    # the fields of FoldCount, this report's name before issue 19
    folded = property(lambda self: self.batchnorms_folded)
    left = property(lambda self: self.batchnorms_left)
    cells = property(lambda self: self.cells_merged)

    def __str__(self) -> str:
        text = f"{self.batchnorms_folded} BatchNorm folded, {self.batchnorms_left} left"
        if self.cells_merged:
            text += f", linear states of {self.cells_merged} cell{'s' if self.cells_merged != 1 else ''} merged"
        rest = [(f.name, getattr(self, f.name)) for f in fields(self)[3:]]
        return text + "".join(f", {name.replace('_', ' ')}: {n}" for name, n in rest if n)


FoldCount = InferenceFormReport   # the name before issue 19


def strided_mean(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """``F.avg_pool2d(x, (kh, kw))`` for maps whose height and width are
    multiples of the kernel: the sum of the ``kh`` row-strided views, then of
    the ``kw`` column-strided views of that, times ``1 / (kh * kw)`` (the same
    numbers summed in another order; several times faster on CPU)."""
    rows = x[..., 0::kh, :]
    for a in range(1, kh):
        rows = rows + x[..., a::kh, :]
    out = rows[..., 0::kw]
    for c in range(1, kw):
        out = out + rows[..., c::kw]
    # a fresh tensor as soon as one sum ran: scaled in place
    return out.mul_(1.0 / (kh * kw)) if kh * kw > 1 else out.clone()


class InferencePathAttention(nn.Module):
    """``pam`` (a ``PathAttention``) on inputs that are rectified already: its
    path projections without their leading ReLU, and a pool-first path into a
    coarser node averaged by ``strided_mean``."""

    def __init__(self, pam: PathAttention):
        super().__init__()
        self.pool_first, self.normalize = pam.pool_first, pam.normalize
        projections = []
        for projection in pam.projections:
            relu, *rest = projection
            if not isinstance(relu, nn.ReLU):
                raise ValueError(f"InferencePathAttention: a path projection must start with a ReLU, got {relu}")
            projections.append(nn.Sequential(*(m for m in rest if not isinstance(m, nn.Identity))))
        self.projections = nn.ModuleList(projections)
        self.out_channels = projections[0][0].out_channels

    def forward(self, inputs: Sequence[torch.Tensor], logits: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
        return fuse_paths([self._project(p, x, size) for p, x in zip(self.projections, inputs, strict=True)],
                          logits, size, self.normalize)

    def _project(self, projection: nn.Module, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.pool_first:
            mode, kh, kw = resample_mode(x.shape[-2:], size)
            if mode == POOL:
                x = strided_mean(x, kh, kw)
        return projection(x)


class UnshuffledRSPBlock(nn.Module):
    """A depth-1 ``RSPBlock`` without its channel shuffle: returns
    ``cat(inner(x_a), x_b)``, whose readers' weights carry the shuffle's
    permutation. It owns its input: with no graph recorded the inner result
    is written over ``x_a`` and the input returned."""

    def __init__(self, block: RSPBlock):
        super().__init__()
        if isinstance(block.inner, RSPBlock):
            raise ValueError("UnshuffledRSPBlock: a nested RSP block keeps its shuffle")
        self.split, self.inner = block.split, block.inner

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        x_a = x[:, :self.split]
        inner = self.inner(x_a, *args)
        if torch.is_grad_enabled():
            return torch.cat([inner, x[:, self.split:]], 1)
        x_a.copy_(inner)
        return x


class InferenceTrellis(nn.Module):
    """``backbone`` (a ``TrellisBackbone``) reading a rectified stem: every node
    but the last layer's returns its output rectified (in place when no graph
    is recorded: the block's output is a fresh map nothing else holds), and
    the nodes' path attentions are ``InferencePathAttention``."""

    def __init__(self, backbone: TrellisBackbone):
        super().__init__()
        self.nodes = list(backbone.nodes)
        self.sources = [list(src) for src in backbone.sources]
        self.pams = nn.ModuleList(InferencePathAttention(pam) for pam in backbone.pams)
        self.blocks = backbone.blocks

    def forward(self, stem: torch.Tensor, logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        h, w = stem.shape[-2:]
        previous: dict = {STEM: stem}
        current: dict = {}
        layer, last = 1, self.nodes[-1][0]
        for i, node in enumerate(self.nodes):
            if node[0] != layer:
                previous, current, layer = current, {}, node[0]
            size = (h >> node[1], w >> node[1])
            y = self.blocks[i](self.pams[i]([previous[s] for s in self.sources[i]], logits[i], size))
            if layer != last:
                y = torch.relu(y) if torch.is_grad_enabled() else y.relu_()
            current[node] = y
        return [current[n] for n in sorted(current)]


class ChannelsLast(nn.Module):
    """``module`` run on a channels-last copy of a 4-d input; the output is
    returned in the input's layout (NCHW-contiguous unless the input was
    channels-last). Inference only: the copies are not worth it in training."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        was_channels_last = x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last)
        y = self.module(x.contiguous(memory_format=torch.channels_last))
        layout = torch.channels_last if was_channels_last else torch.contiguous_format
        if isinstance(y, tuple):   # a Stem(keep_half=True): both of its maps
            return tuple(t.contiguous(memory_format=layout) for t in y)
        return y.contiguous(memory_format=layout)


class InferenceHead(nn.Module):
    """``head`` (a ``SegmentationHead``) whose final upsampling reads a
    channels-last copy of the scores and so writes its output channels-last
    (the same values, faster on CPU; converting the output back would cost
    more than that saves)."""

    def __init__(self, head: SegmentationHead):
        super().__init__()
        self.head = head

    def forward(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        scores = self.head.scores(features, image_size)
        return upsample_scores(scores.contiguous(memory_format=torch.channels_last), image_size)


def shuffle_permutation(channels: int, groups: int = 2) -> torch.Tensor:
    """``perm`` with ``channel_shuffle(x, groups) == x[:, perm]``: output
    channel ``j * groups + g`` is input channel ``g * (channels // groups) + j``."""
    o = torch.arange(channels)
    return (o % groups) * (channels // groups) + o // groups


@torch.no_grad()
def _permute_inputs(conv: nn.Conv2d, perm: torch.Tensor, offset: int = 0) -> None:
    """``conv`` reading ``x[:, perm]`` at input channels ``offset ...`` is
    ``conv'`` reading ``x``: ``W'[:, offset + perm] = W[:, offset:offset + len(perm)]``."""
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.in_channels < offset + len(perm):
        raise ValueError(f"inference_form: cannot carry a channel permutation into {conv}")
    block = conv.weight[:, offset:offset + len(perm)].clone()
    conv.weight[:, offset + perm] = block


def _unshuffle_blocks(trellis: InferenceTrellis, head: Head | LightHead) -> int:
    """In place: every depth-1 RSP block of ``trellis`` made an
    ``UnshuffledRSPBlock``, its permutation moved into the convolutions that
    read its node (``head`` reads the last layer's); returns how many."""
    width = {node: pam.out_channels for node, pam in zip(trellis.nodes, trellis.pams)}
    finals = sorted(n for n in trellis.nodes if n[0] == trellis.nodes[-1][0])
    moved = 0
    for i, node in enumerate(trellis.nodes):
        block = trellis.blocks[i]
        if not isinstance(block, RSPBlock) or isinstance(block.inner, RSPBlock):
            continue
        perm = shuffle_permutation(width[node])
        for pam, sources in zip(trellis.pams, trellis.sources):
            for projection, source in zip(pam.projections, sources):
                if tuple(source) == node:
                    _permute_inputs(projection[0], perm)
        if node in finals:
            index = finals.index(node)
            if isinstance(head, LightHead):
                _permute_inputs(head.projections[index][1], perm)
                if index == len(finals) - 1:
                    _permute_inputs(head.context, perm)
            else:
                _permute_inputs(head.fuse[0], perm, sum(width[n] for n in finals[:index]))
        trellis.blocks[i] = UnshuffledRSPBlock(block)
        moved += 1
    return moved


def _trellis_networks(net: nn.Module, counts: dict[str, int]) -> None:
    """In place: the trellis of every network of ``net`` whose stem is a
    ``Stem`` (rectified output) made an ``InferenceTrellis``, its blocks
    unshuffled when the head is one of this project's."""
    for parent in list(net.modules()):
        stem, backbone = getattr(parent, "stem", None), getattr(parent, "backbone", None)
        if not (isinstance(stem, Stem) and isinstance(backbone, TrellisBackbone)):
            continue
        trellis = InferenceTrellis(backbone)
        counts["relus_shared"] += sum(len(pam.projections) for pam in backbone.pams)
        counts["pools_strided"] += sum(pam.pool_first and source[1] < node[1]
                                       for pam, node, sources in zip(backbone.pams, backbone.nodes,
                                                                     backbone.sources)
                                       for source in sources)
        head = getattr(parent, "head", None)
        if isinstance(head, (Head, LightHead)):
            counts["shuffles_moved"] += _unshuffle_blocks(trellis, head)
        parent.backbone = trellis


def _wrap(net: nn.Module, kind: type, wrapper: type) -> tuple[nn.Module, int]:
    """``net`` with every ``kind`` module (``net`` itself included, but none
    inside a ``wrapper`` already) wrapped in ``wrapper``, and how many."""
    if isinstance(net, kind):
        return wrapper(net), 1
    wrapped = 0
    for parent in list(net.modules()):
        if isinstance(parent, wrapper):
            continue
        for name, child in list(parent._modules.items()):
            if isinstance(child, kind):
                parent._modules[name] = wrapper(child)
                wrapped += 1
    return net, wrapped


def inference_form(model: nn.Module, *, batchnorm_only: bool = False, inplace: bool = False) -> nn.Module:
    """The inference form of ``model`` (module docstring): an eval-mode copy
    (``model`` itself converted with ``inplace``; a ``DerivedCell`` given as
    ``model`` comes back as a ``FoldedCell``, a ``Stem`` or a head wrapped)
    whose outputs equal eval-mode ``model``'s to fp32 rounding; an RSPNet's
    output is channels-last. ``batchnorm_only``: step 1 alone. What was done
    is the returned network's ``inference_report`` (an
    ``InferenceFormReport``). Eval-mode inference only."""
    net = model if inplace else copy.deepcopy(model)
    net.eval()
    folded, left = fold_conv_batchnorms(net)
    counts = {f.name: 0 for f in fields(InferenceFormReport)[2:]}
    if not batchnorm_only:
        pools = {kind: sum(isinstance(m, kind) for m in net.modules()) for kind in (MaxPool3x3, AvgPool3x3)}
        net, counts["cells_merged"] = fold_cells(net, inplace=True)
        counts["max_pools_separable"] = sum(isinstance(m, MaxPool3x3) for m in net.modules()) - pools[MaxPool3x3]
        counts["avg_pools_separable"] = sum(isinstance(m, AvgPool3x3) for m in net.modules()) - pools[AvgPool3x3]
        _trellis_networks(net, counts)
        net, counts["stems_channels_last"] = _wrap(net, Stem, ChannelsLast)
        net, counts["heads_channels_last"] = _wrap(net, SegmentationHead, InferenceHead)
        net.eval()
    net.inference_report = InferenceFormReport(folded, left, **counts)
    return net


def fold_batchnorm(model: nn.Module, inplace: bool = False, cells: bool = True) -> nn.Module:
    """The name before issue 19 of ``rspnet.models.inference_form`` (all of
    the inference form, not BatchNorm folding alone; ``cells=False`` is
    ``batchnorm_only=True``). The returned network's report is also its
    ``bn_folding`` (an ``InferenceFormReport``, whose ``folded``, ``left`` and
    ``cells`` are the fields of the former ``FoldCount``)."""
    net = inference_form(model, batchnorm_only=not cells, inplace=inplace)
    net.bn_folding = net.inference_report
    return net
