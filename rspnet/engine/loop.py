"""``ResumableLoop``: the epoch/step loop of a search stage and a training run.

* Position: ``epoch`` (completed), ``batch`` (done in the current epoch),
  ``step`` (optimiser steps taken), ``elapsed`` (seconds over every
  resumption) and the current epoch's loss sum, so a checkpoint taken
  mid-epoch continues exactly: the data order of an epoch depends only on the
  seed and the epoch (``ShardSampler``), and the resumed run skips the batches
  already done.
* Checkpoints (``save``) at every epoch end and every ``checkpoint_every``
  steps, written by rank 0 with every rank's random generator states; a
  model with a NaN or infinity is never written, so a good checkpoint is never
  followed by a bad one.
* Faults: a non-finite loss or parameter stops the run with ``Diverged``
  (where, and the last good checkpoint); a stop request (``stop()``, polled
  at every step, e.g. set by SIGTERM) checkpoints at the next step boundary and
  raises ``StopRequested`` (a request during an epoch's last step waits for
  the epoch-end checkpoint).

A subclass says what is its own: what a step does (``train_step``), which
batches an epoch reads (``epoch_batches``), what happens at an epoch's end
(``end_epoch``: evaluation, history, the log line) and what a checkpoint holds
besides the position (``extra_state`` / ``load_extra_state``).

BatchNorm statistics of a data-parallel run are the ranks' average at an
epoch's end and rank 0's mid-epoch, which is exact too (docs/design.md §11).
"""
from __future__ import annotations

import abc
import time
from typing import Any, Callable, Iterable, Sequence

from tqdm import tqdm

from . import distributed
from .checkpoint import CheckpointSeries, save_checkpoint
from .faults import Diverged, NonFiniteError, StopRequested, first_nonfinite
from .seeding import rng_state, set_rng_state

__all__ = ["ResumableLoop"]


