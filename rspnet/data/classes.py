"""Class tables: what the values of a data set's masks mean.

A ``ClassTable`` holds the class names, one colour per class, and how the
values stored in the mask files map to the class indices the network learns
(``0..num_classes-1``, ``IGNORE_INDEX`` = 255 for pixels no loss or score
counts). Every data set's items carry class indices with void as 255 whatever
its files use (Cityscapes labelIds, CamVid's 255 or 11, a folder data set's
own ignore index), so the loss, the augmentation's padding and the metrics
need to know only 255.

``CITYSCAPES`` (also the synthetic scenes') and ``CAMVID`` are built in; a
folder data set describes its classes in ``classes.json`` (``load_classes``).
"""
from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .labels import CLASS_NAMES, IGNORE_INDEX, LABELID_TO_TRAINID, PALETTE, TRAINID_TO_LABELID

from .reader import check_regular

__all__ = ["ClassTable", "CITYSCAPES", "CAMVID", "load_classes", "CLASSES_FILE", "INVALID", "MAX_CLASSES"]

CLASSES_FILE = "classes.json"
INVALID = -1            # in a ClassTable's lookup: a mask value that is neither a class nor void
MAX_CLASSES = 255       # an 8-bit mask holds 256 values: the classes and one ignore index
# Unicode categories refused in class names: controls, lone surrogates, line and paragraph separators
_UNPRINTABLE = ("Cc", "Cs", "Zl", "Zp")


def default_palette(count: int) -> np.ndarray:
    """Distinct colours for ``count`` classes that came without any: the
    PASCAL VOC bit-interleaving palette without its black (0 is often
    background and must not vanish in an overlay)."""
    colours = np.zeros((count, 3), dtype=np.uint8)
    for i in range(count):
        label, c = i + 1, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                c[channel] |= ((label >> channel) & 1) << shift
            label >>= 3
        colours[i] = c
    return colours


@dataclass(frozen=True, eq=False)
class ClassTable:
    """names: one per class index; colours: uint8 [num_classes, 3];
    lookup: int16 [256], mask file value -> class index, 255 (void) or
    ``INVALID``; ignore_value: the value a prediction file writes for void
    (the data set's own ignore index)."""
    names: tuple[str, ...]
    colours: np.ndarray
    lookup: np.ndarray
    ignore_value: int = IGNORE_INDEX
    encode_table: np.ndarray | None = None   # class index -> file value (None: identity)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def simple(cls, names: Sequence[str], colours=None, ignore_index: int = IGNORE_INDEX,
               also_void: Sequence[int] = ()) -> "ClassTable":
        """Masks hold the class index itself; ``ignore_index`` (and
        ``also_void``) mark void; any other value is invalid."""
        names = tuple(names)
        lookup = np.full(256, INVALID, dtype=np.int16)
        lookup[:len(names)] = np.arange(len(names))
        for value in (ignore_index, *also_void):
            lookup[value] = IGNORE_INDEX
        colours = default_palette(len(names)) if colours is None else np.asarray(colours, dtype=np.uint8)
        return cls(names, colours.reshape(len(names), 3), lookup, int(ignore_index))

    def decode(self, mask: np.ndarray, path: str = "mask") -> np.ndarray:
        """uint8 class indices (255 void) of a uint8 mask; ``ValueError``
        naming ``path`` and the value for a value that is neither a class
        nor void."""
        mapped = self.lookup[np.asarray(mask, dtype=np.uint8)]
        if (mapped == INVALID).any():
            values = np.unique(np.asarray(mask)[mapped == INVALID])
            shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
            raise ValueError(f"{path}: mask value {shown} is neither a class (0..{self.num_classes - 1}) "
                             f"nor the ignore index {self.ignore_value}")
        return mapped.astype(np.uint8)

    def encode(self, classes: np.ndarray) -> np.ndarray:
        """Class indices (255 void) -> the values the data set's mask files use."""
        if self.encode_table is not None:
            return self.encode_table[np.asarray(classes, dtype=np.uint8)]
        table = np.arange(256, dtype=np.uint8)
        table[IGNORE_INDEX] = self.ignore_value
        return table[np.asarray(classes, dtype=np.uint8)]

    def colorize(self, classes: np.ndarray) -> np.ndarray:
        """RGB uint8 picture (H, W, 3) of a class-index map; void is black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[:self.num_classes] = self.colours
        return lut[np.asarray(classes, dtype=np.uint8)]

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint stores, enough for prediction (names, colours,
        ignore index); ``from_dict`` reads it back."""
        return {"names": list(self.names), "colors": self.colours.tolist(), "ignore_index": self.ignore_value}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClassTable":
        return cls.simple(d["names"], d.get("colors"), int(d.get("ignore_index", IGNORE_INDEX)))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


