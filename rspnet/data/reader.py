"""The one reader of image and mask files: every data set's items, the
pre-check (``LabelledImages.verify``) and predict go through it. Its rules,
each problem a one-line ``ValueError`` that names the file:

- Only regular files are read (a symbolic link to one is fine): a FIFO,
  socket, device or directory is refused by name before anything opens it.
- An image over ``MAX_PIXELS`` (2**27, e.g. 16384x8192) is refused from its
  header, with its size, before it is decoded.
- A file is decoded in full; a truncated or corrupt one is refused.
- The EXIF Orientation tag is applied to images and masks alike, so a pair
  stays aligned (a file without the tag is unchanged).
- Images become uint8 RGB. Greyscale wider than 8 bits is scaled by the range
  of its type: 16-bit (modes I;16, I;16B, I;16L, and I holding 0..65535) as
  round(v / 257), so 0..65535 -> 0..255; 32-bit float (F) holding 0..1 as
  round(x * 255). Other values (negative or over 65535, floats outside 0..1,
  NaN) are refused: there is no range to scale them by, and stretching each
  image by its own minimum and maximum would change the scene per image.
- Masks must be 8-bit single-channel (L, or P whose indices are the values).
"""
from __future__ import annotations

import os
import stat
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = ["MAX_PIXELS", "check_regular", "image_size", "read_image", "read_mask", "image_rgb"]

MAX_PIXELS = 2 ** 27          # 134 M pixels: 400 MB as uint8 RGB, 1.6 GB as the float tensor of an item
_ORIENTATION = 0x0112         # the EXIF Orientation tag
_TURNED = (5, 6, 7, 8)        # orientations that swap width and height
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# what Pillow's decoders raise on truncated or garbage files
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
               ZeroDivisionError, Image.DecompressionBombError)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def check_regular(path: str) -> None:
    """``ValueError`` naming ``path`` unless it is a regular file (or a link
    to one); nothing is opened, so a FIFO cannot block."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or _one_line(err)}") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "not a file")
        raise ValueError(f"cannot read {path}: not a regular file ({kind}); only regular files are read")


def _open(path: str) -> Image.Image:
    """The image opened, header read only and within ``MAX_PIXELS``."""
    check_regular(path)
    try:
        with warnings.catch_warnings():   # Pillow's own warning threshold is below MAX_PIXELS
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:   # over Pillow's own limit, which is above ours
        _refuse(path, _header_size(path), err)
    except _PIL_ERRORS as err:
        raise ValueError(f"cannot read {path}: {_one_line(err)}") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        _refuse(path, image.size)
    return image


def _refuse(path: str, size: tuple[int, int] | None, err: BaseException | None = None) -> None:
    shown = f"a {size[0]}x{size[1]} image ({size[0] * size[1]} pixels)" if size else f"an image ({_one_line(err)})"
    raise ValueError(f"{path}: refused, {shown} is over the limit of {MAX_PIXELS} pixels "
                     f"(rspnet.data.MAX_PIXELS)") from None


def _header_size(path: str) -> tuple[int, int] | None:
    """(W, H) from the header by the file's Pillow plugin, without the
    size check ``Image.open`` adds (which refused the file already)."""
    Image.init()
    with open(path, "rb") as fp:
        prefix = fp.read(16)
        for factory, accept in (Image.OPEN[f] for f in Image.ID):
            if accept is not None and not accept(prefix):
                continue
            try:
                fp.seek(0)
                return factory(fp, path).size
            except _PIL_ERRORS:
                continue
    return None


def _orientation(image: Image.Image, decoded: bool) -> int:
    # a PNG's EXIF may follow its pixel data: from the header only when it is there already
    if not decoded and image.format == "PNG" and "exif" not in image.info:
        return 1
    value = image.getexif().get(_ORIENTATION, 1)
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _turned_size(image: Image.Image, orientation: int) -> tuple[int, int]:
    """(W, H) the header promises once ``orientation`` is applied. (Pillow
    may report a TIFF's size turned already: its strips give the raster's.)"""
    width, height = image.size
    if image.format == "TIFF" and image.tile:
        width, height = max(t[1][2] for t in image.tile), max(t[1][3] for t in image.tile)
    return (height, width) if orientation in _TURNED else (width, height)


def image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image file as ``read_image`` returns it (EXIF
    orientation applied), from its header; ``ValueError`` naming it."""
    with _open(path) as image:
        try:
            width, height = _turned_size(image, _orientation(image, decoded=False))
        except _PIL_ERRORS as err:
            raise ValueError(f"cannot read {path}: {_one_line(err)}") from None
    return height, width


