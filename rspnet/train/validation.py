"""Single-scale validation during training: mean loss and the confusion-matrix
summary, summed over the ranks of a data-parallel run."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from rspnet.engine import distributed
from rspnet.engine.scoring import class_scores
from rspnet.metrics import ConfusionMatrix, summarize

__all__ = ["validate"]


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, device: torch.device, class_names: Sequence[str],
             ignore_index: int = 255, dtype: torch.dtype | None = None,
             channels_last: bool = False) -> dict[str, Any]:
    """Mean loss and ``summarize`` of the confusion matrix over ``loader``
    (each rank of a data-parallel run passes its shard)."""
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(len(class_names), ignore_index)
    loss_sum, pixels = 0.0, 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        scores = class_scores(model, images, dtype, channels_last)   # the one inference path
        n = int((labels != ignore_index).sum())
        if n:
            loss_sum += F.cross_entropy(scores, labels, ignore_index=ignore_index, reduction="sum").item()
            pixels += n
        confusion.update(scores.argmax(1), labels)
    model.train(was_training)
    # data parallel: each rank saw a shard; the counts add up (no-op in one process)
    matrix = distributed.all_reduce_sum(confusion.matrix.to(device)).cpu()
    loss_sum, pixels = distributed.all_reduce_sum(
        torch.tensor([loss_sum, float(pixels)], dtype=torch.float64, device=device)).tolist()
    summary = summarize(matrix, class_names)
    summary["loss"] = loss_sum / pixels if pixels else None
    return summary
