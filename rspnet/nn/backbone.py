"""The networks' bodies: stem, single-path chain (stage 1) and trellis (stage 2).

Scales are numbered 0..scales-1 for 1/4, 1/8, 1/16, 1/32 of the input; a node
at scale ``s`` has ``channels * 2**s`` channels unless the bodies are given
``widths`` (one per scale, ``rspnet.architecture.scale_widths``). Trellis nodes are named
``(layer, scale)``; the stem is node ``(0, 0)``. Both bodies take a
``make_block(c)`` factory for what runs at a node (an ``RSPBlock`` around a
search or derived cell), so supernets and derived networks share them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from rspnet.architecture import scale_widths

from .pam import PathAttention
from .primitives import ConvBNReLU
from .recompute import Recomputable, check_memory_mode, checkpoint

Node = tuple[int, int]
STEM: Node = (0, 0)


class Stem(Recomputable, nn.Sequential):
    """Two 3×3 stride-2 convs (BN, ReLU) from the image to 1/4 resolution.
    ``keep_half``: return ``(1/2-scale map, 1/4-scale map)``, for a head that
    reads the first (``DetailHead``). ``memory="recompute"`` keeps only the
    image for backward (its 1/2- and 1/4-resolution maps are recomputed);
    ``store`` (default) is the plain network."""

    def __init__(self, channels: int, in_channels: int = 3, memory: str = "store", keep_half: bool = False):
        super().__init__(ConvBNReLU(in_channels, channels, 3, stride=2),
                         ConvBNReLU(channels, channels, 3, stride=2))
        self.memory = check_memory_mode(memory, "Stem")
        self.keep_half = keep_half

    def _both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self[0](x)
        return half, self[1](half)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        fn = self._both if self.keep_half else super().forward
        if self.memory == "recompute":
            return checkpoint(fn, x, modules=(self,))
        return fn(x)


def stem_and_body_input(stem: nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``([the stem's 1/2-scale map] or [], the 1/4-scale map the body
    reads)`` of ``stem(images)``: what a network whose head may read the
    stem (``Stem(keep_half=True)``) passes on. The first list goes before
    the body's maps in the head's input."""
    out = stem(images)
    if isinstance(out, tuple):
        return [out[0]], out[1]
    return [], out


def trellis_nodes(layers: int, scales: int) -> list[Node]:
    """Every node of the full trellis, layer by layer (Auto-DeepLab's
    reachability: layer l has the scales 0..min(l, scales - 1))."""
    return [(layer, scale) for layer in range(1, layers + 1)
            for scale in range(min(layer, scales - 1) + 1)]


def layer_nodes(nodes: Sequence[Node], layer: int) -> list[Node]:
    """The nodes of ``layer`` (the stem for layer 0), by scale."""
    return [STEM] if layer == 0 else sorted(n for n in nodes if n[0] == layer)


class SinglePathBackbone(nn.Module):
    """Stage-1 body (docs/design.md, the stage-1 network): a block at each scale, a stride-2 ConvBNReLU
    between scales; returns every scale's output, finest first."""

    def __init__(self, channels: int, scales: int, make_block: Callable[[int], nn.Module],
                 widths: Sequence[int] | None = None):
        super().__init__()
        widths = scale_widths(channels, scales, widths)
        self.blocks = nn.ModuleList(make_block(c) for c in widths)
        self.downsample = nn.ModuleList(ConvBNReLU(widths[s], widths[s + 1], 3, stride=2)
                                        for s in range(scales - 1))

    def forward(self, x: torch.Tensor, *block_args) -> list[torch.Tensor]:
        features = []
        for s, block in enumerate(self.blocks):
            if s:
                x = self.downsample[s - 1](x)
            x = block(x, *block_args)
            features.append(x)
        return features


class TrellisBackbone(Recomputable, nn.Module):
    """Stage-2 body (docs/design.md, the macro supernet): each node fuses its incoming paths with a
    ``PathAttention`` and applies its block; returns the last layer's outputs
    by scale. ``memory="recompute"`` keeps only each node's inputs and output
    for backward (the node, PAM and block, runs again in backward); ``store``
    (default) is the plain network.

    Args:
        channels: F, the channels at scale 0 (and of the stem).
        nodes: the nodes, layer by layer.
        sources: for each node, the nodes of the previous layer it reads.
        make_block: builds the block applied after the fusion.
        affine: BN affine parameters of the path projections.
        memory: ``"store"`` or ``"recompute"``.
        path_norm: ``PathAttention(normalize=)`` at every node (a search option).
        widths: channels of every scale (default ``channels * 2**s``).
        pool_first: ``PathAttention(pool_first=)`` at every node.
    """

    def __init__(self, channels: int, nodes: Sequence[Node], sources: Sequence[Sequence[Node]],
                 make_block: Callable[[int], nn.Module], affine: bool = True, memory: str = "store",
                 path_norm: bool = False, widths: Sequence[int] | None = None, pool_first: bool = False):
        super().__init__()
        self.memory = check_memory_mode(memory, "TrellisBackbone")
        self.nodes = [tuple(n) for n in nodes]
        self.sources = [[tuple(s) for s in src] for src in sources]
        scales = 1 + max(s for _, s in self.nodes + [STEM] + [n for src in self.sources for n in src])
        width = scale_widths(channels, scales, None if widths is None else widths[:scales])
        self.pams = nn.ModuleList(
            PathAttention([width[s] for _, s in src], width[scale], affine, path_norm, pool_first)
            for (_, scale), src in zip(self.nodes, self.sources))
        self.blocks = nn.ModuleList(make_block(width[scale]) for _, scale in self.nodes)

    def forward(self, stem: torch.Tensor, logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        h, w = stem.shape[-2:]
        previous: dict[Node, torch.Tensor] = {STEM: stem}
        current: dict[Node, torch.Tensor] = {}
        layer = 1
        for i, node in enumerate(self.nodes):
            if node[0] != layer:
                # a layer reads only the one before it: drop older maps early
                previous, current, layer = current, {}, node[0]
            size = (h >> node[1], w >> node[1])
            inputs = [previous[s] for s in self.sources[i]]
            if self.memory == "recompute":
                current[node] = checkpoint(self._node, i, size, logits[i], *inputs,
                                           modules=(self.pams[i], self.blocks[i]))
            else:
                current[node] = self._node(i, size, logits[i], *inputs)
        return [current[n] for n in sorted(current)]

    def _node(self, i: int, size: tuple[int, int], logits: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return self.blocks[i](self.pams[i](list(inputs), logits, size))
