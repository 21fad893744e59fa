"""Per-class loss weights of a data set (``--class-weights`` of search and
training): the pixel counts of its masks as stored, and the published
weightings computed from them."""
from __future__ import annotations

import numpy as np

__all__ = ["CLASS_WEIGHTS", "CLASS_WEIGHTS_HELP", "class_pixel_counts", "class_weights"]

CLASS_WEIGHTS = ("none", "enet", "median", "sqrt")
# what every --class-weights flag says the choices compute
CLASS_WEIGHTS_HELP = ("enet = 1/ln(1.02 + p), p the class's share of the pixels; median = median frequency / "
                      "the class's frequency; sqrt = 1/sqrt(p)")


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
    the images it appears in (Eigen & Fergus 2015); ``sqrt`` 1 / sqrt(p), the
    inverse square root of the share (between ENet's near-flat weights of the
    rare classes and the median's, which starve the large ones); a class
    never seen gets 0. ``none``: None."""
    if kind == "none":
        return None
    share = pixels / max(int(pixels.sum()), 1)
    if kind == "enet":
        weights = 1.0 / np.log(1.02 + share)
    elif kind == "sqrt":
        weights = np.divide(1.0, np.sqrt(share), out=np.zeros(len(pixels)), where=share > 0)
    elif kind == "median":
        freq = np.divide(pixels, present_in, out=np.zeros(len(pixels)), where=present_in > 0)
        seen = freq > 0
        median = float(np.median(freq[seen])) if seen.any() else 0.0
        weights = np.divide(median, freq, out=np.zeros(len(pixels)), where=seen)
    else:
        raise ValueError(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}, got {kind!r}")
    return [float(w) if c > 0 else 0.0 for w, c in zip(weights, pixels)]
