"""The two search networks (docs/design.md: the stage-1 network, the macro supernet).

``SinglePathSupernet`` (stage 1) searches the cell: stem, one RSP block with a
search cell at each scale, stride-2 links, head; every cell shares α.
``MacroSupernet`` (stage 2) searches the paths: the fully connected trellis,
a PAM with logits β at every node, an RSP block around the fixed stage-1 cell.

Both keep architecture parameters apart from weights (``arch_parameters()``,
``weight_parameters()``) and name them by kind (``arch_param_groups()``: α or
β) so each kind gets its own optimiser settings.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from rspnet.architecture import PRIMITIVES, Genotype, KeptNode, edge_list, scale_widths
from rspnet.nn import (Cell, DerivedCell, RSPBlock, SinglePathBackbone, Stem, TrellisBackbone,
                       edge_normalization, head_reads_stem, layer_nodes, make_head, stem_and_body_input,
                       trellis_nodes)

from .derive import derive_cell, derive_paths


def _entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of a row-stochastic matrix."""
    return -(weights * weights.clamp_min(1e-30).log()).sum(-1)


class _Supernet(nn.Module):
    """What the search loop and the ``Architect`` use from a supernet; a
    subclass provides ``arch_param_groups()``, the derivation
    (``genotype()`` of the cell, ``paths()`` of the trellis),
    ``expected_params()``, ``arch_probabilities()`` and ``entropy()``, and
    sets ``ignore_index``, the label the loss ignores."""

    ignore_index: int = 255

    def set_class_weights(self, weights: Sequence[float] | None) -> None:
        """Weigh the loss of both steps (weights on split A, α / β on split B)
        per class (``rspnet.data.class_weights``); None: unweighted."""
        self.register_buffer("class_weights", None if weights is None else
                             torch.tensor(list(weights), dtype=torch.float32), persistent=False)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``self(images)`` (weighted per class after
        ``set_class_weights``); with ``memory="recompute"`` the head's final
        upsampling and the loss are fused (no full-resolution scores are kept
        for backward), same value and gradients."""
        return self.head.loss(self.features(images), labels, ignore_index=self.ignore_index,
                              weight=getattr(self, "class_weights", None))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images), images.shape[-2:])

    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for group in self.arch_param_groups().values() for p in group]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]


class SinglePathSupernet(_Supernet):
    """Stage-1 network. Args:
        num_classes: segmentation classes.
        channels: F, channels at 1/4 (doubling per scale).
        scales: number of scales (4: 1/4 .. 1/32).
        steps: intermediate nodes per cell.
        memory: ``"store"`` or ``"recompute"``: mixed edges, stem and head keep
            only their inputs for backward, and the loss fuses the final
            upsampling (``rspnet.nn.recompute``).
        edge_partial: PC-DARTS partial channels (1 = off).
        edge_normalization: PC-DARTS edge normalisation (an extra logit per edge).
        rsp_ratio, rsp_depth: the RSP split around each cell.
        head_channels: width of the head's 3×3 conv.
        head: the head design (``rspnet.nn.HEADS``: ``concat`` or ``light``).
        max_skip: at most this many ``skip_connect`` edges in the derived cell
            (``derive_cell``); None: no limit.
        widths: channels of every scale (``scale_widths``; default ``channels * 2**s``).
        ignore_index: the label the loss ignores.
        skip_bn: an affine-free BatchNorm after every ``skip_connect`` candidate
            (``MixedOp``), so that it cannot win as a mere scale.
    """

    def __init__(self, num_classes: int, channels: int = 16, scales: int = 4, steps: int = 4,
                 memory: str = "recompute", edge_partial: int = 1, edge_normalization: bool = False,
                 rsp_ratio: float = 0.5, rsp_depth: int = 1, head_channels: int = 64,
                 primitives: Sequence[str] = PRIMITIVES, ignore_index: int = 255, skip_bn: bool = True,
                 head: str = "concat", max_skip: int | None = None, widths: Sequence[int] | None = None):
        super().__init__()
        self.steps, self.ignore_index, self.max_skip = steps, ignore_index, max_skip
        self.primitives = tuple(primitives)

        def make_cell(c: int) -> Cell:
            return Cell(c, steps, memory, edge_partial, self.primitives, skip_bn)

        self.stem = Stem(channels, memory=memory, keep_half=head_reads_stem(head))
        self.backbone = SinglePathBackbone(
            channels, scales, lambda c: RSPBlock(c, make_cell, rsp_ratio, rsp_depth), widths)
        self.head = make_head(head, list(scale_widths(channels, scales, widths)), num_classes,
                              head_channels, memory=memory, stem_channels=channels)
        num_edges = len(edge_list(steps))
        # DARTS's initialisation: near-uniform mixtures, broken by small noise
        self.alphas = nn.Parameter(1e-3 * torch.randn(num_edges, len(self.primitives)))
        self.edge_logits = nn.Parameter(torch.zeros(num_edges)) if edge_normalization else None

    def arch_param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"alpha": [self.alphas] + ([self.edge_logits] if self.edge_logits is not None else [])}

    def _edge_weights(self) -> torch.Tensor | None:
        if self.edge_logits is None:
            return None
        return edge_normalization(self.edge_logits, self.steps)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """What the head reads: every scale's output (after the stem's 1/2-scale
        map, for a head that reads it)."""
        weights = torch.softmax(self.alphas, dim=-1)
        half, stem = stem_and_body_input(self.stem, images)
        return half + self.backbone(stem, weights, self._edge_weights())

    def genotype(self) -> Genotype:
        """The derived cell (DARTS's rule, ``derive_cell``)."""
        return derive_cell(self.alphas, self.steps, self.edge_logits, self.primitives, self.max_skip)

    def expected_params(self) -> torch.Tensor:
        """Parameters of the searched edges of every cell, in expectation under α."""
        weights = torch.softmax(self.alphas, dim=-1)
        cells = [m for m in self.modules() if isinstance(m, Cell)]
        return sum(cell.expected_params(weights) for cell in cells)

    def expected_cost(self, table) -> torch.Tensor:
        """The expected cost (``rspnet.search.cost.CostTable``) of the network
        the search derives, under softmax(α) and uniform β (stage 2 has not
        chosen paths yet)."""
        return table.expected(torch.softmax(self.alphas, dim=-1))

    def arch_probabilities(self) -> dict[str, list[list[float]]]:
        """softmax(α) per edge, for the history plots."""
        return {"alpha": torch.softmax(self.alphas.detach(), -1).tolist()}

    def entropy(self) -> dict[str, float]:
        """Mean entropy (nats) of the edges' op distributions."""
        return {"alpha": _entropy(torch.softmax(self.alphas.detach(), -1)).mean().item()}


class MacroSupernet(_Supernet):
    """Stage-2 network over the full trellis. Args:
        num_classes: segmentation classes.
        genotype: the fixed cell (stage-1 result).
        channels, scales: as ``SinglePathSupernet``.
        layers: trellis depth L.
        rsp_ratio, rsp_depth, head_channels, head, widths: as ``SinglePathSupernet``.
        pool_first: pool every path into a coarser node before its projection
            (``PathAttention(pool_first=True)``).
        memory: ``"store"`` (default: the plain network) or ``"recompute"``: the
            stem, every trellis node and the head keep only their inputs for
            backward, and the loss fuses the final upsampling (``rspnet.nn.recompute``).
        ignore_index: the label the loss ignores.
        path_norm: divide every path by its RMS after resampling before the
            PAM weighs it (``PathAttention(normalize=True)``).
    """

    def __init__(self, num_classes: int, genotype: Genotype, channels: int = 16, scales: int = 4,
                 layers: int = 8, rsp_ratio: float = 0.5, rsp_depth: int = 1,
                 head_channels: int = 64, memory: str = "store", ignore_index: int = 255,
                 path_norm: bool = False, head: str = "concat", widths: Sequence[int] | None = None,
                 pool_first: bool = False):
        super().__init__()
        self.ignore_index = ignore_index
        self.cell = genotype
        self.nodes = trellis_nodes(layers, scales)
        self.sources = [layer_nodes(self.nodes, layer - 1) for layer, _ in self.nodes]

        def make_cell(c: int) -> DerivedCell:
            return DerivedCell(c, genotype, affine=False)

        self.stem = Stem(channels, memory=memory, keep_half=head_reads_stem(head))
        self.backbone = TrellisBackbone(
            channels, self.nodes, self.sources,
            lambda c: RSPBlock(c, make_cell, rsp_ratio, rsp_depth), affine=False, memory=memory,
            path_norm=path_norm, widths=widths, pool_first=pool_first)
        last = layer_nodes(self.nodes, layers)
        width = scale_widths(channels, scales, widths)
        self.head = make_head(head, [width[s] for _, s in last], num_classes,
                              head_channels, memory=memory, stem_channels=channels)
        self.betas = nn.ParameterList(nn.Parameter(1e-3 * torch.randn(len(src)))
                                      for src in self.sources)

    def arch_param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"beta": list(self.betas)}

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """What the head reads: the last layer's outputs (after the stem's
        1/2-scale map, for a head that reads it)."""
        half, stem = stem_and_body_input(self.stem, images)
        return half + self.backbone(stem, list(self.betas))

    def paths(self, top_k: int = 2, same_scale: bool = False) -> tuple[KeptNode, ...]:
        """The derived trellis: each node's ``top_k`` paths (``derive_paths``)."""
        return derive_paths(self.betas, self.nodes, self.sources, top_k, same_scale)

    def expected_params(self) -> torch.Tensor:
        """Parameters of the path projections, each weighted by its softmax(β):
        the only part of the trellis whose size the paths decide."""
        total = 0
        for beta, pam in zip(self.betas, self.backbone.pams):
            counts = torch.tensor([sum(p.numel() for p in proj.parameters())
                                   for proj in pam.projections], dtype=beta.dtype, device=beta.device)
            total = total + (torch.softmax(beta, 0) * counts).sum()
        return total

    def expected_cost(self, table) -> torch.Tensor:
        """The expected cost (``rspnet.search.cost.CostTable``) of the derived
        trellis around the fixed cell, under softmax(β)."""
        return table.expected(self.cell, list(self.betas))

    def arch_probabilities(self) -> dict[str, list[list[float]]]:
        """softmax(β) per node, for the history plots."""
        return {"beta": [torch.softmax(b.detach(), 0).tolist() for b in self.betas]}

    def entropy(self) -> dict[str, float]:
        """Mean entropy (nats) of the path distributions of the nodes that
        choose (more than one incoming path; a single path's β is constant)."""
        values = [_entropy(torch.softmax(b.detach(), 0)) for b in self.betas if b.numel() > 1]
        return {"beta": torch.stack(values).mean().item() if values else 0.0}


def build_supernet(space, num_classes: int, cell: Genotype | None = None, memory: str = "store",
                   ignore_index: int = 255) -> _Supernet:
    """The supernet of a ``SearchSpace``: stage 1's single path over the
    cell's candidates (``cell=None``), or stage 2's trellis around ``cell``."""
    if cell is None:
        return SinglePathSupernet(num_classes, space.channels, space.scales, space.steps, memory,
                                  space.edge_partial, space.edge_normalization, space.rsp_ratio, space.rsp_depth,
                                  space.head_width, primitives=space.primitives, ignore_index=ignore_index,
                                  skip_bn=space.skip_bn, head=space.head, max_skip=space.max_skip,
                                  widths=space.scale_channels)
    return MacroSupernet(num_classes, cell, space.channels, space.scales, space.layers, space.rsp_ratio,
                         space.rsp_depth, space.head_width, memory=memory, ignore_index=ignore_index,
                         path_norm=space.path_norm, head=space.head, widths=space.scale_channels,
                         pool_first=space.pool_first)
