"""Linear cell states folded into the cell's projection: the inference form
of a ``DerivedCell`` whose edges are partly or wholly ``skip_connect``.

A node whose incoming edges are all ``skip_connect`` from nodes that are
themselves linear in the cell input ``x`` (node 0) is a scalar multiple
``c·x``: ``c`` is the sum of its sources' coefficients (node1 = x, node2 =
x + node1 = 2x, ...). The cell's output is a convolution ``W`` over the
concatenated states, and ``W`` is linear in its input, so with ``W_i`` the
block of input channels that reads concatenated state ``i``

    W · cat(states) = (Σ_{i linear} c_i W_i) · x + Σ_{i other} W_i · state_i

(zero padding keeps this exact for any kernel; the bias is added once).
``FoldedCell`` therefore runs only the operations of the nodes that are not
linear and that the output needs, and one convolution over ``cat([x] +
those states)`` whose first block is the merged weight. A cell whose
concatenated states are all linear becomes a single C→C convolution on
``x``. Everything else — the ops, a ``skip_connect`` out of a non-linear node,
whatever follows the projection's convolution (its BatchNorm, or the
identity that replaced it after ``fold_batchnorm``) — is kept as it is, so
the outputs equal the ``DerivedCell``'s up to fp32 rounding. The merged
weight is computed in float64 and stored in the convolution's dtype.

The ops that remain run in their inference form too: a 3×3 stride-1 max
pooling (DARTS's ``max_pool_3x3``) becomes ``MaxPool3x3``, the same maximum
taken separably (over each row's three neighbours, then each column's) on
shifted views, which PyTorch's CPU ``max_pool2d`` (it computes and stores the
argmax of every window) runs 20-30 times slower at one thread — it was 45 %
of a searched network's latency at 512×1024.

Inference only: the folded cell shares no parameters with the original.

``share_relus`` removes the other repeated work of a trellis: every path into
a node starts with a ReLU of its source (DARTS's ReLU → conv → BN), so a node
read by three paths was rectified three times; in the inference form each
node of the trellis but the last layer's (which the head reads as they are)
returns its rectified output once and the paths' ReLUs become identities —
exact, since relu(relu(x)) = relu(x) and the stem already ends in a ReLU.

Three layout and kernel choices complete the inference form; each computes
the same numbers (up to fp32 rounding) and was measured at one thread,
batch 1, 512×1024 on a 2-core EPYC VM:

* ``stem_channels_last``: the stem runs on a channels-last copy of the image
  and hands its output back in the image's layout. PyTorch's oneDNN
  convolution of a 3-channel NCHW image is a slow case (20 ms for the first
  3→32 stride-2 conv, 2.3 ms channels-last); the rest of the network stays
  NCHW, where the 1×1 convolutions and rspnet's fused ops run best.
* ``strided_pools``: the pool-first paths average with strided sums
  (``rspnet.nn.pam.strided_mean``) instead of ``F.avg_pool2d``, which is 4-8
  times slower on CPU.
* ``unshuffle_merges``: an RSP block of the trellis ends in a channel
  shuffle (``channel_merge``: concatenation, then a fixed permutation of the
  channels). Everything that reads a node's output starts with per-channel
  operations (ReLU, average pooling, a global mean) and then a convolution,
  so the permutation can be carried by those convolutions' input channels
  instead: the block returns ``cat(inner, x_b)`` unshuffled, written in place
  over its input (the inner result over ``x_a``), one pass over a quarter of
  the channels instead of one over all of them.
* ``channels_last_upsampling``: the head's final upsampling to the image size
  writes its output channels-last (23 against 31 ms); the network's output is
  then a channels-last tensor, as a channels-last network's is.

Together with the trellis's in-place ReLUs (``share_relus``) they took a
searched network from 1.2× to about 0.9× the one-thread latency of
LRASPP-MobileNetV3 (docs/design.md, the inference form).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from rspnet.nn import DerivedCell, Head, LightHead, PathAttention, RSPBlock, Stem, TrellisBackbone
from rspnet.nn.head import _HeadBase

__all__ = ["ChannelsLast", "FoldedCell", "MaxPool3x3", "channels_last_upsampling", "fold_cells", "share_relus",
           "shuffle_permutation", "stem_channels_last", "strided_pools", "unshuffle_merges"]


class MaxPool3x3(nn.Module):
    """``nn.MaxPool2d(3, stride=1, padding=1)`` for inference: the window's
    maximum as the maximum over columns of the maximum over rows, each from
    three shifted views of the input padded with -inf (what max pooling's
    implicit padding is). Equal to ``max_pool2d``'s output element for
    element (a maximum of the same numbers); its gradient on ties is not
    ``max_pool2d``'s, so it is for eval-mode networks only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
        rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
        return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _inference_op(op: nn.Module) -> nn.Module:
    if (isinstance(op, nn.MaxPool2d) and _pair(op.kernel_size) == (3, 3) and _pair(op.stride) == (1, 1)
            and _pair(op.padding) == (1, 1) and _pair(op.dilation) == (1, 1) and not op.ceil_mode
            and not op.return_indices):
        return MaxPool3x3()
    return op


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class FoldedCell(nn.Module):
    """The inference form of ``cell`` (a ``DerivedCell``), see the module
    docstring. ``dropped_edges`` says how many of the cell's edges no longer
    run (0 for a cell without a linear state)."""

    def __init__(self, cell: DerivedCell):
        super().__init__()
        conv = cell.project[0]
        C = conv.out_channels
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.in_channels != len(cell.concat) * C:
            raise ValueError(f"FoldedCell: the projection must be an ungrouped Conv2d over "
                             f"{len(cell.concat)}×{C} channels, got {conv}")
        incoming: dict[int, list[int]] = {t: [] for t in range(1, cell.steps + 1)}
        for index, (_, target) in enumerate(cell.edges_spec):
            incoming[target].append(index)

        def is_skip(index: int) -> bool:
            return isinstance(cell.ops[index], nn.Identity)

        # coefficient of x for the linear states (node 0 is x)
        coef: dict[int, float] = {0: 1.0}
        for target in range(1, cell.steps + 1):
            sources = [cell.edges_spec[i][0] for i in incoming[target]]
            if all(is_skip(i) for i in incoming[target]) and all(s in coef for s in sources):
                coef[target] = float(sum(coef[s] for s in sources))

        # the non-linear states the output reads, and those they read in turn
        needed: set[int] = set()
        stack = [s for s in cell.concat if s not in coef]
        while stack:
            node = stack.pop()
            if node not in needed:
                needed.add(node)
                stack += [cell.edges_spec[i][0] for i in incoming[node] if cell.edges_spec[i][0] not in coef]

        ops, plan = nn.ModuleList(), []
        for target in sorted(needed):
            edges = []
            for i in incoming[target]:
                source = cell.edges_spec[i][0]
                # (index in ops, or -1 for a skip edge; source; the source's
                # coefficient of x, None for a non-linear source)
                op = -1
                if not is_skip(i):
                    op = len(ops)
                    ops.append(_inference_op(cell.ops[i]))
                edges.append((op, source, coef.get(source)))
            plan.append((target, tuple(edges)))
        self.ops = ops
        self.plan = tuple(plan)
        self.dropped_edges = len(cell.edges_spec) - sum(len(edges) for _, edges in plan)

        # the merged projection: x's block first (when a concatenated state is
        # linear), then one block per distinct non-linear concatenated state
        with torch.no_grad():
            w = conv.weight.double()
            blocks: dict[int, torch.Tensor] = {}
            for position, state in enumerate(cell.concat):
                part = w[:, position * C:(position + 1) * C]
                key, part = (0, part * coef[state]) if state in coef else (state, part)
                blocks[key] = blocks[key] + part if key in blocks else part
            self.inputs = tuple(sorted(blocks))   # x (node 0) first
            merged = nn.Conv2d(len(blocks) * C, C, conv.kernel_size, conv.stride, conv.padding,
                               conv.dilation, 1, conv.bias is not None, conv.padding_mode,
                               device=conv.weight.device, dtype=conv.weight.dtype)
            merged.weight.copy_(torch.cat([blocks[k] for k in self.inputs], 1))
            if conv.bias is not None:
                merged.bias.copy_(conv.bias)
        self.project = nn.Sequential(merged, *list(cell.project)[1:])
        self.train(cell.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = {0: x}
        scaled = {1.0: x}   # c·x for the linear states non-linear nodes read, each made once
        for target, edges in self.plan:
            node = None
            for op, source, c in edges:
                if c is None:
                    h = states[source]
                else:
                    if c not in scaled:
                        scaled[c] = x * c
                    h = scaled[c]
                y = h if op < 0 else self.ops[op](h)
                node = y if node is None else node + y
            states[target] = node
        parts = [states[k] for k in self.inputs]
        return self.project(parts[0] if len(parts) == 1 else torch.cat(parts, 1))


def fold_cells(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, int]:
    """``model`` (a copy unless ``inplace``) with every ``DerivedCell``
    replaced by its ``FoldedCell``, and how many of those dropped edges (the
    cells that had a linear state to fold). ``model`` itself being a
    ``DerivedCell``, the ``FoldedCell`` is what is returned."""
    model = model if inplace else copy.deepcopy(model)
    if isinstance(model, DerivedCell):
        folded = FoldedCell(model)
        return folded, int(folded.dropped_edges > 0)
    simplified = 0
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, DerivedCell):
                folded = FoldedCell(child)
                parent._modules[name] = folded
                simplified += folded.dropped_edges > 0
    return model, simplified


