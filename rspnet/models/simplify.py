"""Linear cell states folded into the cell's projection: the inference form
of a ``DerivedCell`` (part of ``rspnet.models.inference``).

A node whose incoming edges are all ``skip_connect`` from nodes that are
themselves linear in the cell input ``x`` (node 0) is a scalar multiple
``c·x``: ``c`` is the sum of its sources' coefficients (node1 = x, node2 =
x + node1 = 2x, ...). The cell's output is a convolution ``W`` over the
concatenated states, linear in its input, so with ``W_i`` the block of input
channels that reads concatenated state ``i``

    W · cat(states) = (Σ_{i linear} c_i W_i) · x + Σ_{i other} W_i · state_i

(exact with zero padding for any kernel; the bias is added once).
``FoldedCell`` runs only the operations of the non-linear nodes the output
needs, then one convolution over ``cat([x] + those states)`` whose first
block is the merged weight (computed in float64, stored in the weight's
dtype); a cell whose concatenated states are all linear is one C→C
convolution on ``x``. The rest (the ops, a ``skip_connect`` out of a
non-linear node, what follows the projection's convolution) is kept, so the
outputs equal the ``DerivedCell``'s to fp32 rounding. The ops that remain
run in their inference form: a 3×3 stride-1 max pooling is ``MaxPool3x3``,
the same maximum taken separably on shifted views (CPU ``max_pool2d`` stores
every window's argmax and is far slower; docs/design.md §15), and a 3×3
stride-1 average pooling that does not count the padding is ``AvgPool3x3``,
the window's sum taken separably on shifted views and divided by the
in-bounds count (CPU ``avg_pool2d`` was a quarter of a light network's
one-thread time at 384×480). Inference only: the folded cell shares no
parameters with the original.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from rspnet.nn import DerivedCell

__all__ = ["AvgPool3x3", "FoldedCell", "MaxPool3x3", "fold_cells"]


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


class AvgPool3x3(nn.Module):
    """``nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)`` for
    inference: the window's sum as the sum over columns of the sum over rows,
    each from three shifted views of the zero-padded input, times the
    reciprocal of the window's in-bounds pixels (9 inside, 6 on an edge, 4 in
    a corner: the outer product of the per-axis counts). Equal to
    ``avg_pool2d`` to fp32 rounding (the same nine numbers, summed in another
    order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = F.pad(x, (1, 1, 1, 1))
        rows = p[..., :-2] + p[..., 1:-1] + p[..., 2:]
        total = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
        return total * _reciprocal_counts(h, w, x.dtype, x.device)


def _axis_counts(n: int) -> torch.Tensor:
    counts = torch.full((n,), 3.0, dtype=torch.float64)
    counts[0] -= 1
    counts[-1] -= 1   # n = 1: the one pixel is both ends, 1 in-bounds
    return counts


def _reciprocal_counts(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return (1.0 / torch.outer(_axis_counts(h), _axis_counts(w))).to(device=device, dtype=dtype)


def _inference_op(op: nn.Module) -> nn.Module:
    if (isinstance(op, nn.MaxPool2d) and _pair(op.kernel_size) == (3, 3) and _pair(op.stride) == (1, 1)
            and _pair(op.padding) == (1, 1) and _pair(op.dilation) == (1, 1) and not op.ceil_mode
            and not op.return_indices):
        return MaxPool3x3()
    if (isinstance(op, nn.AvgPool2d) and _pair(op.kernel_size) == (3, 3) and _pair(op.stride) == (1, 1)
            and _pair(op.padding) == (1, 1) and not op.ceil_mode and not op.count_include_pad
            and op.divisor_override is None):
        return AvgPool3x3()
    return op


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _is_skip(cell: DerivedCell, index: int) -> bool:
    return isinstance(cell.ops[index], nn.Identity)


def _linear_coefficients(cell: DerivedCell, incoming: dict[int, list[int]]) -> dict[int, float]:
    """The coefficient of x of every linear state (node 0 is x itself)."""
    coef: dict[int, float] = {0: 1.0}
    for target in range(1, cell.steps + 1):
        sources = [cell.edges_spec[i][0] for i in incoming[target]]
        if all(_is_skip(cell, i) for i in incoming[target]) and all(s in coef for s in sources):
            coef[target] = float(sum(coef[s] for s in sources))
    return coef


def _needed_states(cell: DerivedCell, incoming: dict[int, list[int]], coef: dict[int, float]) -> set[int]:
    """The non-linear states the output reads, and those they read in turn."""
    needed: set[int] = set()
    stack = [s for s in cell.concat if s not in coef]
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack += [cell.edges_spec[i][0] for i in incoming[node] if cell.edges_spec[i][0] not in coef]
    return needed


@torch.no_grad()
def _merged_projection(conv: nn.Conv2d, concat: tuple[int, ...],
                       coef: dict[int, float]) -> tuple[nn.Conv2d, tuple[int, ...]]:
    """The projection over x's block (when a concatenated state is linear),
    then one block per distinct non-linear concatenated state, and the states
    it reads in that order."""
    C = conv.out_channels
    w = conv.weight.double()
    blocks: dict[int, torch.Tensor] = {}
    for position, state in enumerate(concat):
        part = w[:, position * C:(position + 1) * C]
        key, part = (0, part * coef[state]) if state in coef else (state, part)
        blocks[key] = blocks[key] + part if key in blocks else part
    inputs = tuple(sorted(blocks))   # x (node 0) first
    merged = nn.Conv2d(len(blocks) * C, C, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, 1, conv.bias is not None, conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    merged.weight.copy_(torch.cat([blocks[k] for k in inputs], 1))
    if conv.bias is not None:
        merged.bias.copy_(conv.bias)
    return merged, inputs


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
        coef = _linear_coefficients(cell, incoming)
        ops, plan = nn.ModuleList(), []
        for target in sorted(_needed_states(cell, incoming, coef)):
            edges = []
            for i in incoming[target]:
                source = cell.edges_spec[i][0]
                # (index in ops, or -1 for a skip edge; source; the source's
                # coefficient of x, None for a non-linear source)
                op = -1
                if not _is_skip(cell, i):
                    op = len(ops)
                    ops.append(_inference_op(cell.ops[i]))
                edges.append((op, source, coef.get(source)))
            plan.append((target, tuple(edges)))
        self.ops = ops
        self.plan = tuple(plan)
        self.dropped_edges = len(cell.edges_spec) - sum(len(edges) for _, edges in plan)
        merged, self.inputs = _merged_projection(conv, cell.concat, coef)
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
