"""How a run is driven (``RunOptions``), how its settings are compared on
resumption (``plain``, ``changed_settings``), and the checks of the settings
every run has (``check_run_settings``).

A run's *config* (``SearchConfig``, ``TrainConfig``) says what it computes and
is stored in every checkpoint; ``RunOptions`` says where it writes, whether it
continues an earlier run, how often it checkpoints and how the process is set
up, none of which changes a single number it computes.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from rspnet.files import check_output_dir

__all__ = ["RunOptions", "plain", "changed_settings", "check_device", "check_run_settings", "local_batch",
           "check_threads", "check_workers"]


@dataclass
class RunOptions:
    """The options a search and a training run share (the CLIs' flags of the
    same names).

    out:              output directory; None: ``runs/<kind>-<timestamp>``, or
                      with ``resume`` = a checkpoint path, that file's directory.
    resume:           None; ``"auto"``: the newest valid checkpoint in ``out``
                      (falling back past damaged ones, starting afresh when
                      there is none); or the path of one checkpoint.
    checkpoint_every: also checkpoint every N steps within an epoch (0: at
                      epoch ends only).
    keep:             checkpoints kept per series, newest first (0: all).
    threads:          PyTorch CPU threads; None: 1 on CPU (the small networks
                      gain little from more, and oversubscribed cores make
                      every step 10-30x slower), PyTorch's default on GPU;
                      0: PyTorch's default.
    deterministic:    ``torch.use_deterministic_algorithms`` (bit-exact
                      resumption on GPU; slower).
    progress:         progress bars (rank 0 only).
    """
    out: str | None = None
    resume: str | None = None
    checkpoint_every: int = 0
    keep: int = 3
    threads: int | None = None
    deterministic: bool = False
    progress: bool = True

    def resolved(self, kind: str, inputs: Sequence[str | None] = ()) -> "RunOptions":
        """These options with ``out`` filled in; ``ValueError`` (naming the
        CLI flag) for options that cannot work together, or an ``out`` that
        cannot be written or lies inside one of ``inputs`` (the data root)."""
        if self.checkpoint_every < 0 or self.keep < 0:
            raise ValueError("--checkpoint-every and --keep-checkpoints must be >= 0")
        check_threads(self.threads)
        out = self.out
        if self.resume == "auto" and not out:
            raise ValueError("--resume needs --out, the directory of the run to continue")
        if self.resume and self.resume != "auto":
            if not os.path.isfile(self.resume):
                what = ("a directory: give a checkpoint file in it, or --resume auto --out DIR"
                        if os.path.isdir(self.resume) else "not a regular file"
                        if os.path.exists(self.resume) else "no such file")
                raise ValueError(f"--resume {self.resume}: {what}")
            if out is None:
                out = os.path.dirname(os.path.abspath(self.resume))
        if out is None:
            out = os.path.join("runs", time.strftime(f"{kind}-%Y%m%d-%H%M%S"))
        check_output_dir(out, "--out", [i for i in inputs if i])
        return dataclasses.replace(self, out=os.fspath(out))


def plain(value: Any) -> Any:
    """Tuples to lists, recursively: what a config looks like once stored
    (JSON, or a checkpoint loaded with ``weights_only=True``), so that a
    stored config compares equal to the one that wrote it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def changed_settings(saved: dict[str, Any], config: Any,
                     may_change: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """``(name, saved value, current value)`` of every setting of ``config``
    (a dataclass) that differs from ``saved`` (a stored config), except those
    in ``may_change``, which do not change what is computed. A setting
    ``saved`` lacks was added since it was written: it ran with that setting's
    default (a new setting's default is the old behaviour)."""
    allowed: Sequence[str] = tuple(may_change)
    current = plain(config)
    defaults = {f.name: plain(f.default) for f in dataclasses.fields(config)
                if f.default is not dataclasses.MISSING}
    return [(key, saved.get(key, defaults.get(key)), value) for key, value in current.items()
            if key not in allowed and plain(saved.get(key, defaults.get(key))) != value]


def check_device(device: str) -> None:
    """``ValueError`` unless ``device`` names a usable CPU or CUDA device."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r}: not a device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"--device {device}: only cpu and cuda are supported")


def check_run_settings(device: str, batch_size: int, size: Sequence[int]) -> None:
    """The checks of the settings every run has, ``ValueError`` naming the
    flag: a usable device; a batch of at least 2, as training-mode BatchNorm
    needs more than one value per channel also at the 1/32 scale, where a map
    can be a single pixel; an input size the network can halve five times."""
    check_device(device)
    if batch_size < 2:
        raise ValueError("--batch-size must be at least 2 (BatchNorm needs more than one value per "
                         "channel at every scale)")
    if size[0] % 32 or size[1] % 32:
        raise ValueError(f"--size {size[0]}x{size[1]}: height and width must be multiples of 32")


def local_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of the global ``--batch-size``; ``ValueError``
    unless it divides evenly over the ``world_size`` processes."""
    if batch_size % world_size:
        raise ValueError(f"--batch-size {batch_size} is the global batch: it must be a multiple of the "
                         f"{world_size} processes")
    return batch_size // world_size


def check_threads(threads: int | None) -> None:
    """``--threads``: None, 0 (PyTorch's default) or up to 4 per core; more
    threads than that only oversubscribe, and torch crashes starting 10^5."""
    limit = 4 * (os.cpu_count() or 1)
    if threads is not None and not 0 <= threads <= limit:
        raise ValueError(f"--threads must be in [0, {limit}] (4 per core), got {threads}")


def check_workers(workers: int) -> None:
    """``--workers``: DataLoader processes, at most 4 per core."""
    limit = 4 * (os.cpu_count() or 1)
    if not 0 <= workers <= limit:
        raise ValueError(f"--workers must be in [0, {limit}] (4 per core), got {workers}")