CITYSCAPES = ClassTable(CLASS_NAMES, _frozen(PALETTE.copy()),
                        _frozen(LABELID_TO_TRAINID.astype(np.int16)), ignore_value=0,
                        encode_table=TRAINID_TO_LABELID)

# CamVid as the SegNet tutorial ships it (the copy most CamVid users have): 11
# classes and void. Its masks mark void 11; many re-packaged copies use 255.
CAMVID = ClassTable.simple(
    ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
     "Pedestrian", "Bicyclist"),
    [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
     (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)],
    ignore_index=255, also_void=(11,))


def _class_entry(entry: Any, i: int) -> tuple[str, Any]:
    if isinstance(entry, str):
        return entry, None
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        return entry["name"], entry.get("color", entry.get("colour"))
    raise ValueError(f"classes[{i}] must be a name or {{\"name\": ..., \"color\": [r, g, b]}}, got {entry!r}")


def _colour(value: Any, where: str) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        raise ValueError(f"{where} must be [r, g, b] with integers 0..255, got {value!r}")
    return tuple(value)


def _printable(name: str, i: int) -> None:
    """``ValueError`` for a name holding a control character (newline, tab,
    escape, NUL, a line separator...): names are printed one per table row."""
    bad = next((ch for ch in name if unicodedata.category(ch) in _UNPRINTABLE), None)
    if bad is not None:
        raise ValueError(f"classes[{i}]: the name {name!r} holds the control character {bad!r}; class names "
                         f"are printed one per row of the evaluation table")


def parse_classes(obj: Any) -> ClassTable:
    """The ``ClassTable`` of a ``classes.json`` document (``ValueError``
    saying what is wrong)::

        {"classes": ["background", "road", ...],          # or [{"name": ..., "color": [r, g, b]}, ...]
         "colors": [[0, 0, 0], [128, 64, 128], ...],      # optional
         "ignore_index": 255}                             # optional, default 255

    At most ``MAX_CLASSES`` (255) classes; names are stripped, and one holding
    a control character (newline, tab, escape...) is refused by its index.
    """
    if not isinstance(obj, Mapping):
        raise ValueError("must be a JSON object with a \"classes\" list")
    unknown = sorted(set(obj) - {"classes", "colors", "colours", "ignore_index"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (expected classes, colors, ignore_index)")
    entries = obj.get("classes")
    if not isinstance(entries, list) or not entries:
        raise ValueError("\"classes\" must be a non-empty list of class names")
    if len(entries) > MAX_CLASSES:   # first: no other rule can be met with more
        raise ValueError(f"at most {MAX_CLASSES} classes fit an 8-bit mask (values 0..{MAX_CLASSES - 1} for the "
                         f"classes, one more for the ignore index), got {len(entries)}")
    pairs = [_class_entry(e, i) for i, e in enumerate(entries)]
    names = [n.strip() for n, _ in pairs]
    if any(not n for n in names):
        raise ValueError("class names must not be empty")
    for i, name in enumerate(names):
        _printable(name, i)
    duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if duplicate is not None:
        raise ValueError(f"class name {duplicate!r} appears twice")
    ignore = obj.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not 0 <= ignore <= 255:
        raise ValueError(f"\"ignore_index\" must be an integer 0..255, got {ignore!r}")
    if ignore < len(names):
        raise ValueError(f"\"ignore_index\" {ignore} is a class index: with {len(names)} classes it must be "
                         f"at least {len(names)} (masks hold class indices 0..{len(names) - 1})")
    colours = obj.get("colors", obj.get("colours"))
    if colours is not None:
        if any(c is not None for _, c in pairs):
            raise ValueError("give colours either in \"colors\" or per class, not both")
        if not isinstance(colours, list) or len(colours) != len(names):
            raise ValueError(f"\"colors\" must list one [r, g, b] per class ({len(names)}), "
                             f"got {len(colours) if isinstance(colours, list) else repr(colours)}")
        colours = [_colour(c, f"colors[{i}]") for i, c in enumerate(colours)]
    elif any(c is not None for _, c in pairs):
        palette = default_palette(len(names))
        colours = [palette[i].tolist() if c is None else _colour(c, f"classes[{i}].color")
                   for i, (_, c) in enumerate(pairs)]
    return ClassTable.simple(names, colours, ignore)


def load_classes(path: str | os.PathLike) -> ClassTable:
    """``parse_classes`` of the file ``path`` (UTF-8, with or without a
    byte-order mark); every problem is a one-line ``ValueError`` that names
    the file."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise ValueError(f"{path}: no such file (a folder data set describes its classes there)")
    check_regular(path)   # a FIFO or a device is refused unopened
    if os.path.getsize(path) > 64 * 2**20:
        raise ValueError(f"{path}: too large to be a classes file")
    try:
        with open(path, encoding="utf-8-sig") as f:   # a byte-order mark (Windows editors) is skipped
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a classes file") from None
    try:
        return parse_classes(obj)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
