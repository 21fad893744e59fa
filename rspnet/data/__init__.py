"""Data sets for rspnet: the embedded synthetic street scenes and Cityscapes.

The rest of rspnet goes through ``get_dataset``; every item is
``(FloatTensor[3,H,W] normalised with MEAN/STD, LongTensor[H,W] trainIds in
0..18, IGNORE_INDEX = 255 for unlabelled pixels)``.
"""
from __future__ import annotations

import os

import torch

from .cached import CachedDataset
from .cityscapes import Cityscapes
from .labels import (CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize,
                     labelid_to_trainid, trainid_to_labelid)
from .synthetic import SyntheticScenes, render_scene, write_cityscapes_layout
from .transforms import MEAN, STD, TrainTransform, ValTransform, denormalize, worker_init_fn

__all__ = [
    "NUM_CLASSES", "CLASS_NAMES", "PALETTE", "IGNORE_INDEX", "MEAN", "STD",
    "get_dataset", "denormalize", "colorize", "labelid_to_trainid", "trainid_to_labelid",
    "SyntheticScenes", "Cityscapes", "render_scene", "write_cityscapes_layout",
    "TrainTransform", "ValTransform", "worker_init_fn", "DATASETS", "CachedDataset",
    "SYNTHETIC_TRAINING_IMAGES", "check_source",
]

DATASETS = ("synthetic", "cityscapes")
_SYNTHETIC_LENGTH = {"train": 64, "val": 16}

# The synthetic scenes a training run uses by default. The generator is
# unlimited: with the 64 default scenes a 0.1 M-parameter network overfits
# (train loss keeps falling while val mIoU stalls, docs/train_evaluate_export.md);
# 512 do not, and 64 validation scenes make the logged mIoU less noisy than 16.
SYNTHETIC_TRAINING_IMAGES = {"train": 512, "val": 64}


def check_source(name: str, root: str | None) -> None:
    """``ValueError`` (naming the CLI flags) unless data set ``name`` can be
    read from ``root``."""
    if name not in DATASETS:
        raise ValueError(f"--data {name!r}: unknown data set; choices: {', '.join(DATASETS)}")
    if name == "cityscapes" and not (root and os.path.isdir(root)):
        raise ValueError("--data cityscapes needs --data-root, an existing directory")


def get_dataset(name: str = "synthetic", split: str = "train", root: str | None = None,
                size: tuple[int, int] | None = (128, 256), length: int | None = None,
                seed: int = 0, augment: bool = False) -> torch.utils.data.Dataset:
    """The data set ``name`` ('synthetic' or 'cityscapes'), split 'train' or 'val'.

    size:    (H, W) of the items.  Synthetic scenes are rendered at this size;
             Cityscapes images are resized to it (None keeps the native
             1024x2048, which the official evaluation needs).
    length:  number of items; synthetic default 64 train / 16 val, Cityscapes
             default all images (else the first ``length`` in sorted order).
    seed:    synthetic scene stream and augmentation seed.
    augment: train only: random scale 0.5-2x of ``size``, crop to ``size``
             (padding ignored), flip, photometric jitter.  Call the data set's
             ``set_epoch(epoch)`` every epoch so the augmentation changes.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choices: {', '.join(DATASETS)}")
    if augment and split != "train":
        raise ValueError(f"augment=True is for the train split only, got split={split!r}")
    if size is None and (augment or name == "synthetic"):
        raise ValueError(f"size=None (native resolution) is only for Cityscapes without "
                         f"augmentation; got name={name!r}, augment={augment}")
    transform = TrainTransform(crop_size=size, base_size=size, seed=seed) if augment else None

    if name == "synthetic":
        if length is None:
            length = _SYNTHETIC_LENGTH.get(split, 0)
        return SyntheticScenes(split=split, size=size, length=length, seed=seed,
                               transform=transform)

    if root is None:
        raise ValueError("get_dataset('cityscapes') needs root=, the directory that holds "
                         "leftImg8bit/ and gtFine/")
    return Cityscapes(root, split=split, length=length,
                      transform=transform if augment else ValTransform(size))
