"""The one inference path: class scores of normalised images, used by the
search's split-B scoring, validation during training, ``rspnet.evaluate``
and ``rspnet.predict``, so that every command feeds the network the same
pixels for the same image.

The rule for fitting an image to the network's stride (it reaches 1/32
scale): pad at the bottom and right to the next multiple of ``MULTIPLE`` with
zeros -- the mean colour after normalisation, what training's crops pad
with -- and crop the scores back. No pixel is resampled unless the caller
asks for another size (``scales``, ``size``); then the image is resized to
it, padded the same way, and the scores resized back to ``out_size``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .precision import autocast

__all__ = ["MULTIPLE", "padded_size", "class_scores", "class_probabilities"]

MULTIPLE = 32


def padded_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``MULTIPLE``."""
    return -(-height // MULTIPLE) * MULTIPLE, -(-width // MULTIPLE) * MULTIPLE


def class_scores(model: torch.nn.Module, images: torch.Tensor, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> torch.Tensor:
    """Class scores [N, C, H, W] of normalised images [N, 3, H, W] of any
    size: padded for the network, cropped back, in float32 at least."""
    height, width = images.shape[-2:]
    ph, pw = padded_size(height, width)
    x = images if (ph, pw) == (height, width) else F.pad(images, (0, pw - width, 0, ph - height))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(images.device, amp_dtype):
        scores = model(x)
    scores = scores[..., :height, :width]
    return scores if scores.dtype == torch.float64 else scores.float()


def _resized(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def class_probabilities(model: torch.nn.Module, images: torch.Tensor, out_size: Sequence[int] | None = None,
                        scales: Sequence[float] = (1.0,), flip: bool = False, size: Sequence[int] | None = None,
                        amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> torch.Tensor:
    """Mean softmax probabilities [N, C, *out_size] over every scale (and its
    horizontal flip). Scale s feeds the network ``size * s`` (``size``
    defaults to the images' own; sizes are rounded to whole pixels) by the
    padding rule; scores are resized bilinearly to ``out_size`` (default:
    the images' size) where they differ."""
    base = tuple(size) if size is not None else tuple(images.shape[-2:])
    out_size = tuple(int(s) for s in (out_size or images.shape[-2:]))
    total, count = None, 0
    for scale in scales:
        x = _resized(images, tuple(max(1, int(round(s * scale))) for s in base))
        for flipped in ((False, True) if flip else (False,)):
            scores = class_scores(model, x.flip(-1) if flipped else x, amp_dtype, channels_last)
            scores = _resized(scores.flip(-1) if flipped else scores, out_size)
            probs = scores.softmax(1)
            total = probs if total is None else total + probs
            count += 1
    return total / count