def _oriented(image: Image.Image, name: str) -> Image.Image:
    """``image`` decoded in full and turned by its EXIF orientation, once
    (Pillow turns TIFFs itself as it decodes them); Pillow's errors as
    ``ValueError`` naming ``name``."""
    try:
        orientation = _orientation(image, decoded=False)
        promised = _turned_size(image, orientation)
        image.load()
        if _orientation(image, decoded=True) != 1:      # still tagged: not turned yet
            image = ImageOps.exif_transpose(image)
    except _PIL_ERRORS as err:
        raise ValueError(f"cannot decode {name}: {_one_line(err)}") from None
    if orientation in _TURNED and image.size != promised:
        # Pillow 13 decodes turned single-channel TIFFs into a raster of the wrong width: scrambled pixels
        raise ValueError(f"cannot decode {name}: decoded as {image.size[0]}x{image.size[1]}, but its header "
                         f"says {promised[0]}x{promised[1]} once turned by its EXIF orientation {orientation} "
                         f"(a Pillow defect): save it with its pixels turned and no orientation tag")
    return image


def _eight_bit(image: Image.Image, name: str) -> np.ndarray:
    """uint8 (H, W) of a 16-bit or float greyscale image (module docstring)."""
    values = np.array(image)
    if image.mode == "F":
        low, high = (float(np.min(values)), float(np.max(values))) if values.size else (0.0, 0.0)
        if not (np.isfinite(values).all() and 0 <= low and high <= 1):
            raise ValueError(f"{name}: a floating-point image holding {low:g}..{high:g}; only 0..1 is read "
                             f"(as 0..255): save it as an 8- or 16-bit image")
        return np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    low, high = (int(np.min(values)), int(np.max(values))) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(f"{name}: a 32-bit integer image holding {low}..{high}; only 16-bit values 0..65535 "
                         f"are read (as value / 257): save it as an 8- or 16-bit image")
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)   # round(v / 257): no ties


def _rgb(image: Image.Image, name: str) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT or image.mode == "F":
        grey = _eight_bit(image, name)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))


def image_rgb(image: Image.Image, name: str = "image") -> np.ndarray:
    """uint8 RGB array (H, W, 3) of a PIL image by ``read_image``'s rules
    (EXIF orientation, bit depths), for an image already opened (``name`` is
    what an error names)."""
    return _rgb(_oriented(image, name), name)


def _mask(image: Image.Image, path: str) -> np.ndarray:
    mask = np.array(image)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"{path}: expected an 8-bit single-channel PNG of class indices, "
                         f"got shape {mask.shape} dtype {mask.dtype}")
    return mask


def read_image(path: str) -> np.ndarray:
    """uint8 RGB array (H, W, 3) of an image file (module docstring);
    ``ValueError`` naming it if it breaks a rule or does not decode."""
    with _open(path) as image:
        return _rgb(_oriented(image, path), path)


def read_mask(path: str) -> np.ndarray:
    """uint8 (H, W) values of a mask PNG (a palette PNG gives its indices),
    EXIF orientation applied as to images; ``ValueError`` naming it."""
    with _open(path) as image:
        return _mask(_oriented(image, path), path)
