"""``Trainer``: what one training step is and what a training checkpoint holds
besides the run's position; the resumable loop itself is
``rspnet.engine.ResumableLoop``.

The derived network is trained with SGD (momentum, weight decay), a poly
learning rate stepped per optimiser step, the segmentation loss of
``rspnet.train.losses`` and, on a GPU, mixed precision (bf16, or fp16 with a
GradScaler) and channels-last. Validation (``rspnet.train.validation``) runs
every ``val_every`` epochs and after the last; the best validation mIoU's
checkpoint is also written to ``best.pt``. With ``ema`` > 0 a copy of the
network keeps the exponential moving average of every floating-point entry
of the weights' state (parameters and BatchNorm statistics) after each step;
validation, ``best.pt`` and the checkpoints' ``"model"`` are the average's.
"""
from __future__ import annotations

import copy
import math
import os
import signal
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Subset

from rspnet import data
from rspnet.architecture import Architecture
from rspnet.engine import distributed
from rspnet.engine.config import local_batch
from rspnet.engine.checkpoint import CheckpointError
from rspnet.engine.config import plain
from rspnet.engine.faults import NonFiniteError
from rspnet.engine.loop import ResumableLoop
from rspnet.engine.precision import amp_dtype, autocast, use_channels_last
from rspnet.engine.sampler import ShardSampler
from rspnet.engine.seeding import rank_seed, seed_everything
from rspnet.models import RSPNet

from .checkpoint import TRAIN_FORMAT, check_architecture, checkpoint_series, load_model_weights
from .config import TrainConfig
from .losses import class_pixel_counts, class_weights, segmentation_loss
from .schedule import poly_lambda
from .validation import validate

__all__ = ["Trainer", "build_datasets"]


def build_datasets(config: TrainConfig):
    """(train, val) data sets of a run; the synthetic scenes are cached."""
    synthetic = config.data == "synthetic"
    defaults = data.SYNTHETIC_TRAINING_IMAGES
    train = data.get_dataset(config.data, config.train_split, root=config.data_root, size=config.size,
                             length=config.train_images or (defaults["train"] if synthetic else None),
                             seed=config.seed, augment=config.augment, crop=config.crop,
                             class_crops=config.class_crops)
    val = data.get_dataset(config.data, "val", root=config.data_root, size=config.size,
                           length=config.val_images or (defaults["val"] if synthetic else None),
                           seed=config.seed)
    if synthetic:
        train, val = data.CachedDataset(train), data.CachedDataset(val)
    return train, val


