"""Data sets for rspnet: the embedded synthetic street scenes, Cityscapes,
CamVid, and a folder of the user's own images and masks.

The rest of rspnet goes through ``get_dataset`` and ``class_table``; every
item is ``(FloatTensor[3,H,W] normalised with MEAN/STD, LongTensor[H,W] class
indices 0..C-1, IGNORE_INDEX = 255 for unlabelled pixels)``, whatever the data
set's files use for void. The classes (names, colours, C) are the data set's
``ClassTable``: Cityscapes' 19 for the synthetic scenes and Cityscapes,
CamVid's 11, a folder data set's from its ``classes.json``. Every image and
mask file is read by ``rspnet.data.reader`` (its rules: regular files only,
``MAX_PIXELS``, EXIF orientation, 16-bit and float images).
"""
from __future__ import annotations

import os

import torch

from .cached import CachedDataset
from .cityscapes import Cityscapes
from .classes import CAMVID, CITYSCAPES, CLASSES_FILE, ClassTable, load_classes, parse_classes
from .folder import IMAGE_EXTENSIONS, CamVid, FolderDataset, LabelledImages, camvid_dirs, folder_dirs
from .reader import MAX_PIXELS, check_regular, image_rgb, image_size, read_image, read_mask
from .labels import (CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize,
                     labelid_to_trainid, trainid_to_labelid)
from .layouts import FOLDER_DEMO_CLASSES, write_camvid_layout, write_folder_layout
from .weights import CLASS_WEIGHTS, CLASS_WEIGHTS_HELP, class_pixel_counts, class_weights
from .synthetic import SyntheticScenes, render_scene, write_cityscapes_layout
from .transforms import (MEAN, STD, TrainTransform, ValTransform, denormalize, image_tensor, to_tensors,
                         worker_init_fn)

__all__ = [
    "NUM_CLASSES", "CLASS_NAMES", "PALETTE", "IGNORE_INDEX", "MEAN", "STD",
    "get_dataset", "denormalize", "colorize", "labelid_to_trainid", "trainid_to_labelid",
    "SyntheticScenes", "Cityscapes", "CamVid", "FolderDataset", "LabelledImages", "render_scene",
    "write_cityscapes_layout", "write_folder_layout", "write_camvid_layout",
    "TrainTransform", "ValTransform", "worker_init_fn", "DATASETS", "CachedDataset",
    "SYNTHETIC_IMAGES", "SYNTHETIC_TRAINING_IMAGES", "check_source", "class_table", "ClassTable", "CITYSCAPES", "CAMVID",
    "load_classes", "parse_classes", "read_image", "read_mask", "image_rgb", "image_size", "check_regular",
    "MAX_PIXELS", "IMAGE_EXTENSIONS", "to_tensors", "CLASS_WEIGHTS", "CLASS_WEIGHTS_HELP", "class_pixel_counts", "class_weights",
    "image_tensor", "SPLITS", "FOLDER_DEMO_CLASSES",
]

DATASETS = ("synthetic", "cityscapes", "camvid", "folder")
SPLITS = ("train", "val", "test")
_ROOT_HELP = {"cityscapes": "the directory that holds leftImg8bit/ and gtFine/",
              "camvid": "the directory that holds train/ trainannot/ val/ valannot/",
              "folder": "the directory that holds images/ masks/ and classes.json"}

# The one table of how many synthetic scenes each use draws by default (the
# generator is unlimited; why these counts: docs/train_evaluate_export.md and
# docs/design.md): ``get_dataset`` without a length, a training run's train and
# val splits, and a search (split in halves A / B).
SYNTHETIC_IMAGES = {"dataset": {"train": 64, "val": 16}, "training": {"train": 512, "val": 64}, "search": 224}
SYNTHETIC_TRAINING_IMAGES = SYNTHETIC_IMAGES["training"]


def _split_dirs(name: str, root: str, split: str) -> tuple[str, str]:
    if name == "cityscapes":
        return os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split)
    if name == "camvid":
        return camvid_dirs(root, split)
    return folder_dirs(root, split)


