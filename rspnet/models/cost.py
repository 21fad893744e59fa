"""What a network costs: its parameters and forward FLOPs, counted one way
for the search summary, the export report and the benchmarks."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_flops", "count_flops_of"]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: torch.nn.Module, resolution: Sequence[int]) -> int:
    """Forward FLOPs on one image of ``resolution`` (H, W), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2)."""
    device = next(model.parameters()).device
    return count_flops_of(model, torch.zeros(1, 3, *resolution, device=device))


def count_flops_of(fn: Callable[..., Any], *inputs: torch.Tensor) -> int:
    """Forward FLOPs of ``fn(*inputs)`` (no grad), counted as ``count_flops``
    counts them: the search's cost table sums pieces counted this way."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(*inputs)
    return int(counter.get_total_flops())
