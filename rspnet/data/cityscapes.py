"""Cityscapes in its official layout.

    root/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    root/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

Labels are read as labelIds and mapped to the 19 trainIds (255 = ignore) with
the table from ``cityscapesscripts`` (see ``labels``).  Problems with the tree
are reported with the offending path, at construction: missing files, and, by
the pre-check every data set runs (``LabelledImages.verify``: each pair decoded
by the reader an item uses), undecodable or mis-sized ones. On the full train
split the pre-check reads 5950 files once (minutes on one core), not a crash
hours into a run; ``verify=False`` skips it.
"""
from __future__ import annotations

import os

from .classes import CITYSCAPES
from .folder import LabelledImages

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(LabelledImages):
    """Fine-annotated Cityscapes ``split`` ('train' or 'val') under ``root``.

    Items are ``(FloatTensor[3,H,W] normalised with ImageNet mean/std,
    LongTensor[H,W] trainIds, 255 = ignore)``; ``transform(image, label,
    index)`` on the uint8 arrays replaces the plain normalisation.
    ``images`` and ``labels`` list the file paths, in item order (sorted), so
    predictions can be written under the matching names.  ``length`` keeps
    only the first images, for quick runs (and only those are checked).
    (Reading and checking an item is ``LabelledImages``', with the labelId ->
    trainId class table; ``verify`` as ``FolderDataset``.)
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None,
                 length: int | None = None, verify: bool = True):
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

        images, labels = [], []
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
                images.append(os.path.join(city_dir, name))
                labels.append(label)
        if not images:
            raise FileNotFoundError(f"no *{_IMAGE_SUFFIX} images found under {image_dir}")
        super().__init__(images, labels, CITYSCAPES, transform, length, split)
        if verify:
            self.verify()

