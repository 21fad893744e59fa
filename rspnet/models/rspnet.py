"""RSPNet: the derived network, built from an architecture file and trained
from scratch (BN affine, no pretrained backbone)."""
from __future__ import annotations

import math
import os
from typing import Mapping

import torch
import torch.nn as nn

from rspnet.nn import (DerivedCell, RSPBlock, SinglePathBackbone, Stem, TrellisBackbone, head_reads_stem, make_head,
                       stem_and_body_input)
from rspnet.architecture import Architecture


class RSPNet(nn.Module):
    """Stem, body (the kept trellis, or the single-path chain when the
    architecture has no macro part), head; every node runs an RSP block around
    the derived cell, and each trellis node fuses its kept paths with their
    fixed weights."""

    def __init__(self, architecture: str | os.PathLike | Mapping | Architecture, num_classes: int):
        """``architecture``: anything ``Architecture.load`` reads (a file path,
        its parsed JSON, an ``Architecture``)."""
        super().__init__()
        self.architecture = arch = Architecture.load(architecture)

        def make_block(c: int) -> RSPBlock:
            return RSPBlock(c, lambda ci: DerivedCell(ci, arch.cell), arch.rsp_ratio, arch.rsp_depth)

        self.stem = Stem(arch.channels, keep_half=head_reads_stem(arch.head))
        if arch.nodes is None:
            self.backbone = SinglePathBackbone(arch.channels, arch.scales, make_block, arch.widths)
            head_scales = range(arch.scales)
        else:
            nodes = [n.node for n in arch.nodes]
            self.backbone = TrellisBackbone(arch.channels, nodes,
                                            [[s for s, _ in n.paths] for n in arch.nodes], make_block,
                                            widths=arch.widths, pool_first=arch.pool_first)
            head_scales = [s for layer, s in nodes if layer == arch.layers]
            # path_fusion applies softmax to its logits: log-weights give back
            # the fixed weights exactly as they sum to 1
            for i, n in enumerate(arch.nodes):
                self.register_buffer(f"path_logits_{i}",
                                     torch.tensor([math.log(w) for _, w in n.paths]), persistent=False)
        self.head = make_head(arch.head, [arch.widths[s] for s in head_scales], num_classes,
                              arch.head_channels, stem_channels=arch.channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        half, stem = stem_and_body_input(self.stem, images)
        if self.architecture.nodes is None:
            features = self.backbone(stem)
        else:
            logits = [getattr(self, f"path_logits_{i}") for i in range(len(self.architecture.nodes))]
            features = self.backbone(stem, logits)
        return self.head(half + features, images.shape[-2:])
