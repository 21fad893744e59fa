"""Cityscapes in its official layout.

    root/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

Labels are read as labelIds and mapped to the 19 trainIds (255 = ignore) with
the table from ``cityscapesscripts`` (see ``labels``).  Problems with the tree
are reported with the offending path, at construction for missing files and
when an item is read for undecodable or mis-sized ones (decoding every file up
front would take minutes on the real data set).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from .labels import labelid_to_trainid
from .transforms import ValTransform

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


def _read_png(path: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        # PIL raises a mix of these for truncated or garbage files.
        raise ValueError(f"cannot decode {path}: {err}") from err
    return image


class Cityscapes(torch.utils.data.Dataset):
    """Fine-annotated Cityscapes ``split`` ('train' or 'val') under ``root``.

    Items are ``(FloatTensor[3,H,W] normalised with ImageNet mean/std,
    LongTensor[H,W] trainIds, 255 = ignore)``; ``transform(image, label,
    index)`` on the uint8 arrays replaces the plain normalisation.
    ``images`` and ``labels`` list the file paths, in item order (sorted), so
    predictions can be written under the matching names.  ``length`` keeps
    only the first images, for quick runs.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None,
                 length: int | None = None):
        if split == "test":
            raise ValueError("Cityscapes 'test' has no public labels (its gtFine files are "
                             "placeholders); use split='train' or 'val'")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Cityscapes root not found: {root}")
        image_dir = os.path.join(root, "leftImg8bit", split)
        label_dir = os.path.join(root, "gtFine", split)
        for d in (image_dir, label_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"Cityscapes split directory not found: {d}")

        self.images, self.labels = [], []
        for city in sorted(os.listdir(image_dir)):
            city_dir = os.path.join(image_dir, city)
            if not os.path.isdir(city_dir):
                continue
            for name in sorted(os.listdir(city_dir)):
                if not name.endswith(_IMAGE_SUFFIX):
                    continue
                stem = name[:-len(_IMAGE_SUFFIX)]
                label = os.path.join(label_dir, city, stem + _LABEL_SUFFIX)
                if not os.path.isfile(label):
                    raise FileNotFoundError(
                        f"label file missing for image {os.path.join(city_dir, name)}: "
                        f"expected {label}")
                self.images.append(os.path.join(city_dir, name))
                self.labels.append(label)
        if not self.images:
            raise FileNotFoundError(f"no *{_IMAGE_SUFFIX} images found under {image_dir}")
        if length is not None:
            self.images, self.labels = self.images[:length], self.labels[:length]
        self.split = split
        self.transform = transform if transform is not None else ValTransform()

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw uint8 (image HxWx3, trainIds HxW) of item ``index``."""
        image = np.array(_read_png(self.images[index]).convert("RGB"))
        label_path = self.labels[index]
        label = np.array(_read_png(label_path))
        if label.ndim != 2 or label.dtype != np.uint8:
            raise ValueError(f"{label_path}: expected an 8-bit single-channel labelIds PNG, "
                             f"got shape {label.shape} dtype {label.dtype}")
        if label.shape != image.shape[:2]:
            raise ValueError(f"{label_path}: label size {label.shape[1]}x{label.shape[0]} "
                             f"differs from image size {image.shape[1]}x{image.shape[0]}")
        return image, labelid_to_trainid(label)

    def __getitem__(self, index: int):
        image, label = self.sample(index)
        return self.transform(image, label, index)

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the transform so augmentations differ per epoch."""
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)
