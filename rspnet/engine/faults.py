"""Faults of a run and how it stops: a NaN or infinity (``NonFiniteError``,
``Diverged``), a stop request by signal (``StopSignal``, ``StopRequested``)."""
from __future__ import annotations

import signal
from typing import Any, Sequence

import torch

__all__ = ["NonFiniteError", "Diverged", "StopRequested", "SetupStopped", "StopSignal", "first_nonfinite"]


class StopSignal:
    """SIGTERM / SIGINT → a flag that the training loop polls at each step
    boundary (where it writes a checkpoint and stops). A second SIGINT
    interrupts at once (``KeyboardInterrupt``), without a checkpoint.

    A stop request is honoured during set-up too: until the loop first polls
    the flag, nobody would read it, so a signal then stops the run at once
    (``StopRequested`` without a checkpoint), also out of a blocking read."""

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.received: int | None = None
        self.polled = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        if not self.polled:
            raise SetupStopped(signum)

    @property
    def name(self) -> str | None:
        return None if self.received is None else signal.Signals(self.received).name

    def __enter__(self) -> "StopSignal":
        import threading
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def __call__(self) -> bool:
        self.polled = True
        return self.received is not None


class NonFiniteError(FloatingPointError):
    """A loss, a gradient or a parameter became NaN or infinite. ``quantity``
    names it; the training loops add where (stage, step, epoch, batch)."""

    def __init__(self, quantity: str, value: float | str):
        self.quantity, self.value = quantity, value
        super().__init__(f"{quantity} is {value}")


class Diverged(NonFiniteError):
    """A NaN or an infinity stopped a run: ``cause`` says what, ``where`` the
    step, ``last_checkpoint`` the newest (good) checkpoint, after which
    nothing was written."""

    def __init__(self, cause: NonFiniteError, where: str, last_checkpoint: str | None):
        FloatingPointError.__init__(self, f"{cause} at {where}")
        self.quantity, self.value = cause.quantity, cause.value
        self.where, self.last_checkpoint = where, last_checkpoint


class StopRequested(Exception):
    """A run stopped on request (``StopSignal``) at a step boundary, after
    writing the checkpoint ``path`` (None: stopped during set-up, before
    there was anything to save); ``where`` names the step, ``signal`` the
    signal that asked (None: another request)."""

    def __init__(self, path: str | None, where: str, signal: int | None = None):
        self.path, self.where, self.signal = path, where, signal
        super().__init__(f"stopped at {where}; " + (f"checkpoint {path}" if path else "nothing written"))


class SetupStopped(BaseException):
    """A stop request during set-up (``StopSignal`` before the loop polls):
    nothing to checkpoint yet. A ``BaseException``, as ``KeyboardInterrupt``,
    so that no ``except Exception`` on the way (a library's, a thread
    start's) swallows it."""

    path = None
    where = "set-up"

    def __init__(self, signal: int | None = None):
        self.signal = signal
        super().__init__("stopped during set-up, before the first step; nothing to resume")


def first_nonfinite(named: Sequence[tuple[str, torch.Tensor]]) -> tuple[str, str] | None:
    """(name, description) of the first tensor that holds a NaN or an
    infinity, or None. One device synchronisation for all of them."""
    tensors = [t.detach() for _, t in named]
    if not tensors:
        return None
    flags = torch.stack([torch.isfinite(t).all() for t in tensors]).cpu()
    if bool(flags.all()):
        return None
    i = int((~flags).nonzero()[0])
    t = tensors[i]
    kind = "nan" if torch.isnan(t).any() else "inf"
    return named[i][0], f"{kind} ({int((~torch.isfinite(t)).sum())} of {t.numel()} entries)"