def share_relus(model: nn.Module) -> int:
    """In place: every ``TrellisBackbone`` of ``model`` rectifies its
    non-final nodes' outputs once, and the ReLUs at the start of its paths'
    projections become ``nn.Identity`` (module docstring). Returns how many
    path ReLUs were removed. Eval-mode inference only."""
    removed = 0
    for backbone in (m for m in model.modules() if isinstance(m, TrellisBackbone)):
        backbone.relu_outputs = True
        for pam in backbone.pams:
            for projection in pam.projections:
                if isinstance(projection[0], nn.ReLU):
                    projection[0] = nn.Identity()
                    removed += 1
    return removed


class ChannelsLast(nn.Module):
    """``module`` run on a channels-last copy of a 4-d input; the output is
    returned in the input's layout (NCHW-contiguous unless the input was
    channels-last). Inference only: the copies are not worth it in training."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        was_channels_last = x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last)
        y = self.module(x.contiguous(memory_format=torch.channels_last))
        return y.contiguous(memory_format=torch.channels_last if was_channels_last else torch.contiguous_format)


def stem_channels_last(model: nn.Module) -> int:
    """In place: every ``Stem`` child of ``model`` wrapped in ``ChannelsLast``
    (module docstring); returns how many."""
    wrapped = 0
    for parent in list(model.modules()):
        if isinstance(parent, ChannelsLast):
            continue   # already wrapped (a model folded twice)
        for name, child in list(parent._modules.items()):
            if isinstance(child, Stem):
                parent._modules[name] = ChannelsLast(child)
                wrapped += 1
    return wrapped


def strided_pools(model: nn.Module) -> int:
    """In place: every pool-first ``PathAttention`` of ``model`` averages with
    strided sums (module docstring); returns how many."""
    pams = [m for m in model.modules() if isinstance(m, PathAttention) and m.pool_first]
    for pam in pams:
        pam.strided_pool = True
    return len(pams)


def channels_last_upsampling(model: nn.Module) -> int:
    """In place: every segmentation head of ``model`` upsamples its scores
    channels-last (module docstring); returns how many."""
    heads = [m for m in model.modules() if isinstance(m, _HeadBase)]
    for head in heads:
        head.upsample_channels_last = True
    return len(heads)


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
        raise ValueError(f"unshuffle_merges: cannot carry a channel permutation into {conv}")
    block = conv.weight[:, offset:offset + len(perm)].clone()
    conv.weight[:, offset + perm] = block


def unshuffle_merges(model: nn.Module) -> int:
    """In place, for every ``TrellisBackbone`` whose parent's head is a
    ``LightHead`` or a ``Head``: the RSP blocks (depth 1) of its nodes return
    their output unshuffled and the convolutions that read it (the next
    layer's path projections, the head's) take the permutation into their
    weights (module docstring). Returns how many blocks were changed. Eval-mode
    inference only."""
    changed = 0
    for parent in list(model.modules()):
        backbone, head = getattr(parent, "backbone", None), getattr(parent, "head", None)
        if not isinstance(backbone, TrellisBackbone) or not isinstance(head, (LightHead, Head)):
            continue
        last = backbone.nodes[-1][0]
        finals = sorted(n for n in backbone.nodes if n[0] == last)
        for i, node in enumerate(backbone.nodes):
            block = backbone.blocks[i]
            if not isinstance(block, RSPBlock) or isinstance(block.inner, RSPBlock) or block.unshuffled:
                continue
            channels = backbone.pams[i].projections[0][1].out_channels
            perm = shuffle_permutation(channels)
            for pam, sources in zip(backbone.pams, backbone.sources):
                for projection, source in zip(pam.projections, sources):
                    if tuple(source) == node:
                        _permute_inputs(projection[1], perm)
            if node in finals:
                index = finals.index(node)
                if isinstance(head, LightHead):
                    _permute_inputs(head.projections[index][1], perm)
                    if index == len(finals) - 1:
                        _permute_inputs(head.context, perm)
                else:
                    offset = sum(backbone.pams[backbone.nodes.index(n)].projections[0][1].out_channels
                                 for n in finals[:index])
                    _permute_inputs(head.fuse[0], perm, offset)
            block.unshuffled = True
            changed += 1
    return changed
