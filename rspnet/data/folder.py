"""Labelled image folders: the one data set class behind Cityscapes, CamVid
and a user's own folder of images and masks.

``LabelledImages`` holds matched (image, mask) file lists and a
``ClassTable``; an item is the image as RGB and the mask decoded to class
indices (255 void), through the same transforms for every layout. The layouts
differ only in how the pairs are found:

    FolderDataset   root/images/{split}/**/<name>.<jpg|png|...>
                    root/masks/{split}/**/<name>.png     (class indices; root/classes.json)
    CamVid          root/{split}/<name>.png, root/{split}annot/<name>.png
    Cityscapes      (rspnet.data.cityscapes)

``verify()`` is the pre-check: it reads every pair up front, one at a time,
through the very reader an item uses (``rspnet.data.reader``, whose rules it
enforces: regular files only, a pixel limit, full decoding), and checks the
mask 8-bit single-channel, of its image's size, and holding only class indices
and the ignore index. Each problem is a one-line ``ValueError`` naming the file.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np

from .classes import CAMVID, CLASSES_FILE, ClassTable, load_classes
from .reader import image_size, read_image, read_mask
from .transforms import TransformedSamples, ValTransform

__all__ = ["LabelledImages", "FolderDataset", "CamVid", "IMAGE_EXTENSIONS", "read_image", "read_mask", "image_size",
           "folder_pairs", "camvid_pairs", "SEGNET_CAMVID_SPLITS", "warn_camvid_splits"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
# CamVid's split as the SegNet tutorial ships it, the one published results use
SEGNET_CAMVID_SPLITS = {"train": 367, "val": 101, "test": 233}
_camvid_warned: set[str] = set()


class LabelledImages(TransformedSamples):
    """Items ``(FloatTensor[3,H,W] normalised, LongTensor[H,W] class indices,
    255 void)`` of the pairs ``images[i]``, ``labels[i]``; ``transform(image,
    label, index)`` on the uint8 arrays (default: plain normalisation).
    ``length`` keeps only the first pairs."""

    def __init__(self, images: Sequence[str], labels: Sequence[str], classes: ClassTable, transform=None,
                 length: int | None = None, split: str = "train"):
        self.images, self.labels = list(images)[:length], list(labels)[:length]
        self.classes = classes
        self.split = split
        self.transform = transform if transform is not None else ValTransform()

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw uint8 (image HxWx3, class indices HxW) of item ``index``."""
        image = read_image(self.images[index])
        label_path = self.labels[index]
        label = read_mask(label_path)
        if label.shape != image.shape[:2]:
            raise ValueError(f"{label_path}: mask size {label.shape[1]}x{label.shape[0]} "
                             f"differs from image size {image.shape[1]}x{image.shape[0]} ({self.images[index]})")
        return image, self.classes.decode(label, label_path)

    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image, from the file headers."""
        return [image_size(p) for p in self.images]

    def verify(self) -> None:
        """The pre-check (module docstring): every pair decoded in full by
        ``sample``, as an item will be, and dropped before the next, so the
        memory it needs is one pair's; the first bad file is a ``ValueError``
        naming it."""
        for index in range(len(self)):
            self.sample(index)


def _walk(directory: str, extensions: Sequence[str]) -> dict[str, str]:
    """relative path without extension -> path, of the files under
    ``directory`` with one of ``extensions`` (hidden files skipped);
    ``ValueError`` for two files that differ only in their extension."""
    found: dict[str, str] = {}
    for parent, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if name.startswith(".") or ext.lower() not in extensions:
                continue
            path = os.path.join(parent, name)
            key = os.path.relpath(os.path.join(parent, stem), directory)
            if key in found:
                raise ValueError(f"{path} and {found[key]} have the same name: which one is meant is ambiguous")
            found[key] = path
    return found


def _need_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such directory ({what})")


def _pair(images: dict[str, str], masks: dict[str, str], image_dir: str, mask_dir: str,
          mask_ext: str = ".png") -> tuple[list[str], list[str]]:
    """Matched (images, masks) in sorted order; ``ValueError`` for an image
    without a mask or a mask without an image."""
    for key in sorted(images):
        if key not in masks:
            raise ValueError(f"image {images[key]} has no mask: expected {os.path.join(mask_dir, key + mask_ext)}")
    for key in sorted(masks):
        if key not in images:
            raise ValueError(f"mask {masks[key]} has no image: expected "
                             f"{os.path.join(image_dir, key)}.<{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}>")
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {image_dir}")
    keys = sorted(images)
    return [images[k] for k in keys], [masks[k] for k in keys]


def _masks(mask_dir: str) -> dict[str, str]:
    lossy = _walk(mask_dir, tuple(e for e in IMAGE_EXTENSIONS if e != ".png"))
    if lossy:
        raise ValueError(f"{next(iter(lossy.values()))}: masks must be PNG files of class indices")
    return _walk(mask_dir, (".png",))


def folder_dirs(root: str, split: str) -> tuple[str, str]:
    return os.path.join(root, "images", split), os.path.join(root, "masks", split)


def folder_pairs(root: str, split: str) -> tuple[list[str], list[str]]:
    """The (images, masks) of a folder data set's ``split``."""
    image_dir, mask_dir = folder_dirs(root, split)
    _need_dir(image_dir, f"a folder data set keeps its {split} images there")
    _need_dir(mask_dir, f"a folder data set keeps its {split} masks there")
    return _pair(_walk(image_dir, IMAGE_EXTENSIONS), _masks(mask_dir), image_dir, mask_dir)


