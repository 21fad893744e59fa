"""The RSPNet cell: one input, ``steps`` intermediate nodes.

Node ``t`` (1..steps) sums one edge from every earlier node, the input being
node 0, so a cell has ``steps (steps + 1) / 2`` edges (10 for steps=4), in the
order of :func:`edge_list`. The cell's output is the concatenation of its
intermediate nodes brought back to the input's channels by a 1×1 conv and BN.

``Cell`` is the search cell (a ``MixedOp`` on every edge, architecture weights
given to ``forward``); ``DerivedCell`` is the fixed cell a ``Genotype`` names.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from rspnet.architecture import PRIMITIVES, Genotype, edge_list

from .mixed_op import MixedOp
from .primitives import OPS


def edge_normalization(edge_logits: torch.Tensor, steps: int) -> torch.Tensor:
    """PC-DARTS edge normalisation: the softmax of ``edge_logits`` ([edges])
    taken over each node's incoming edges separately."""
    parts, start = [], 0
    for target in range(1, steps + 1):
        parts.append(torch.softmax(edge_logits[start:start + target], dim=0))
        start += target
    return torch.cat(parts)


class _Projection(nn.Sequential):
    """1×1 conv + BN from the concatenated nodes back to the cell's channels."""

    def __init__(self, C_in: int, C_out: int, affine: bool):
        super().__init__(nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))


class Cell(nn.Module):
    """Search cell: every edge is a ``MixedOp`` over ``primitives``.

    Args:
        C: input and output channels.
        steps: intermediate nodes (B).
        memory: the ``MixedOp`` memory mode (``"store"`` / ``"recompute"``).
        edge_partial: PC-DARTS partial channels on every edge (1 = off).
        skip_bn: ``MixedOp``'s BatchNorm after ``skip_connect``.
    BatchNorm has no affine parameters, as in DARTS's search.
    """

    def __init__(self, C: int, steps: int = 4, memory: str = "store", edge_partial: int = 1,
                 primitives: Sequence[str] = PRIMITIVES, skip_bn: bool = True):
        super().__init__()
        self.steps = steps
        self.edges = nn.ModuleList(MixedOp(C, memory, edge_partial, primitives, skip_bn)
                                   for _ in edge_list(steps))
        self.project = _Projection(steps * C, C, affine=False)

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights``: [edges, ops], softmax of α; ``edge_weights``: [edges],
        PC-DARTS edge normalisation (each node's incoming edges softmaxed), or None."""
        states = [x]
        e = 0
        for _ in range(self.steps):
            node = 0
            for h in states:
                y = self.edges[e](h, weights[e])
                node = node + (y if edge_weights is None else edge_weights[e] * y)
                e += 1
            states.append(node)
        return self.project(torch.cat(states[1:], 1))

    def expected_params(self, weights: torch.Tensor) -> torch.Tensor:
        """Expected parameter count of the edges under ``weights`` (the fixed
        projection is left out: it does not depend on the architecture)."""
        return sum(edge.expected_params(w) for edge, w in zip(self.edges, weights))


class DerivedCell(nn.Module):
    """The fixed cell of a ``Genotype``; BN affine by default (a trained network)."""

    def __init__(self, C: int, genotype: Genotype, affine: bool = True):
        super().__init__()
        self.edges_spec = tuple((source, target) for _, source, target in genotype.normal)
        self.steps = max(target for _, target in self.edges_spec)
        fed = {target for _, target in self.edges_spec}
        if fed != set(range(1, self.steps + 1)) or any(s >= t for s, t in self.edges_spec):
            raise ValueError(f"DerivedCell: every node 1..{self.steps} needs an incoming edge "
                             f"from an earlier node, got edges {self.edges_spec}")
        self.concat = tuple(genotype.normal_concat)
        self.ops = nn.ModuleList(OPS[op](C, affine) for op, _, _ in genotype.normal)
        self.project = _Projection(len(self.concat) * C, C, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states: list = [x] + [0] * self.steps
        # edges are applied target by target so every source is complete when read
        for target in range(1, self.steps + 1):
            for op, (source, t) in zip(self.ops, self.edges_spec):
                if t == target:
                    states[target] = states[target] + op(states[source])
        return self.project(torch.cat([states[i] for i in self.concat], 1))
