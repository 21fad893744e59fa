"""Segmentation metrics: confusion matrix, per-class IoU, mIoU, pixel accuracy.

The definitions are those of the official Cityscapes evaluation
(``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``), so that the
numbers rspnet reports are the numbers the benchmark would report:

* pixels whose ground truth is ``ignore_index`` are not counted at all;
* ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``, a class with an empty union has no
  IoU (NaN) rather than 0 or 1;
* ``mIoU`` is the mean over the classes that have an IoU.

Counts are kept as int64 so that a full Cityscapes val pass (500 images of
2 Mpx) cannot overflow, and ratios are formed in float64.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["confusion_matrix", "ConfusionMatrix", "iou_per_class", "mean_iou", "pixel_accuracy",
           "class_accuracy", "summarize", "format_table"]


def confusion_matrix(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
                     num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """int64 ``[num_classes, num_classes]`` counts, rows = ground truth,
    columns = prediction; pixels whose target is ``ignore_index`` are left out.

    ``pred`` and ``target`` are integer maps of one shape (any number of
    dimensions). A target outside ``[0, num_classes)`` other than
    ``ignore_index``, or a prediction outside ``[0, num_classes)`` on a counted
    pixel, is an error: silently dropping such pixels would inflate the IoU.
    """
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: prediction shape {tuple(pred.shape)} differs from "
                         f"target shape {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("confusion_matrix: prediction and target must be integer class maps "
                        "(take the argmax of the logits first)")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).to(target.device).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel():
        if int(target.min()) < 0 or int(target.max()) >= num_classes:
            bad = target[(target < 0) | (target >= num_classes)][0].item()
            raise ValueError(f"confusion_matrix: target value {bad} is neither a class in "
                             f"[0, {num_classes}) nor ignore_index={ignore_index}")
        if int(pred.min()) < 0 or int(pred.max()) >= num_classes:
            bad = pred[(pred < 0) | (pred >= num_classes)][0].item()
            raise ValueError(f"confusion_matrix: prediction value {bad} on a labelled pixel is not "
                             f"a class in [0, {num_classes})")
    index = target * num_classes + pred
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches; the counting runs on the
    device of the inputs (a GPU pass stays on the GPU until ``matrix``)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self._counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._counts += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        self._counts.zero_()

    @property
    def matrix(self) -> torch.Tensor:
        return self._counts.clone()

    def summary(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        return summarize(self._counts, class_names)


def _f64(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    matrix = np.asarray(torch.as_tensor(confusion).cpu(), dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {matrix.shape}")
    return matrix


def iou_per_class(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    """float64 IoU of every class; NaN where the class is in neither the
    labels nor the predictions (as the official evaluation)."""
    m = _f64(confusion)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(confusion: torch.Tensor | np.ndarray) -> float:
    """Mean IoU over the classes that have one; NaN when nothing was counted."""
    iou = iou_per_class(confusion)
    valid = ~np.isnan(iou)
    return float(iou[valid].mean()) if valid.any() else math.nan


def pixel_accuracy(confusion: torch.Tensor | np.ndarray) -> float:
    """Correct / labelled pixels; NaN when nothing was counted."""
    m = _f64(confusion)
    total = m.sum()
    return float(np.trace(m) / total) if total > 0 else math.nan


def class_accuracy(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-class recall TP / (TP + FN); NaN for classes absent from the labels."""
    m = _f64(confusion)
    support = m.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(m) / np.where(support > 0, support, 1), np.nan)


def _num(x: float) -> float | None:
    """JSON has no NaN: absent values become null."""
    return None if math.isnan(x) else float(x)


def summarize(confusion: torch.Tensor | np.ndarray,
              class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything a report needs, JSON-ready (NaN written as null)."""
    m = _f64(confusion)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(m))]
    if len(names) != len(m):
        raise ValueError(f"{len(names)} class names for a {len(m)}-class confusion matrix")
    iou, acc = iou_per_class(m), class_accuracy(m)
    accs = acc[~np.isnan(acc)]
    return {
        "miou": _num(mean_iou(m)),
        "pixel_accuracy": _num(pixel_accuracy(m)),
        "mean_class_accuracy": _num(float(accs.mean()) if accs.size else math.nan),
        "classes_evaluated": int((~np.isnan(iou)).sum()),
        "labelled_pixels": int(m.sum()),
        "per_class": {name: {"iou": _num(iou[i]), "accuracy": _num(acc[i]),
                             "pixels": int(m[i].sum())} for i, name in enumerate(names)},
    }


def format_table(summary: dict[str, Any], title: str | None = None) -> str:
    """Per-class table (IoU, accuracy, labelled pixels) with mIoU and pixel
    accuracy at the bottom; classes with no IoU show 'n/a'."""
    def pct(x):
        return "   n/a" if x is None else f"{100 * x:6.2f}"

    width = max([len("pixel accuracy")] + [len(n) for n in summary["per_class"]])
    rule = "-" * (width + 32)
    lines = [title] if title else []
    lines += [f"{'class':<{width}}   IoU %  Acc %      pixels", rule]
    for name, row in summary["per_class"].items():
        lines.append(f"{name:<{width}}  {pct(row['iou'])} {pct(row['accuracy'])} {row['pixels']:>11d}")
    lines += [rule,
              f"{'mIoU':<{width}}  {pct(summary['miou'])}   ({summary['classes_evaluated']} classes)",
              f"{'pixel accuracy':<{width}}  {pct(summary['pixel_accuracy'])}",
              f"{'mean class acc':<{width}}  {pct(summary['mean_class_accuracy'])}"]
    return "\n".join(lines)