def camvid_dirs(root: str, split: str) -> tuple[str, str]:
    return os.path.join(root, split), os.path.join(root, split + "annot")


def camvid_pairs(root: str, split: str) -> tuple[list[str], list[str]]:
    """The (images, masks) of CamVid's ``split`` (train, val or test)."""
    image_dir, mask_dir = camvid_dirs(root, split)
    _need_dir(image_dir, f"CamVid keeps its {split} images there")
    _need_dir(mask_dir, f"CamVid keeps its {split} annotations there")
    return _pair(_walk(image_dir, IMAGE_EXTENSIONS), _masks(mask_dir), image_dir, mask_dir)


def warn_camvid_splits(root: str) -> None:
    """One line on stderr, once per root and process (rank 0 only), when a
    CamVid root's train/val/test image counts are not SegNet's 367/101/233."""
    key = os.path.realpath(root)
    if key in _camvid_warned:
        return
    counts = [len(_walk(d, IMAGE_EXTENSIONS)) if os.path.isdir(d) else 0
              for d in (camvid_dirs(root, split)[0] for split in SEGNET_CAMVID_SPLITS)]
    if counts == list(SEGNET_CAMVID_SPLITS.values()):
        return
    _camvid_warned.add(key)
    if os.environ.get("RANK", "0") not in ("", "0"):
        return
    print(f"warning: CamVid at {root} has train/val/test = {'/'.join(map(str, counts))} images, not the "
          f"{'/'.join(map(str, SEGNET_CAMVID_SPLITS.values()))} of the SegNet tutorial's copy: other copies "
          f"split CamVid differently, so results on this one are not comparable with published ones",
          file=sys.stderr)


class FolderDataset(LabelledImages):
    """A folder data set (module docstring) with its ``classes.json``;
    ``verify`` (default on) checks every pair at construction."""

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None,
                 length: int | None = None, verify: bool = True):
        root = os.fspath(root)
        classes = load_classes(os.path.join(root, CLASSES_FILE))
        images, masks = folder_pairs(root, split)
        super().__init__(images, masks, classes, transform, length, split)
        self.root = root
        if verify:
            self.verify()


class CamVid(LabelledImages):
    """CamVid in the SegNet layout (module docstring): 11 classes, void 255
    (or 11, as the SegNet copy marks it); ``verify`` as ``FolderDataset``.
    A copy whose split counts are not the SegNet tutorial's gets a warning
    (``warn_camvid_splits``): its results are not comparable with published
    ones."""

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None,
                 length: int | None = None, verify: bool = True):
        root = os.fspath(root)
        images, masks = camvid_pairs(root, split)
        super().__init__(images, masks, CAMVID, transform, length, split)
        self.root = root
        if verify:
            self.verify()
        warn_camvid_splits(root)
