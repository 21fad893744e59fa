"""Crash-safe file writing: every file rspnet writes (checkpoints,
architecture files, reports, pictures) goes through ``atomic_open``, so that a
crash or a kill leaves the old file or the new one, never a torn one."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, BinaryIO, Iterator

__all__ = ["atomic_open", "write_json", "write_png"]


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path``, fsync it, ``os.replace`` it
    over ``path`` and fsync the directory: a reader sees the old file or the
    new one, never a torn one, even if the process or the machine dies
    mid-write. On an exception the temporary file is removed and ``path`` is
    untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    """``obj`` as indented JSON, written atomically."""
    text = json.dumps(obj, indent=indent) + "\n"
    with atomic_open(path) as f:
        f.write(text.encode())


def write_png(path: str | os.PathLike, image: Any) -> None:
    """A PIL image or uint8 array as a PNG file, written atomically."""
    import io

    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with atomic_open(path) as f:
        f.write(buffer.getvalue())