def _worker_init(worker_id: int) -> None:
    """DataLoader workers: seeded (``data.worker_init_fn``) and deaf to SIGINT /
    SIGTERM, which a terminal or a batch scheduler sends to every process of
    the job: the main process turns them into a checkpoint at the next step and
    shuts the workers down itself, so a worker must not die first."""
    data.worker_init_fn(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader(dataset, config: TrainConfig, sampler=None, batch_size: int | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size or config.batch_size, sampler=sampler,
                      drop_last=sampler is not None, num_workers=config.workers,
                      worker_init_fn=_worker_init if config.workers else None,
                      persistent_workers=False, pin_memory=config.device.startswith("cuda"))


class Trainer(ResumableLoop):
    """One training run: model, optimiser, schedule, data, checkpoints.

    ``ctx``: the process's place in a data-parallel run
    (``rspnet.engine.distributed.init``; ``None``: one process on
    ``config.device``). ``checkpoint_every``: also checkpoint every N steps
    (0: at epoch ends); ``keep``: checkpoints kept (0: all; ``best.pt``
    besides); ``stop``: polled at every step, True asks for a checkpoint and a
    stop (``StopRequested``).
    """

    format = TRAIN_FORMAT

    def __init__(self, config: TrainConfig, architecture: Architecture, out_dir: str,
                 architecture_source: str = "", log: Callable[[str], None] = print,
                 progress: bool = True, datasets=None, ctx: distributed.Context | None = None,
                 checkpoint_every: int = 0, stop: Callable[[], bool] | None = None, keep: int = 3):
        self.config, self.architecture, self.out_dir = config, architecture, out_dir
        self.architecture_source = architecture_source
        ctx = ctx if ctx is not None else distributed.Context(device=torch.device(config.device))
        self.device = ctx.device
        self.local_batch = local_batch(config.batch_size, ctx.world_size)
        seed_everything(config.seed)
        self.classes = data.class_table(config.data, config.data_root)
        model = self.build_model()
        self.model = distributed.convert_sync_batchnorm(model, self.device).to(self.device)
        self.amp_dtype = amp_dtype(config.amp, self.device)
        self.channels_last = use_channels_last(config.channels_last, self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # identical initialisation on every rank, then DDP for the gradients
        distributed.broadcast_tensors_(list(self.model.parameters()) + list(self.model.buffers()))
        self.net = distributed.wrap_ddp(self.model, self.device)
        # the moving average of the weights (--ema): a copy that no optimiser steps
        self.average = copy.deepcopy(self.model).requires_grad_(False).eval() if config.ema else None
        # from here on every rank draws its own random stream (DataLoader worker
        # seeds); the augmentation of a sample depends on (seed, epoch, index)
        seed_everything(rank_seed(config.seed, ctx.rank))
        self.train_set, self.val_set = datasets if datasets is not None else build_datasets(config)
        self.epochs = config.epochs
        self.steps_per_epoch = len(self.train_set) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_set)} training images are fewer than one batch of "
                             f"{config.batch_size}")
        if config.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr,
                                              weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay, nesterov=config.nesterov)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_lambda(config.epochs * self.steps_per_epoch, config.poly_power))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.class_weights = class_weights(config.class_weights, *class_pixel_counts(
            self.train_set, self.classes.num_classes, data.IGNORE_INDEX)) if config.class_weights != "none" else None
        # ignores label 255, as every rspnet data set marks void
        self.loss_fn = segmentation_loss(config, data.IGNORE_INDEX, self.class_weights)
        self.best_miou: float | None = None
        self.best_epoch: int | None = None
        self.last_val: dict[str, Any] | None = None
        self.start_loop(ctx, checkpoint_series(out_dir, keep), log, progress, checkpoint_every, stop)

    def build_model(self) -> torch.nn.Module:
        """The network trained: the architecture's ``RSPNet`` (a benchmark may
        train another network through the same recipe by overriding this)."""
        return RSPNet(self.architecture, self.classes.num_classes)

    # --------------------------------------------------------------- state
    @property
    def evaluated(self) -> torch.nn.Module:
        """The network validated and saved as ``"model"``: the average with ``--ema``."""
        return self.model if self.average is None else self.average

    def extra_state(self) -> dict[str, Any]:
        trained = {} if self.average is None else {"trained_model": self.model.state_dict()}
        return {
            "model": self.evaluated.state_dict(), **trained,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "architecture": self.architecture.to_dict(),
            "architecture_source": self.architecture_source,
            "architecture_fingerprint": self.architecture.fingerprint(),
            "num_classes": self.classes.num_classes,
            "classes": self.classes.to_dict(),   # names and colours, for rspnet.predict
            "config": plain(self.config),
            "best_miou": self.best_miou, "best_epoch": self.best_epoch,
            "class_weights": self.class_weights,
        }

    def load_extra_state(self, state: dict[str, Any], name: str) -> None:
        check_architecture(state, self.architecture, self.classes.num_classes, name)
        for key in ("optimizer", "scheduler", "epoch", "batch", "step", "rng", "config"):
            if key not in state:
                raise CheckpointError(f"{name} has no {key!r}: it holds weights only and cannot be "
                                      f"resumed (use it with rspnet.evaluate or rspnet.export)")
        if self.average is None:
            load_model_weights(self.model, state, name)
        else:
            load_model_weights(self.model, state, name, "trained_model")
            load_model_weights(self.average, state, name)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # the poly schedule follows this run's --epochs (which may extend a run)
        self.scheduler.lr_lambdas = [poly_lambda(self.config.epochs * self.steps_per_epoch,
                                                 self.config.poly_power)]
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_miou, self.best_epoch = state.get("best_miou"), state.get("best_epoch")
        if state.get("class_weights") is not None:   # exactly the weights the run started with
            self.class_weights = [float(w) for w in state["class_weights"]]
            self.loss_fn = segmentation_loss(self.config, data.IGNORE_INDEX, self.class_weights)
        # the learning rate of the resumed step under this run's schedule (the
        # same expression LambdaLR evaluates, so an unchanged run is bit-exact)
        lam = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * lam
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ---------------------------------------------------------------- loop
    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def epoch_batches(self):
        """This rank's shard of the current epoch from batch ``self.batch`` on;
        the order depends on (seed, epoch) only (with one process it is the
        permutation ``torch.randperm(n, seed * 100003 + epoch)``)."""
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)  # augmentation differs per epoch
        sampler = ShardSampler(self.train_set, self.ctx.world_size, self.ctx.rank, shuffle=True,
                               seed=self.config.seed * 100003, drop_last=True)
        sampler.set_epoch(self.epoch)
        sampler.set_start(self.batch * self.local_batch)
        return _loader(self.train_set, self.config, sampler, self.local_batch)

    def train_step(self, batch) -> tuple[float, bool]:
        images, labels = batch
        return self._step(images, labels)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, bool]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            scores = self.net(images)
        loss = self.loss_fn(scores, labels)
        # the global mean loss, checked before any update, and whether any rank
        # was asked to stop: one small collective
        value, stop = distributed.mean_and_any(loss, self.stop())
        if not math.isfinite(value):
            raise NonFiniteError("the training loss", value)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.average is not None:
            self._update_average()
        return value, stop

    @torch.no_grad()
    def _update_average(self) -> None:
        """average <- d * average + (1 - d) * weights after the step, with
        d = min(ema, (1 + t) / (10 + t)) after t earlier steps, so that the
        first steps do not leave the average near the initial weights;
        integer entries (BatchNorm's batch counts) are copied."""
        decay = min(self.config.ema, (1 + self.step) / (10 + self.step))
        current = self.model.state_dict()
        for name, avg in self.average.state_dict().items():
            if avg.is_floating_point():
                avg.lerp_(current[name], 1 - decay)
            else:
                avg.copy_(current[name])

    def progress_postfix(self, loss: float) -> dict[str, str]:
        return {"loss": f"{loss:.4f}", "lr": f"{self.scheduler.get_last_lr()[0]:.2e}"}

    def end_epoch(self, train_loss: float) -> list[str]:
        """Validate when due, record the epoch, log it; ``best.pt`` too when
        the validation mIoU improved."""
        c = self.config
        val = None
        if self.average is not None:
            # data parallel: the average's BN statistics are rank 0's average. Its
            # checkpoints hold rank 0's, so a resumed run continues them exactly
            # (the ranks' own would be lost at a mid-epoch checkpoint)
            distributed.broadcast_tensors_(list(self.average.buffers()))
        if self.epoch % c.val_every == 0 or self.epoch == c.epochs:
            shard = Subset(self.val_set, range(self.ctx.rank, len(self.val_set), self.ctx.world_size))
            val = validate(self.evaluated, _loader(shard, c, batch_size=self.local_batch), self.device,
                           self.classes.names, data.IGNORE_INDEX, self.amp_dtype, self.channels_last)
            self.last_val = val
        self.tick()
        record = {"epoch": self.epoch, "step": self.step, "lr": self._epoch_lr, "train_loss": train_loss,
                  "val_loss": None if val is None else val["loss"],
                  "val_miou": None if val is None else val["miou"],
                  "val_pixel_accuracy": None if val is None else val["pixel_accuracy"],
                  "seconds": round(self.elapsed - self._epoch_start, 3), "elapsed": round(self.elapsed, 3)}
        self.history.append(record)
        improved = val is not None and val["miou"] is not None and (
            self.best_miou is None or val["miou"] > self.best_miou)
        if improved:
            self.best_miou, self.best_epoch = val["miou"], self.epoch
        self.log(_epoch_line(record, c.epochs, improved))
        return [os.path.join(self.out_dir, "best.pt")] if improved else []


def _epoch_line(r: dict[str, Any], epochs: int, improved: bool) -> str:
    miou = "   -   " if r["val_miou"] is None else f"{100 * r['val_miou']:6.2f}%"
    return (f"epoch {r['epoch']:>3}/{epochs}  loss {r['train_loss']:.4f}  val mIoU {miou}"
            f"{' *' if improved else '  '}  lr {r['lr']:.2e}  time {r['seconds']:.1f}s")
