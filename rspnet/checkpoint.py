"""Checkpoints of the search and of the training: one mechanism.

* ``atomic_open``: a temporary file in the target's directory, fsync'ed, then
  ``os.replace``d over the target and the directory fsync'ed: a crash leaves
  the old file or the new one, never a torn one.
* ``save_checkpoint`` stores a SHA-256 of the whole state (every tensor's
  bytes, dtype and shape, every primitive) under ``"checksum"``;
  ``load_checkpoint`` reads with ``torch.load(weights_only=True)`` (a
  checkpoint holds tensors and plain containers only, so loading never
  unpickles arbitrary objects) and recomputes it, so a truncated, zero-filled
  or bit-flipped file is reported as such (``CheckpointError``, naming the file
  and the reason) instead of resuming from damaged numbers.
* ``CheckpointSeries``: numbered checkpoints ``<prefix><step>.pt`` in one
  directory; keeps the newest K (older files are deleted only after the new
  one is safely on disk) and finds the newest one that verifies, falling back
  to older ones past a damaged file.
* Random generator states are converted to tensors and primitives
  (``rng_state`` / ``set_rng_state``).
* Training checkpoints (``load_train_checkpoint``) carry the architecture they
  were trained for; loading one into another architecture fails with a message
  that names both (``check_architecture``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import re
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, Mapping

import numpy as np
import torch

if TYPE_CHECKING:  # imported lazily below: rspnet.search imports this module
    from rspnet.search.architecture import Architecture

__all__ = ["CheckpointError", "atomic_open", "state_checksum", "save_checkpoint", "load_checkpoint",
           "CheckpointSeries", "rng_state", "set_rng_state", "seed_everything", "TRAIN_FORMAT",
           "load_train_checkpoint", "architecture_fingerprint", "check_architecture",
           "load_model_weights"]

CHECKSUM_KEY = "checksum"
TRAIN_FORMAT = "rspnet-train-checkpoint/2"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, unsafe or
    of another kind. The message names the file and the reason."""


# ---------------------------------------------------------------- atomic I/O
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


# ------------------------------------------------------------------ checksum
def _digest(obj: Any, h: "hashlib._Hash") -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _digest(key, h)
            _digest(value, h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for value in obj:
            _digest(value, h)
    else:  # None, bool, int, float, str, bytes: repr round-trips exactly
        h.update(f"P{type(obj).__name__}:{obj!r};".encode())


def state_checksum(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's content, excluding its own checksum."""
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != CHECKSUM_KEY}, h)
    return h.hexdigest()


