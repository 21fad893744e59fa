"""The training losses: pixel-wise cross-entropy ignoring the void label,
optionally class-weighted (``--class-weights``, computed once from the
training masks), and its online-hard-example-mining variant (``--ohem``)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

import torch
import torch.nn.functional as F

from rspnet.nn import labelled_cross_entropy

__all__ = ["at_least_fp32", "ohem_cross_entropy", "segmentation_loss", "CLASS_WEIGHTS", "class_pixel_counts",
           "class_weights"]

CLASS_WEIGHTS = ("none", "enet", "median")


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


def _raw_label(dataset, index: int) -> np.ndarray:
    """Item ``index``'s class indices as stored, before any augmentation."""
    source = dataset
    while not hasattr(source, "sample") and hasattr(source, "dataset"):
        source = source.dataset   # CachedDataset and the like
    if hasattr(source, "sample"):
        return np.asarray(source.sample(index)[1])
    return np.asarray(dataset[index][1])


def class_pixel_counts(dataset, num_classes: int, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Per class: its labelled pixels over ``dataset``'s masks, and the
    pixels of the images in which it appears (median frequency's denominator)."""
    pixels = np.zeros(num_classes, np.int64)
    present_in = np.zeros(num_classes, np.int64)
    for i in range(len(dataset)):
        label = _raw_label(dataset, i)
        counts = np.bincount(label[label != ignore_index].ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        present_in += (counts > 0) * label.size
    return pixels, present_in


def class_weights(kind: str, pixels: np.ndarray, present_in: np.ndarray) -> list[float] | None:
    """Loss weights per class from ``class_pixel_counts``: ``enet``
    1 / ln(1.02 + p) with p the class's share of the labelled pixels (Paszke et
    al. 2016); ``median`` median(f) / f with f a class's pixels over those of
    the images it appears in (Eigen & Fergus 2015); a class never seen gets 0.
    ``none``: None."""
    if kind == "none":
        return None
    if kind == "enet":
        share = pixels / max(int(pixels.sum()), 1)
        weights = 1.0 / np.log(1.02 + share)
    elif kind == "median":
        freq = np.divide(pixels, present_in, out=np.zeros(len(pixels)), where=present_in > 0)
        seen = freq > 0
        median = float(np.median(freq[seen])) if seen.any() else 0.0
        weights = np.divide(median, freq, out=np.zeros(len(pixels)), where=seen)
    else:
        raise ValueError(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}, got {kind!r}")
    return [float(w) if c > 0 else 0.0 for w, c in zip(weights, pixels)]


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
