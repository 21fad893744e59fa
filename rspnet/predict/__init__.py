"""Segmenting pictures with a trained network: ``rspnet.predict(model, image)``
gives the class map of one image; ``python -m rspnet.predict`` (``__main__``)
does it for files and folders and writes class PNGs and overlays.

Whole-image inference by the one inference path (``rspnet.engine.scoring``):
the image, normalised as in training, is padded at the bottom and right to
the next multiple of 32 with the mean colour and the class scores cropped
back, so the class map has the image's own resolution and no pixel is
resampled. ``flip`` also runs the mirrored image and averages the two
softmax probabilities.

The module itself is callable, so ``rspnet.predict(model, image)`` and
``from rspnet import predict; predict(model, image)`` work whether or not the
command-line module has been imported.
"""
from __future__ import annotations

import os
import sys
import types
from typing import Any

import numpy as np
import torch
from PIL import Image

from rspnet import data
from rspnet.engine.scoring import MULTIPLE, class_probabilities, class_scores, padded_size

__all__ = ["predict", "predict_batch", "padded_size", "as_rgb", "MULTIPLE"]


def as_rgb(image: Any) -> np.ndarray:
    """uint8 (H, W, 3) of a path, a PIL image (both by ``rspnet.data``'s
    reader: EXIF orientation, 16-bit and float greyscale), or a uint8 array
    (H, W, 3) or (H, W)."""
    if isinstance(image, (str, os.PathLike)):
        return data.read_image(os.fspath(image))
    if isinstance(image, Image.Image):
        return data.image_rgb(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"expected a uint8 picture (H, W, 3) or (H, W), got shape {array.shape} "
                         f"dtype {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


@torch.no_grad()
def predict_batch(model: torch.nn.Module, images: torch.Tensor, flip: bool = False,
                  amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Class indices [N, H, W] (int64) of normalised images [N, 3, H, W] of
    any size, on the images' device; the model must be in eval mode."""
    if not flip:
        return class_scores(model, images, amp_dtype).argmax(1)
    return class_probabilities(model, images, flip=True, amp_dtype=amp_dtype).argmax(1)


def predict(model: torch.nn.Module, image: Any, flip: bool = False) -> np.ndarray:
    """The class map (H, W) of ``image`` (a path, PIL image or uint8 array,
    ``as_rgb``) at its own resolution: class indices of the model's classes,
    uint8. Runs on the model's device, in eval mode (restored afterwards)."""
    rgb = as_rgb(image)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        classes = predict_batch(model, data.image_tensor(rgb)[None].to(device), flip)[0]
    finally:
        model.train(was_training)
    return classes.to(torch.uint8).cpu().numpy()


class _CallableModule(types.ModuleType):
    """``rspnet.predict`` is this package; calling it calls ``predict``."""

    def __call__(self, model: torch.nn.Module, image: Any, flip: bool = False) -> np.ndarray:
        return predict(model, image, flip)


sys.modules[__name__].__class__ = _CallableModule