class ResumableLoop(abc.ABC):
    """Base of ``rspnet.search.StageSearch`` and ``rspnet.train.Trainer``.

    Subclasses set, before calling ``start_loop``: ``model``, ``epochs``
    (total), ``steps_per_epoch``, and they implement the hooks below.
    ``label`` prefixes the step in every message (``"stage 1 "``).
    """

    format: str = ""       # the checkpoint's "format" tag
    label: str = ""

    def start_loop(self, ctx: distributed.Context, series: CheckpointSeries,
                   log: Callable[[str], None], progress: bool, checkpoint_every: int,
                   stop: Callable[[], bool] | None) -> None:
        self.ctx, self.series, self.log, self.progress = ctx, series, log, progress
        self.checkpoint_every, self.stop = checkpoint_every, stop or (lambda: False)
        self.epoch = 0            # epochs completed
        self.batch = 0            # batches done in the current epoch
        self.step = 0             # optimiser steps taken
        self.elapsed = 0.0        # seconds in the loop, over every resumption
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: str | None = None
        # the current epoch so far: its loss sum, its learning rate and start time
        self._loss_sum, self._loss_count = 0.0, 0
        self._epoch_lr = self.current_lr()
        self._epoch_start = 0.0
        self._clock: float | None = None
        self._stop_at: str | None = None   # a stop requested during an epoch's last step
        self._copies: list[str] = []       # where the next checkpoint is also written

    # ------------------------------------------------------------ the hooks
    @abc.abstractmethod
    def current_lr(self) -> float:
        """The weights' learning rate now (recorded at each epoch's start)."""

    @abc.abstractmethod
    def epoch_batches(self) -> Iterable:
        """This rank's batches of the current epoch from batch ``self.batch`` on."""

    @abc.abstractmethod
    def train_step(self, batch) -> tuple[float, bool]:
        """One step on ``batch``: (the loss, averaged over the ranks; whether
        any rank was asked to stop). Raises ``NonFiniteError`` before
        updating anything when a loss or gradient is not finite."""

    def after_epoch_steps(self) -> None:
        """After the epoch's last step (e.g. a per-epoch scheduler)."""

    def end_epoch(self, train_loss: float) -> Sequence[str]:
        """At the end of an epoch (``self.epoch`` counts it): evaluate, record,
        log. Returns extra paths the epoch's checkpoint is also written to."""
        return ()

    def progress_postfix(self, loss: float) -> dict[str, str]:
        return {"loss": f"{loss:.4f}"}

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the position and the RNG states."""
        return {}

    def load_extra_state(self, state: dict[str, Any], name: str) -> None:
        """Restore ``extra_state``; may raise for a checkpoint that does not fit."""

    # ----------------------------------------------------------- position
    @property
    def done(self) -> bool:
        return self.epoch >= self.epochs

    def where(self, done: bool = False) -> str:
        """The step about to run (``done``: the one just taken), as messages name it."""
        k = 0 if done else 1
        return (f"{self.label}step {self.step + k} (epoch {self.epoch + 1}, batch {self.batch + k}/"
                f"{self.steps_per_epoch})")

    def tick(self) -> None:
        now = time.perf_counter()
        if self._clock is not None:
            self.elapsed += now - self._clock
        self._clock = now

    def state_dict(self, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "format": self.format,
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "elapsed": self.elapsed,
            "epoch_progress": {"loss_sum": self._loss_sum, "loss_count": self._loss_count,
                               "lr": self._epoch_lr, "start": self._epoch_start},
            "history": self.history,
            "world_size": self.ctx.world_size,
            "rng": rng if rng is not None else [rng_state()],   # one state per rank
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any], name: str) -> None:
        """Continue from ``state``, a verified checkpoint of this loop
        (``name`` is how messages call it)."""
        self.load_extra_state(state, name)
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        progress = state["epoch_progress"]
        self._loss_sum, self._loss_count = progress["loss_sum"], progress["loss_count"]
        self._epoch_lr, self._epoch_start = progress["lr"], progress["start"]
        self.history = list(state.get("history", []))
        rngs, world = state["rng"], self.ctx.world_size
        set_rng_state(rngs[self.ctx.rank] if len(rngs) == world else rngs[0])
        self.last_checkpoint = name
        if state.get("world_size", 1) != world:
            self.log(f"note: {name} ran on {state.get('world_size', 1)} process(es), this run on {world}: "
                     f"the same global batches; results differ by rounding and BatchNorm statistics")

    def save(self) -> str:
        """Checkpoint now (every rank calls it; rank 0 writes), at an epoch's
        end also to the paths ``end_epoch`` returned. Refuses to write
        non-finite parameters."""
        also, self._copies = self._copies, []
        self.tick()
        bad = first_nonfinite(list(self.model.named_parameters()))
        if bad is not None:
            raise Diverged(NonFiniteError(f"parameter {bad[0]!r}", bad[1]), f"{self.label}step {self.step}",
                           self.last_checkpoint)
        rngs = distributed.gather_object(rng_state())
        path = self.series.path(self.step)
        if self.ctx.is_main:
            state = self.state_dict(rngs)
            self.series.save(state, self.step)
            for extra in also:
                save_checkpoint(state, extra)
        self.last_checkpoint = path
        return path

    # --------------------------------------------------------------- loop
    def train_epoch(self) -> float:
        """The rest of the current epoch, from batch ``self.batch`` on; returns
        its mean loss (over the ranks and every step of the epoch)."""
        self.model.train()
        if self.batch == 0:
            self._loss_sum, self._loss_count = 0.0, 0
            self._epoch_lr = self.current_lr()
            self.tick()
            self._epoch_start = self.elapsed
        n = self.steps_per_epoch
        batches = self.epoch_batches()
        bar = tqdm(total=n, initial=self.batch, desc=f"{self.label}epoch {self.epoch + 1}/{self.epochs}",
                   leave=False, disable=not self.progress, dynamic_ncols=True)
        for batch in batches:
            where = self.where()
            try:
                loss, stop = self.train_step(batch)
            except NonFiniteError as exc:
                raise Diverged(exc, where, self.last_checkpoint) from None
            self.step += 1
            self.batch += 1
            self._loss_sum += loss
            self._loss_count += 1
            bar.update()
            bar.set_postfix(self.progress_postfix(loss))
            if stop:
                if self.batch == n:   # the epoch's end is the next boundary: stop after its checkpoint
                    self._stop_at = self.where(done=True)
                    break
                bar.close()
                raise StopRequested(self.save(), self.where(done=True))
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.batch < n:
                self.save()
        bar.close()
        self.batch = 0
        self.after_epoch_steps()
        return self._loss_sum / max(self._loss_count, 1)

    def run(self, max_epochs: int | None = None) -> None:
        """Train up to ``epochs`` (or ``max_epochs`` more), with ``end_epoch``
        and a checkpoint after each."""
        self._clock = time.perf_counter()
        done = 0
        while not self.done and (max_epochs is None or done < max_epochs):
            train_loss = self.train_epoch()
            self.epoch += 1
            done += 1
            distributed.average_buffers_(self.model)   # BN statistics: the ranks' average
            self._copies = list(self.end_epoch(train_loss))
            path = self.save()
            if self._stop_at is not None:
                raise StopRequested(path, self._stop_at)
        self.tick()
        self._clock = None
