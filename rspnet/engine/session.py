"""``RunSession``: one run's process-level set-up and its voice.

It joins the process group (``distributed.init``; nothing under a plain
``python``), installs the stop signal handlers, sets the CPU threads and
determinism, creates the output directory, and gives the run its log: rank 0
prints every line above the progress bars and appends it to the run's log
file; the other ranks stay silent. Lines logged before the directory exists
(e.g. warnings while a checkpoint to resume from is chosen) are written once it
does, so that a run refused at start-up writes nothing.

``on_main(fn)`` runs ``fn`` on rank 0 only and hands its result, or its
error, to every rank: used to choose and verify the checkpoint a run resumes
from, so that every rank continues from the same one. ``guard`` turns a stop
request, a divergence or a second Ctrl-C into the log lines a user needs
before they propagate.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

# tqdm's monitor thread is started inside an ``except Exception`` that would
# swallow a stop request; rspnet's bars need no monitor
tqdm.monitor_interval = 0

from . import distributed
from .config import RunOptions
from .faults import Diverged, SetupStopped, StopRequested, StopSignal

__all__ = ["RunError", "RunSession", "set_threads", "make_deterministic", "exit_status", "describe_os_error", "LOCK_NAME", "EXIT_OK",
           "EXIT_FAILED", "EXIT_USAGE", "EXIT_DIVERGED", "EXIT_STOPPED", "EXIT_INTERRUPTED"]

# The exit statuses of every command, for scripts (the README lists them).
EXIT_OK = 0            # done
EXIT_FAILED = 1        # failed while running, e.g. a full disk; the message says why
EXIT_USAGE = 2         # bad input or settings, found before any work started; nothing written
EXIT_DIVERGED = 3      # a NaN or an infinity stopped the run; the last good checkpoint is kept
EXIT_STOPPED = 75      # stopped by SIGTERM or Ctrl-C at a step boundary: resumable (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # a second Ctrl-C: stopped at once, resumable from the last checkpoint


LOCK_NAME = ".rspnet.lock"   # in a run's directory while a process writes it


class RunError(ValueError):
    """A run cannot start with these settings or this input; the message is
    for the user (the CLIs print it as a usage error, exit status 2)."""


def set_threads(threads: int | None, device: torch.device) -> None:
    """``threads``: None = 1 on CPU, PyTorch's default elsewhere; 0 = PyTorch's
    default; N = N (see ``RunOptions.threads``)."""
    if threads is None:
        threads = 1 if device.type == "cpu" else 0
    if threads:
        torch.set_num_threads(threads)


def make_deterministic() -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


class RunSession:
    """``with RunSession(device, options, "train.log") as session:`` — see the
    module's docstring. ``options`` must be ``RunOptions.resolved``."""

    def __init__(self, device: str | torch.device, options: RunOptions, log_name: str):
        if options.out is None:
            raise ValueError("RunSession needs resolved options (RunOptions.resolved)")
        self.device, self.options, self.out = device, options, options.out
        self.log_path = os.path.join(options.out, log_name)
        self._pending: list[str] | None = []   # lines logged before the directory exists
        self._exit = contextlib.ExitStack()

    def __enter__(self) -> "RunSession":
        with contextlib.ExitStack() as stack:
            self.ctx = stack.enter_context(distributed.session(self.device))
            self.stop = stack.enter_context(StopSignal())
            set_threads(self.options.threads, self.ctx.device)
            if self.options.deterministic:
                make_deterministic()
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    @property
    def progress(self) -> bool:
        return self.options.progress and self.ctx.is_main

    # ------------------------------------------------------------------ log
    def log(self, line: str, echo: bool = True) -> None:
        """Print ``line`` above the progress bars (``echo``) and append it to
        the run's log; rank 0 only."""
        if not self.ctx.is_main:   # only rank 0 talks and writes
            return
        if echo:
            tqdm.write(line)
        if self._pending is not None:
            self._pending.append(line)
            return
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def open_output(self) -> None:
        """Create the output directory, take its lock (``RunError`` on every
        rank when another run holds it) and write the lines logged so far."""
        if self._pending is not None:
            self.on_main(self._create_and_lock)
        self._pending = None

    def _create_and_lock(self) -> None:
        """Rank 0: one run at a time writes a directory; the lock is released
        when this process ends or leaves the session."""
        import fcntl

        from rspnet.files import new_file_mode

        os.makedirs(self.out, exist_ok=True)
        path = os.path.join(self.out, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, new_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ValueError(f"--out {self.out} is being written by another run (it holds {path}); wait for "
                             f"it to end or choose another --out") from None
        self._exit.callback(os.close, fd)
        with open(self.log_path, "a") as f:
            f.writelines(line + "\n" for line in self._pending or ())

    # ------------------------------------------------------------- checks
    def on_main(self, fn: Callable[[], Any], errors: tuple[type[BaseException], ...] = (ValueError,)) -> Any:
        """``fn()`` computed on rank 0 and broadcast; an error of the kinds
        ``errors`` becomes a ``RunError`` on every rank."""
        result: Any = None
        if self.ctx.is_main:
            try:
                result = ("ok", fn())
            except errors as exc:
                result = ("error", str(exc))
        kind, value = distributed.broadcast_object(result)
        if kind == "error":
            raise RunError(value)
        return value

    # ------------------------------------------------------------- faults
    @contextlib.contextmanager
    def guard(self, what: str, advice: str, last_checkpoint: Callable[[], str | None],
              on_exit: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Report how a run ended early, call ``on_exit`` (write what the run
        has so far), then let the exception propagate. ``what`` names the run
        ("search", "training"), ``advice`` follows a divergence."""
        resume = f"continue with --resume auto --out {self.out}"
        try:
            yield
        except (StopRequested, SetupStopped) as exc:
            exc.signal = self.stop.received
            if exc.path is None:
                self.log(f"stopped by {self.stop.name or 'request'} during set-up, before the first step")
                exc.rspnet_reported = True
            else:
                self.log(f"stopped by {self.stop.name or 'request'} at {exc.where}: checkpoint written to "
                         f"{exc.path}; {resume}")
            on_exit()
            distributed.barrier()   # every rank leaves once the checkpoint is on disk
            raise
        except Diverged as exc:
            last = exc.last_checkpoint
            message = (f"error: the {what} diverged: {exc}. Nothing was written after the last good "
                       f"checkpoint" + (f", {last}" if last else " (there is none)") + f"; {advice}")
            self.log(message, echo=False)
            if self.ctx.is_main:
                print(message, file=sys.stderr)
            on_exit()
            raise
        except KeyboardInterrupt:   # a second Ctrl-C: no checkpoint at this step
            last = last_checkpoint()
            self.log(f"interrupted: the last checkpoint is {last}; {resume}" if last
                     else "interrupted before the first checkpoint; nothing to resume")
            on_exit()
            raise
        except OSError as exc:   # e.g. a full disk: the writes are atomic, the last checkpoint is whole
            message = f"error: {describe_os_error(exc)}; the last checkpoint is {last_checkpoint()}; {resume}"
            self.log(message, echo=False)
            if self.ctx.is_main:
                print(message, file=sys.stderr)
            exc.rspnet_reported = True
            raise


def describe_os_error(exc: OSError) -> str:
    """One line for a failed read or write: what, where, why."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def exit_status(exc: BaseException) -> int:
    """The CLI exit status of a run that ended with ``exc``: ``EXIT_STOPPED``
    after a stop request (SIGTERM or one Ctrl-C; the job can be requeued),
    ``EXIT_INTERRUPTED`` after a second Ctrl-C, ``EXIT_DIVERGED`` after a
    divergence, ``EXIT_FAILED`` otherwise."""
    if isinstance(exc, (StopRequested, SetupStopped)):
        return EXIT_STOPPED
    if isinstance(exc, Diverged):
        return EXIT_DIVERGED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILED
