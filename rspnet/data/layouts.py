"""Synthetic scenes written as a folder data set or a CamVid tree, with their
19 Cityscapes classes merged into the target's: data to try the ``folder``
and ``camvid`` commands on without downloading anything (the README's "Your
own data" walk-through, the tests).

    write_folder_layout(root)   root/images/{split}/scene_NNNN.png, root/masks/..., root/classes.json
    write_camvid_layout(root)   root/{split}/scene_NNNN.png, root/{split}annot/scene_NNNN.png
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from .labels import IGNORE_INDEX
from .synthetic import render_scene, scene_seed

__all__ = ["write_folder_layout", "write_camvid_layout", "FOLDER_DEMO_CLASSES"]

# The folder demo's classes: Cityscapes' trainIds grouped by its categories.
FOLDER_DEMO_CLASSES = ("flat", "construction", "nature", "sky", "object")
_FOLDER_MAP = (0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4)
_FOLDER_COLOURS = [(128, 64, 128), (70, 70, 70), (107, 142, 35), (70, 130, 180), (220, 20, 60)]
# Cityscapes trainId -> CamVid class: road, sidewalk -> Road, Pavement; building,
# wall -> Building; fence; pole; traffic light, sign -> SignSymbol; vegetation,
# terrain -> Tree; sky; person -> Pedestrian; rider, motorcycle, bicycle ->
# Bicyclist; car, truck, bus, train -> Car.
_CAMVID_MAP = (3, 4, 1, 1, 7, 2, 6, 6, 5, 5, 0, 9, 10, 8, 8, 8, 8, 10, 10)


def _remap(train_ids: np.ndarray, mapping, void: int) -> np.ndarray:
    table = np.full(256, void, dtype=np.uint8)
    table[:len(mapping)] = mapping
    table[IGNORE_INDEX] = void
    return table[train_ids]


def _scene(seed: int, split: str, index: int, size) -> tuple[np.ndarray, np.ndarray]:
    # the synthetic stream has train and val; test scenes are val scenes of another seed
    return render_scene(scene_seed(seed + (split == "test"), "val" if split == "test" else split, index), *size)


def write_folder_layout(root: str | os.PathLike, splits: dict[str, int] | None = None,
                        size: tuple[int, int] = (128, 256), seed: int = 0, ignore_index: int = 255) -> list[str]:
    """A folder data set of synthetic scenes in ``FOLDER_DEMO_CLASSES``
    (void written as ``ignore_index``) under ``root``; returns the image paths."""
    root = os.fspath(root)
    splits = {"train": 16, "val": 4} if splits is None else splits
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "classes.json"), "w") as f:
        json.dump({"classes": list(FOLDER_DEMO_CLASSES), "colors": [list(c) for c in _FOLDER_COLOURS],
                   "ignore_index": ignore_index}, f, indent=1)
    written = []
    for split, count in splits.items():
        for d in ("images", "masks"):
            os.makedirs(os.path.join(root, d, split), exist_ok=True)
        for i in range(count):
            image, train_ids = _scene(seed, split, i, size)
            path = os.path.join(root, "images", split, f"scene_{i:04d}.png")
            Image.fromarray(image).save(path)
            Image.fromarray(_remap(train_ids, _FOLDER_MAP, ignore_index)).save(
                os.path.join(root, "masks", split, f"scene_{i:04d}.png"))
            written.append(path)
    return written


def write_camvid_layout(root: str | os.PathLike, splits: dict[str, int] | None = None,
                        size: tuple[int, int] = (128, 160), seed: int = 0, void: int = 255) -> list[str]:
    """A CamVid tree (SegNet layout) of synthetic scenes in CamVid's 11
    classes, void written as ``void`` (255, or 11 as the SegNet copy does)."""
    root = os.fspath(root)
    splits = {"train": 16, "val": 4, "test": 4} if splits is None else splits
    written = []
    for split, count in splits.items():
        for d in (split, split + "annot"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        for i in range(count):
            image, train_ids = _scene(seed, split, i, size)
            path = os.path.join(root, split, f"scene_{i:04d}.png")
            Image.fromarray(image).save(path)
            Image.fromarray(_remap(train_ids, _CAMVID_MAP, void)).save(
                os.path.join(root, split + "annot", f"scene_{i:04d}.png"))
            written.append(path)
    return written
