"""The 19 Cityscapes training classes and the labelId <-> trainId tables.

The labelId -> trainId table is taken from ``cityscapesscripts.helpers.labels``
(the official definition) when that package is importable, so the loader and the
official evaluation can never disagree.  A hard-coded copy is kept so the
library still works without the package; ``tests/data/test_synthetic.py``
checks the copy against the package.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)

# Official Cityscapes colours, indexed by trainId.
PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)

# labelId of each trainId (road is labelId 7, ..., bicycle is labelId 33).
_TRAINID_LABELIDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26,
                     27, 28, 31, 32, 33)


def _fallback_table() -> np.ndarray:
    """labelId -> trainId table hard-coded from the Cityscapes definition."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[list(_TRAINID_LABELIDS)] = np.arange(NUM_CLASSES, dtype=np.uint8)
    return table


def _package_table() -> np.ndarray | None:
    """labelId -> trainId table from cityscapesscripts, or None if not installed."""
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        return None
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in labels:
        # 'license plate' has id -1 and never appears in a labelIds PNG; trainIds
        # 255 and -1 both mean "not evaluated".
        if 0 <= label.id < 256 and 0 <= label.trainId < NUM_CLASSES:
            table[label.id] = label.trainId
    return table


_table = _package_table()
LABELID_TO_TRAINID = _fallback_table() if _table is None else _table
LABELID_TO_TRAINID.flags.writeable = False

# Inverse table for writing official prediction PNGs: every trainId goes back
# to its labelId and ignore goes to labelId 0 ('unlabeled').
TRAINID_TO_LABELID = np.zeros(256, dtype=np.uint8)
TRAINID_TO_LABELID[LABELID_TO_TRAINID[LABELID_TO_TRAINID != IGNORE_INDEX]] = (
    np.nonzero(LABELID_TO_TRAINID != IGNORE_INDEX)[0])
TRAINID_TO_LABELID.flags.writeable = False
del _table


def labelid_to_trainid(label_ids: np.ndarray) -> np.ndarray:
    """Map a uint8 labelIds array to trainIds (0..18, 255 = ignore)."""
    return LABELID_TO_TRAINID[np.asarray(label_ids, dtype=np.uint8)]


def trainid_to_labelid(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds (0..18, 255 = ignore) to labelIds, e.g. to write the
    prediction PNGs that the official Cityscapes evaluation reads."""
    return TRAINID_TO_LABELID[np.asarray(train_ids, dtype=np.uint8)]


def colorize(trainid_map: np.ndarray) -> np.ndarray:
    """RGB uint8 picture (H, W, 3) of a trainId map; ignore is drawn black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[np.asarray(trainid_map, dtype=np.uint8)]
