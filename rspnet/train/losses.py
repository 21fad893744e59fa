"""The training losses: pixel-wise cross-entropy ignoring the void label,
optionally class-weighted (``--class-weights``, computed once from the
training masks), and its online-hard-example-mining variant (``--ohem``)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from rspnet.data.weights import CLASS_WEIGHTS, class_pixel_counts, class_weights
from rspnet.nn import labelled_cross_entropy

__all__ = ["at_least_fp32", "ohem_cross_entropy", "segmentation_loss", "CLASS_WEIGHTS", "class_pixel_counts",
           "class_weights"]



def at_least_fp32(scores: torch.Tensor) -> torch.Tensor:
    """Losses are taken in float32 at least: mixed-precision class scores are
    upcast, float64 ones are kept."""
    return scores if scores.dtype == torch.float64 else scores.float()


def ohem_cross_entropy(scores: torch.Tensor, target: torch.Tensor, thresh: float = 0.7,
                       min_kept: int | None = None, ignore_index: int = 255) -> torch.Tensor:
    """Online hard example mining: the mean cross-entropy of the pixels whose
    probability of the true class is below ``thresh`` (loss above
    ``-log(thresh)``), and of at least the ``min_kept`` hardest labelled pixels
    (default: 1/16 of them) when fewer are that hard."""
    losses = F.cross_entropy(at_least_fp32(scores), target, ignore_index=ignore_index,
                             reduction="none").flatten()
    losses = losses[target.flatten() != ignore_index]
    if losses.numel() == 0:
        return scores.sum() * 0.0  # keeps the graph; nothing to learn from
    with torch.no_grad():
        threshold = -math.log(thresh)
        kept = losses.numel() // 16 if min_kept is None else min_kept
        kept = min(max(kept, 1), losses.numel())
        kth = losses.topk(kept).values[-1].item()
        threshold = min(threshold, kth)
    return losses[losses >= threshold].mean()


def segmentation_loss(config, ignore_index: int = 255, weights: Sequence[float] | None = None
                      ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(scores, target)`` of a ``TrainConfig``: OHEM or plain (optionally
    class-weighted) cross-entropy, both 0 on a batch without a labelled pixel
    (not nan, which would read as a divergence)."""
    if config.ohem:
        return lambda scores, target: ohem_cross_entropy(
            scores, target, config.ohem_thresh, config.ohem_min_kept, ignore_index)

    def loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=scores.device)
        return labelled_cross_entropy(at_least_fp32(scores), target, ignore_index, weight)
    return loss
