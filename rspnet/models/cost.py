"""What a network costs: its parameters and forward FLOPs, counted one way
for the search summary, the export report and the benchmarks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_flops"]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: torch.nn.Module, resolution: Sequence[int]) -> int:
    """Forward FLOPs on one image of ``resolution`` (H, W), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2)."""
    counter = FlopCounterMode(display=False)
    device = next(model.parameters()).device
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *resolution, device=device))
    return int(counter.get_total_flops())
