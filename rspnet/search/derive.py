"""From architecture parameters to a discrete architecture.

Cell (DARTS's rule): intermediate node ``t`` keeps its ``min(2, t)`` strongest
incoming edges, an edge's strength being its largest non-``none`` weight; each
kept edge takes its arg-max non-``none`` op.

``max_skip`` (P-DARTS's limit on skip connections, off by default): while
the cell has more ``skip_connect`` edges than that, the kept skip edge with
the smallest skip weight loses its skip weight (set to 0) and the cell is
derived again, so that edge takes its next-best op, or another edge of the
node wins (parameter-free ops win early, while the convolutions are still
untrained).

Paths: each trellis node keeps its ``top_k`` incoming paths by ``softmax(β)``;
nodes that cannot reach the head (which reads every last-layer node) are
pruned; the kept paths' weights are their softmax renormalised to sum to 1.

``same_scale`` (off by default): every node keeps the path from its own
scale in the previous layer when there is one, and ``top_k - 1`` more by
softmax(β), so each scale's stream runs through the whole trellis (HRNet's
parallel high-resolution streams); without it a 1/4-scale node may drop its
1/4 input and rebuild fine detail from upsampled coarse maps.

Ties are broken deterministically toward the lower index (the earlier source
node, the earlier op in ``PRIMITIVES``), as DARTS's stable sort does.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rspnet.architecture import PRIMITIVES, Genotype, KeptNode, edge_list, reaching_head
from rspnet.nn import edge_normalization


def _strongest(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` largest scores, lower index first among equals,
    returned in increasing order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep index order
    return sorted(order[:k])


def derive_cell(alphas: torch.Tensor, steps: int = 4, edge_logits: torch.Tensor | None = None,
                primitives: Sequence[str] = PRIMITIVES, max_skip: int | None = None) -> Genotype:
    """The DARTS cell of ``alphas`` ([edges, ops]); with PC-DARTS edge
    normalisation (``edge_logits``), an edge's op weights are scaled by its
    edge weight before ranking, as PC-DARTS derives. ``max_skip``: at most
    that many ``skip_connect`` edges (module doc)."""
    weights = torch.softmax(alphas.detach().double(), dim=-1)
    if edge_logits is not None:
        weights = weights * edge_normalization(edge_logits.detach().double(), steps)[:, None]
    weights = weights.tolist()
    if max_skip is None or "skip_connect" not in primitives:
        return _derive(weights, steps, primitives)
    if max_skip < 0:
        raise ValueError(f"max_skip must be >= 0, got {max_skip}")
    skip = primitives.index("skip_connect")
    edges = edge_list(steps)
    while True:
        cell = _derive(weights, steps, primitives)
        kept = [edges.index((s, t)) for op, s, t in cell.normal if op == "skip_connect"]
        if len(kept) <= max_skip:
            return cell
        weakest = min(kept, key=lambda e: (weights[e][skip], e))
        weights[weakest][skip] = 0.0


def _derive(weights: list[list[float]], steps: int, primitives: Sequence[str]) -> Genotype:
    candidates = [k for k, name in enumerate(primitives) if name != "none"]
    edges = edge_list(steps)
    normal = []
    for target in range(1, steps + 1):
        rows = [e for e, (_, t) in enumerate(edges) if t == target]
        strength = [max(weights[e][k] for k in candidates) for e in rows]
        for i in _strongest(strength, min(2, target)):
            row = weights[rows[i]]
            best = max(candidates, key=lambda k: (row[k], -k))  # first maximum wins
            normal.append((primitives[best], edges[rows[i]][0], target))
    return Genotype(normal=tuple(normal), normal_concat=tuple(range(1, steps + 1)))


def same_scale_source(node: tuple[int, int], sources: Sequence[tuple[int, int]]) -> int | None:
    """Index in ``sources`` of ``node``'s own scale in the previous layer, or None."""
    for i, source in enumerate(sources):
        if tuple(source) == (node[0] - 1, node[1]):
            return i
    return None


def derive_paths(betas: Sequence[torch.Tensor], nodes: Sequence[tuple[int, int]],
                 sources: Sequence[Sequence[tuple[int, int]]], top_k: int = 2,
                 same_scale: bool = False) -> tuple[KeptNode, ...]:
    """The derived trellis: for each surviving node (in ``nodes`` order) its
    kept paths with fixed weights (``same_scale``: module doc)."""
    chosen = {}
    for beta, node, src in zip(betas, nodes, sources):
        weights = torch.softmax(beta.detach().double(), dim=0).tolist()
        forced = same_scale_source(node, src) if same_scale else None
        if forced is None:
            keep = _strongest(weights, min(top_k, len(src)))
        else:
            rest = [i for i in range(len(src)) if i != forced]
            best = _strongest([weights[i] for i in rest], min(top_k, len(src)) - 1)
            keep = sorted([forced] + [rest[j] for j in best])
        total = sum(weights[p] for p in keep)
        chosen[tuple(node)] = tuple((tuple(src[p]), weights[p] / total) for p in keep)
    alive = reaching_head({node: [s for s, _ in paths] for node, paths in chosen.items()})
    return tuple(KeptNode(node, paths) for node, paths in chosen.items() if node in alive)