# ------------------------------------------------------------- save and load
def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` (tensors and plain containers only) atomically, with its checksum."""
    state = {k: v for k, v in state.items() if k != CHECKSUM_KEY}
    state[CHECKSUM_KEY] = state_checksum(state)
    with atomic_open(path) as f:
        torch.save(state, f)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    format: str | None = None, kind: str = "rspnet", verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and verify its
    checksum, and its ``"format"`` tag when ``format`` is given (``kind`` names
    the expected kind in that message). Every failure is a ``CheckpointError``
    naming the file and the reason."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory, not a file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes): truncated or never written")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals it does not know: say so plainly
        raise CheckpointError(
            f"checkpoint {path!r} is corrupt or holds objects other than tensors and plain "
            f"containers, which rspnet refuses to unpickle (weights_only=True): "
            f"{_first_line(exc)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt and cannot be read "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path!r} is not an rspnet checkpoint (it holds a "
                              f"{type(state).__name__}, not a dict)")
    if format is not None and state.get("format") != format:
        raise CheckpointError(f"{path!r} is not an {kind} checkpoint "
                              f"(format {state.get('format')!r}, expected {format!r})")
    if verify:
        saved = state.get(CHECKSUM_KEY)
        if not isinstance(saved, str):
            raise CheckpointError(f"checkpoint {path!r} has no checksum: not written by "
                                  f"rspnet.checkpoint.save_checkpoint, cannot be verified")
        actual = state_checksum(state)
        if actual != saved:
            raise CheckpointError(f"checkpoint {path!r} is corrupt: its content does not match "
                                  f"its checksum (sha256 {actual[:12]}… vs recorded {saved[:12]}…)")
    return state


# ------------------------------------------------------------------- series
class CheckpointSeries:
    """Numbered checkpoints ``<directory>/<prefix><NNNNNNNN>.pt``, e.g.
    ``checkpoint-stage1-step00000016.pt``; the number is a step count, so the
    newest is the largest. ``keep`` > 0 keeps only the newest ``keep``."""

    def __init__(self, directory: str | os.PathLike, prefix: str, keep: int = 3):
        self.directory, self.prefix, self.keep = os.fspath(directory), prefix, keep
        self._pattern = re.compile("^" + re.escape(prefix) + r"(\d+)\.pt$")

    def path(self, number: int) -> str:
        return os.path.join(self.directory, f"{self.prefix}{number:08d}.pt")

    def list(self) -> list[tuple[int, str]]:
        """(number, path) of the series' files, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = self._pattern.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.directory, name)))
        return sorted(found)

    def save(self, state: Mapping[str, Any], number: int) -> str:
        """Write checkpoint ``number``, then delete all but the newest ``keep``."""
        path = self.path(number)
        save_checkpoint(state, path)
        self.prune(protect=path)
        return path

    def prune(self, protect: str | None = None) -> list[str]:
        if self.keep <= 0:
            return []
        removed = []
        for _, path in self.list()[:-self.keep]:
            if path == protect:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
        return removed

    def latest_valid(self, load: Callable[[str], dict[str, Any]] = load_checkpoint,
                     warn: Callable[[str], None] = print) -> tuple[str, dict[str, Any]] | None:
        """The newest checkpoint that loads and verifies, as (path, state);
        damaged ones are reported through ``warn`` and skipped. ``None`` when
        the series is empty; ``CheckpointError`` when no file is usable."""
        found = self.list()
        errors = []
        for _, path in reversed(found):
            try:
                return path, load(path)
            except CheckpointError as exc:
                errors.append(str(exc))
                warn(f"warning: {exc}; falling back to the previous checkpoint")
        if found:
            raise CheckpointError(f"none of the {len(found)} checkpoints {self.prefix}*.pt in "
                                  f"{self.directory!r} can be used: " + " | ".join(errors))
        return None


# --------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ------------------------------------------------------ training checkpoints
def load_train_checkpoint(path: str | os.PathLike,
                          map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A verified checkpoint of ``rspnet.train`` (``CheckpointError`` otherwise)."""
    state = load_checkpoint(path, map_location, format=TRAIN_FORMAT, kind="rspnet training")
    for key in ("model", "architecture", "num_classes"):
        if key not in state:
            raise CheckpointError(f"checkpoint {os.fspath(path)!r} has no {key!r} entry")
    return state


# --------------------------------------------------------------- architecture
def _structure(arch: Architecture) -> dict[str, Any]:
    """What decides the network: the architecture without its free-form
    provenance (``search``), which does not change a single weight."""
    data = arch.to_dict()
    data.pop("search", None)
    return data


def architecture_fingerprint(arch: Architecture | Mapping) -> str:
    """12 hex digits of the SHA-256 of the architecture's structure."""
    from rspnet.search.architecture import Architecture
    arch = Architecture.load(arch)
    text = json.dumps(_structure(arch), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            sub = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                return f"{sub}: {'missing' if key not in a else a[key]!r} vs {'missing' if key not in b else b[key]!r}"
            found = _first_difference(a[key], b[key], sub)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        if len(a) != len(b):
            return f"{where}: {len(a)} entries vs {len(b)}"
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def check_architecture(state: Mapping[str, Any], arch: Architecture, num_classes: int,
                       checkpoint_name: str = "checkpoint", arch_name: str = "--arch") -> None:
    """Raise ``CheckpointError`` unless ``state`` was trained for ``arch`` with
    ``num_classes`` classes; the message names both architectures."""
    from rspnet.search.architecture import Architecture
    try:
        saved = Architecture.load(state["architecture"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint_name}: its stored architecture is invalid: {exc}") from None
    if _structure(saved) != _structure(arch):
        diff = _first_difference(_structure(saved), _structure(arch))
        source = state.get("architecture_source") or "unknown file"
        raise CheckpointError(
            f"{checkpoint_name} was trained for architecture {architecture_fingerprint(saved)} "
            f"(from {source}), but {arch_name} is architecture {architecture_fingerprint(arch)}; "
            f"they differ at {diff} (checkpoint vs {arch_name})")
    if int(state["num_classes"]) != num_classes:
        raise CheckpointError(f"{checkpoint_name} has {int(state['num_classes'])} classes, "
                              f"but {num_classes} are expected")


def load_model_weights(model: torch.nn.Module, state: Mapping[str, Any], checkpoint_name: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error instead of
    PyTorch's multi-line one."""
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(f"{checkpoint_name}: weights do not fit the network: "
                              f"{' '.join(lines[:3])[:400]}") from None