def check_source(name: str, root: str | None, splits: tuple[str, ...] = ()) -> None:
    """``ValueError`` (naming the CLI flags and the path) unless data set
    ``name`` can be read from ``root``: the cheap checks only (directories of
    ``splits``, ``classes.json``); the files themselves are checked when the
    data set is built."""
    if name not in DATASETS:
        raise ValueError(f"--data {name!r}: unknown data set; choices: {', '.join(DATASETS)}")
    if name == "synthetic":
        if root:   # a data root is only read by the data sets on disk: never ignore one silently
            raise ValueError(f"--data-root {root} is given, but --data is synthetic (the built-in scenes, "
                             f"which read no directory); add --data camvid, cityscapes or folder")
        return
    if not (root and os.path.isdir(root)):
        raise ValueError(f"--data {name} needs --data-root, an existing directory ({_ROOT_HELP[name]})"
                         + (f"; {root} is not one" if root else ""))
    if name == "folder":
        load_classes(os.path.join(root, CLASSES_FILE))
    for split in splits:
        for d in _split_dirs(name, root, split):
            if not os.path.isdir(d):
                raise ValueError(f"--data-root {root}: {d} is missing (--data {name}: {_ROOT_HELP[name]})")


def class_table(name: str, root: str | None = None) -> ClassTable:
    """The classes of data set ``name`` (a folder data set's from
    ``root/classes.json``; ``ValueError`` naming the file if it is bad)."""
    if name in ("synthetic", "cityscapes"):
        return CITYSCAPES
    if name == "camvid":
        return CAMVID
    if name == "folder":
        if root is None:
            raise ValueError("--data folder needs --data-root")
        return load_classes(os.path.join(root, CLASSES_FILE))
    raise ValueError(f"unknown dataset {name!r}; choices: {', '.join(DATASETS)}")


def get_dataset(name: str = "synthetic", split: str = "train", root: str | None = None,
                size: tuple[int, int] | None = (128, 256), length: int | None = None,
                seed: int = 0, augment: bool = False, crop: tuple[int, int] | None = None,
                class_crops: float = 0.0) -> torch.utils.data.Dataset:
    """The data set ``name`` (one of ``DATASETS``), split 'train' or 'val'
    (CamVid and folder data sets also 'test', and 'trainval': train and val
    together, in that order, for a final training run).

    size:    (H, W) of the items.  Synthetic scenes are rendered at this size;
             the images of the other data sets are resized to it (None keeps
             each image's own size, which the official evaluation needs).
    length:  number of items; synthetic default 64 train / 16 val, the others
             default all images (else the first ``length`` in sorted order).
    seed:    synthetic scene stream and augmentation seed.
    augment: train only: random scale 0.5-2x of ``size``, crop to ``size``
             (padding ignored), flip, photometric jitter.  Call the data set's
             ``set_epoch(epoch)`` every epoch so the augmentation changes.
    crop:    augment only: (H, W) of the random crops, cut from the image
             scaled 0.5-2x of ``size`` (None: ``size``); smaller crops train
             on the same scales for a fraction of the cost.
    class_crops: augment only: the probability that a crop is placed around
             a pixel of a class drawn uniformly from the image's classes
             (``TrainTransform``; 0: uniform crops).

    Cityscapes, CamVid and folder data sets check every file pair at
    construction (``LabelledImages.verify``: each decoded by the reader an
    item uses): a bad file is a ``ValueError`` naming it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choices: {', '.join(DATASETS)}")
    if augment and split not in ("train", "trainval"):
        raise ValueError(f"augment=True is for the train split only, got split={split!r}")
    if size is None and (augment or name == "synthetic"):
        raise ValueError(f"size=None (native resolution) is only for real images without "
                         f"augmentation; got name={name!r}, augment={augment}")
    if crop is not None and not augment:
        raise ValueError("crop= is for augment=True (the random crops of training)")
    if class_crops and not augment:
        raise ValueError("class_crops= is for augment=True (it places the random crops of training)")
    transform = (TrainTransform(crop_size=crop or size, base_size=size, class_crops=class_crops, seed=seed)
                 if augment else ValTransform(size))
    if split == "trainval":   # the published recipes' final runs: train and val as one training set
        if name not in ("camvid", "folder"):
            raise ValueError(f"split 'trainval' is for camvid and folder data sets, got {name!r}")
        parts = [get_dataset(name, s, root, size) for s in ("train", "val")]
        merged = LabelledImages(parts[0].images + parts[1].images, parts[0].labels + parts[1].labels,
                                parts[0].classes, transform, length, "trainval")
        merged.root = parts[0].root
        return merged

    if name == "synthetic":
        if length is None:
            length = SYNTHETIC_IMAGES["dataset"].get(split, 0)
        return SyntheticScenes(split=split, size=size, length=length, seed=seed,
                               transform=transform if augment else None)

    if root is None:
        raise ValueError(f"get_dataset({name!r}) needs root=, {_ROOT_HELP[name]}")
    if name == "cityscapes":
        return Cityscapes(root, split=split, length=length, transform=transform)
    if name == "camvid":
        return CamVid(root, split=split, length=length, transform=transform)
    return FolderDataset(root, split=split, length=length, transform=transform)
