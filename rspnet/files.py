"""Where rspnet writes and how. Every file it writes (checkpoints,
architecture files, reports, pictures) goes through ``atomic_open``, so that a
crash or a kill leaves the old file or the new one, never a torn one, with the
permissions the user's umask gives a new file.

Every output path a command takes is checked before any work starts
(``check_output_dir``, ``check_output_file``): it can be created or written,
it is not a file where a directory is wanted (or the reverse), and it is not
inside an input -- no command writes inside a data root or over an input."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, BinaryIO, Iterator

__all__ = ["atomic_open", "write_json", "write_png", "check_output_dir", "check_output_file",
           "is_inside", "new_file_mode", "read_small_text", "parse_json", "SMALL_FILE_LIMIT"]

SMALL_FILE_LIMIT = 64 * 2**20   # settings, architecture and class files are kilobytes


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


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask
    (``mkstemp`` would give 0600 whatever the umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


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
        os.fchmod(fd, new_file_mode())
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


# ----------------------------------------------------------- output paths
def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` is ``root`` or lies below it, links resolved (``path``
    need not exist yet)."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _probe_writable(directory: str, flag: str, path: str) -> None:
    """Create and remove a temporary file in ``directory``: the one check of
    writability that holds for read-only mounts, /proc and ACLs alike."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".rspnet-probe-")
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write in {directory} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)


def _check_not_input(path: str, flag: str, inputs) -> None:
    for item in inputs or ():
        if item and is_inside(path, item):
            raise ValueError(f"{flag} {path}: inside the input {item}; rspnet never writes into a data "
                             f"set or over an input, choose another {flag}")


def check_output_dir(path: str | os.PathLike, flag: str, inputs=()) -> None:
    """``ValueError`` naming ``flag`` unless ``path`` is a directory, or can
    be created as one, in which this process can write, outside every path of
    ``inputs`` (data roots, input files and folders). Creates nothing."""
    path = os.fspath(path)
    _check_not_input(path, flag, inputs)
    _check_creatable(path, flag, path)


def _check_creatable(directory: str, flag: str, named: str) -> None:
    existing = _nearest_existing(directory)
    if not os.path.isdir(existing):
        where = "exists" if existing == os.path.abspath(named) else f"lies below the file {existing}, which"
        raise ValueError(f"{flag} {named}: {where} is not a directory")
    _probe_writable(existing, flag, named)


def check_output_file(path: str | os.PathLike, flag: str, inputs=()) -> None:
    """``ValueError`` naming ``flag`` unless ``path`` can be written as a
    file: not a directory, not an input, its directory writable or creatable.
    An existing file at ``path`` may be replaced: the user named exactly it."""
    path = os.fspath(path)
    if not path or path.endswith(os.sep) or os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a directory, expected a file name")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError(f"{flag} {path}: exists and is not a regular file")
    _check_not_input(path, flag, inputs)
    _check_creatable(os.path.dirname(os.path.abspath(path)), flag, path)


# ------------------------------------------------------------ input files
def read_small_text(path: str | os.PathLike, what: str, limit: int = SMALL_FILE_LIMIT) -> str:
    """The text (UTF-8, a byte-order mark skipped) of a small input file:
    ``FileNotFoundError`` when it is missing, else ``ValueError`` naming
    ``what`` and the path unless it is a regular file of at most ``limit``
    bytes -- a FIFO, a device or an endless file is refused before it is
    opened, so it can neither block nor fill the memory."""
    import stat

    path = os.fspath(path)
    info = os.stat(path)   # FileNotFoundError for a missing file, as open()
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, socket or device)"
        raise ValueError(f"{what} {path}: {kind}")
    if info.st_size > limit:
        raise ValueError(f"{what} {path}: {info.st_size / 2**20:.0f} MiB, more than the {limit // 2**20} MiB "
                         f"such a file can be")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None


def parse_json(text: str, what: str, path: str | os.PathLike) -> Any:
    """``json.loads`` with every failure a one-line ``ValueError`` naming the file."""
    def unique(pairs):
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"{what} {os.fspath(path)}: {', '.join(repeated)} given twice")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {os.fspath(path)}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{what} {os.fspath(path)}: nested too deeply to be a settings file") from None
