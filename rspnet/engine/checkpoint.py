"""Checkpoint files of a run: saved with a checksum, loaded safely, kept in a
numbered series.

* ``save_checkpoint`` writes atomically (``rspnet.files.atomic_open``) and
  stores a SHA-256 of the whole state (every tensor's bytes, dtype and shape,
  every primitive) under ``"checksum"``; ``load_checkpoint`` reads with
  ``torch.load(weights_only=True)`` (a checkpoint holds tensors and plain
  containers only, so loading never unpickles arbitrary objects) and
  recomputes it, so a truncated, zero-filled or bit-flipped file is reported
  as such (``CheckpointError``, naming the file and the reason) instead of
  resuming from damaged numbers.
* ``CheckpointSeries``: numbered checkpoints ``<prefix><step>.pt`` in one
  directory; keeps the newest K (older files are deleted only after the new
  one is safely on disk) and finds the newest one that verifies, falling back
  to older ones past a damaged file.

What a checkpoint holds is the business of the run that writes it
(``rspnet.engine.loop``, ``rspnet.search.stage``, ``rspnet.train.trainer``).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Mapping, Sequence

import torch

from rspnet.files import atomic_open

__all__ = ["CheckpointError", "state_checksum", "save_checkpoint", "load_checkpoint", "CheckpointSeries",
           "refuse_existing", "refuse_later"]

CHECKSUM_KEY = "checksum"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, unsafe or
    of another kind. The message names the file and the reason."""


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


# ------------------------------------------------------ choosing where to resume
def refuse_existing(out: str, kind: str, own_log: str | None = None) -> None:
    """A fresh run writes only into a new or empty directory: a directory that
    holds any file is a run (or someone's files), whatever is left of it.
    ``own_log``: the run's log, which may be there alone when ``--resume
    auto`` found no checkpoint (e.g. a run stopped during set-up); it is
    appended to. ``ValueError`` naming what is there."""
    if not os.path.isdir(out):
        return
    present = sorted(name for name in os.listdir(out) if own_log is None or name not in (own_log, ".rspnet.lock"))
    if present:
        named = [n for n in present if n != ".rspnet.lock"] or present   # the lock says least
        shown = ", ".join(named[:3]) + (", ..." if len(named) > 3 else "")
        raise ValueError(f"--out {out} already holds files ({shown}); a new {kind} run needs a new or "
                         f"empty directory: continue the run there with --resume auto, or choose "
                         f"another --out")


def refuse_later(out: str, later: Sequence[str], origin: str) -> None:
    """Continuing from the checkpoint ``origin`` must not overwrite (or mix
    with) the later checkpoints ``later`` of the same directory."""
    if later:
        raise CheckpointError(f"{out} already holds later checkpoints ({os.path.basename(later[-1])}"
                              f"{', ...' if len(later) > 1 else ''}) that continuing from "
                              f"{os.path.basename(origin)} would overwrite; give another --out")
