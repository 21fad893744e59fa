"""Segmentation head (SPEC §4): last-layer maps → class logits at input size."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .primitives import ConvBNReLU


class Head(nn.Module):
    """Upsample every map to 1/4 of the input, concatenate, 3×3 conv + BN +
    ReLU, 1×1 classifier, bilinear upsampling to the input size."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int):
        super().__init__()
        self.fuse = ConvBNReLU(sum(in_channels), channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        size = (image_size[0] // 4, image_size[1] // 4)
        maps = [f if f.shape[-2:] == size
                else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                for f in features]
        logits = self.classifier(self.fuse(torch.cat(maps, 1)))
        return F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)
