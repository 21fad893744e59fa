"""``python -m rspnet.train``: train a derived RSPNet from scratch.

The network is built from an architecture file written by ``python -m
rspnet.search`` and trained with SGD (momentum 0.9, weight decay 5e-4), a poly
learning rate (power 0.9, per step) and pixel-wise cross-entropy that ignores
label 255, optionally with online hard example mining (``--ohem``). On a GPU it
uses mixed precision (bf16, or fp16 with a GradScaler) and channels-last.

Checkpoints (``rspnet.checkpoint``) are written at every epoch end and every
``--checkpoint-every`` steps, the newest ``--keep-checkpoints`` kept, plus
``best.pt``; each holds the weights, the optimiser, the scheduler, the epoch,
the batch within it, the step, every rank's random generator states and the
architecture. ``--resume auto`` continues from the newest valid one exactly,
mid-epoch included (the data order of an epoch depends only on the seed and the
epoch); SIGTERM / Ctrl-C write a checkpoint at the next step and stop; a NaN
stops the run, leaving the last good checkpoint the newest. The defaults train
the synthetic street scenes on two CPU cores in a few minutes.

Data parallel: ``torchrun --nproc_per_node=N -m rspnet.train ...`` (one process
per GPU; ``--batch-size`` is the global batch; DDP, SyncBatchNorm on GPUs).

Example::

    python -m rspnet.search --out runs/search
    python -m rspnet.train --arch runs/search/architecture.json --out runs/train
    python -m rspnet.evaluate --arch runs/search/architecture.json --checkpoint runs/train/best.pt
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from rspnet import data, distributed
from rspnet.cli import nonnegative_int, parse_size, positive_float, positive_int
from rspnet.checkpoint import (TRAIN_FORMAT, CheckpointError, CheckpointSeries, architecture_fingerprint,
                               atomic_open, check_architecture, load_model_weights, load_train_checkpoint,
                               rng_state, save_checkpoint, seed_everything, set_rng_state)
from rspnet.distributed import (Diverged, NonFiniteError, ShardSampler, StopRequested, StopSignal,
                                first_nonfinite, mean_and_any)
from rspnet.metrics import ConfusionMatrix, summarize
from rspnet.models import RSPNet
from rspnet.search.architecture import Architecture

AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the CLI's."""
    data: str = "synthetic"
    data_root: str | None = None
    size: tuple[int, int] = (64, 128)
    train_images: int | None = None   # None: Cityscapes all, synthetic SYNTHETIC_IMAGES["train"]
    val_images: int | None = None     # None: Cityscapes all, synthetic SYNTHETIC_IMAGES["val"]
    augment: bool = False
    epochs: int = 8
    batch_size: int = 4
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    poly_power: float = 0.9
    ohem: bool = False
    ohem_thresh: float = 0.7
    ohem_min_kept: int | None = None  # None: 1/16 of the labelled pixels of the batch
    amp: str = "auto"
    channels_last: str = "auto"
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    val_every: int = 2
    keep: int = 3                     # checkpoints kept (0: all); best.pt besides


# The synthetic generator is unlimited: with the data set's 64 default scenes
# a 0.1 M-parameter network overfits (train loss keeps falling while val mIoU
# stalls, docs/train_evaluate_export.md); 512 do not, and 64 validation scenes
# make the logged mIoU less noisy than 16.
SYNTHETIC_IMAGES = {"train": 512, "val": 64}

# Settings that may differ between a run and its resumption without changing
# what is computed (beyond float rounding: device, precision, memory format);
# a longer --epochs stretches the poly schedule from the resumed step.
RESUMABLE_CHANGES = ("device", "amp", "channels_last", "workers", "val_every", "keep", "epochs",
                     "data_root")

CHECKPOINT_PREFIX = "checkpoint-step"   # checkpoint-step00000128.pt: named by the step count


def checkpoint_series(out_dir: str | os.PathLike, keep: int = 3) -> CheckpointSeries:
    return CheckpointSeries(out_dir, CHECKPOINT_PREFIX, keep)


# --------------------------------------------------------------------- losses
def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Losses are taken in float32 at least: mixed-precision logits are upcast,
    float64 ones are kept."""
    return logits if logits.dtype == torch.float64 else logits.float()


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7,
                       min_kept: int | None = None, ignore_index: int = 255) -> torch.Tensor:
    """Online hard example mining: the mean cross-entropy of the pixels whose
    probability of the true class is below ``thresh`` (loss above
    ``-log(thresh)``), and of at least the ``min_kept`` hardest labelled pixels
    (default: 1/16 of them) when fewer are that hard."""
    losses = F.cross_entropy(_at_least_fp32(logits), target, ignore_index=ignore_index,
                             reduction="none").flatten()
    losses = losses[target.flatten() != ignore_index]
    if losses.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph; nothing to learn from
    with torch.no_grad():
        threshold = -math.log(thresh)
        kept = losses.numel() // 16 if min_kept is None else min_kept
        kept = min(max(kept, 1), losses.numel())
        kth = losses.topk(kept).values[-1].item()
        threshold = min(threshold, kth)
    return losses[losses >= threshold].mean()


def segmentation_loss(config: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if config.ohem:
        return lambda logits, target: ohem_cross_entropy(
            logits, target, config.ohem_thresh, config.ohem_min_kept, data.IGNORE_INDEX)
    return lambda logits, target: F.cross_entropy(_at_least_fp32(logits), target,
                                                  ignore_index=data.IGNORE_INDEX)


def poly_lambda(total_steps: int, power: float) -> Callable[[int], float]:
    return lambda step: max(0.0, 1.0 - min(step, total_steps) / total_steps) ** power


# ----------------------------------------------------------------------- data
class CachedDataset(torch.utils.data.Dataset):
    """Renders (or decodes) every raw sample once and keeps it in memory, then
    applies the data set's transform per access. Synthetic scenes are
    deterministic and cheap to keep; re-rendering them every epoch would cost
    as much CPU as training the small network."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.samples = [dataset.sample(i) for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image, label = self.samples[index]
        return self.dataset.transform(image, label, index)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def build_datasets(config: TrainConfig):
    synthetic = config.data == "synthetic"
    train = data.get_dataset(config.data, "train", root=config.data_root, size=config.size,
                             length=config.train_images or (SYNTHETIC_IMAGES["train"] if synthetic else None),
                             seed=config.seed, augment=config.augment)
    val = data.get_dataset(config.data, "val", root=config.data_root, size=config.size,
                           length=config.val_images or (SYNTHETIC_IMAGES["val"] if synthetic else None),
                           seed=config.seed)
    if config.data == "synthetic":
        train, val = CachedDataset(train), CachedDataset(val)
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


# -------------------------------------------------------------------- device
def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
    if config.amp == "fp16":
        return torch.float16
    if config.amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def use_channels_last(config: TrainConfig, device: torch.device) -> bool:
    return config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, device: torch.device,
             dtype: torch.dtype | None = None, channels_last: bool = False) -> dict[str, Any]:
    """Single-scale validation: mean loss, confusion-matrix summary (summed
    over the ranks of a data-parallel run, each of which passes its shard)."""
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(data.NUM_CLASSES, data.IGNORE_INDEX)
    loss_sum, pixels = 0.0, 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            logits = model(images)
        logits = _at_least_fp32(logits)
        n = int((labels != data.IGNORE_INDEX).sum())
        if n:
            loss_sum += F.cross_entropy(logits, labels, ignore_index=data.IGNORE_INDEX,
                                        reduction="sum").item()
            pixels += n
        confusion.update(logits.argmax(1), labels)
    model.train(was_training)
    # data parallel: each rank saw a shard; the counts add up (no-op in one process)
    matrix = distributed.all_reduce_sum(confusion.matrix.to(device)).cpu()
    loss_sum, pixels = distributed.all_reduce_sum(
        torch.tensor([loss_sum, float(pixels)], dtype=torch.float64, device=device)).tolist()
    summary = summarize(matrix, data.CLASS_NAMES)
    summary["loss"] = loss_sum / pixels if pixels else None
    return summary


# ------------------------------------------------------------------ trainer
class Trainer:
    """One training run: model, optimiser, schedule, data, checkpoints.

    ``ctx``: the process's place in a data-parallel run
    (``rspnet.distributed.init``; ``None``: one process on ``config.device``).
    ``checkpoint_every``: also checkpoint every N steps (0: at epoch ends);
    ``stop``: polled at every step, True asks for a checkpoint and a stop
    (``StopRequested``).
    """

    def __init__(self, config: TrainConfig, architecture: Architecture, out_dir: str,
                 architecture_source: str = "", log: Callable[[str], None] = print,
                 progress: bool = True, datasets=None, ctx: distributed.Context | None = None,
                 checkpoint_every: int = 0, stop: Callable[[], bool] | None = None):
        self.config, self.architecture, self.out_dir = config, architecture, out_dir
        self.architecture_source, self.log, self.progress = architecture_source, log, progress
        self.ctx = ctx if ctx is not None else distributed.Context(device=torch.device(config.device))
        self.device = self.ctx.device
        self.checkpoint_every, self.stop = checkpoint_every, stop or (lambda: False)
        world = self.ctx.world_size
        if config.batch_size % world:
            raise ValueError(f"the global batch {config.batch_size} does not divide over {world} processes")
        self.local_batch = config.batch_size // world
        seed_everything(config.seed)
        model = RSPNet(architecture, data.NUM_CLASSES)
        self.model = distributed.convert_sync_batchnorm(model, self.device).to(self.device)
        self.amp_dtype = amp_dtype(config, self.device)
        self.channels_last = use_channels_last(config, self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # identical initialisation on every rank, then DDP for the gradients
        distributed.broadcast_tensors_(list(self.model.parameters()) + list(self.model.buffers()))
        self.net = distributed.wrap_ddp(self.model, self.device)
        # from here on every rank draws its own random stream (DataLoader worker
        # seeds); the augmentation of a sample depends on (seed, epoch, index)
        seed_everything(config.seed * 1000 + self.ctx.rank)
        self.train_set, self.val_set = datasets if datasets is not None else build_datasets(config)
        self.steps_per_epoch = len(self.train_set) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_set)} training images are fewer than one batch of "
                             f"{config.batch_size}")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay, nesterov=config.nesterov)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_lambda(config.epochs * self.steps_per_epoch, config.poly_power))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loss_fn = segmentation_loss(config)
        self.series = checkpoint_series(out_dir, config.keep)
        self.epoch = 0            # epochs completed
        self.batch = 0            # batches done in the current epoch
        self.step = 0             # optimiser steps taken
        self.elapsed = 0.0        # training seconds, over every resumption
        self.history: list[dict[str, Any]] = []
        self.best_miou: float | None = None
        self.best_epoch: int | None = None
        self.last_checkpoint: str | None = None
        # the current epoch so far: its losses, its learning rate at the start, its start time
        self._loss_sum, self._loss_count = 0.0, 0
        self._epoch_lr = self.optimizer.param_groups[0]["lr"]
        self._epoch_start = 0.0
        self._clock: float | None = None
        self._stop_at: str | None = None

    # --------------------------------------------------------------- state
    def state_dict(self, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "format": TRAIN_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "elapsed": self.elapsed,
            "epoch_progress": {"loss_sum": self._loss_sum, "loss_count": self._loss_count,
                               "lr": self._epoch_lr, "start": self._epoch_start},
            "world_size": self.ctx.world_size,
            "rng": rng if rng is not None else [rng_state()],   # one state per rank
            "architecture": self.architecture.to_dict(),
            "architecture_source": self.architecture_source,
            "architecture_fingerprint": architecture_fingerprint(self.architecture),
            "num_classes": data.NUM_CLASSES,
            "config": _plain(dataclasses.asdict(self.config)),
            "history": self.history,
            "best_miou": self.best_miou, "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: dict[str, Any], name: str) -> None:
        check_architecture(state, self.architecture, data.NUM_CLASSES, name)
        for key in ("optimizer", "scheduler", "epoch", "batch", "step", "rng", "config"):
            if key not in state:
                raise CheckpointError(f"{name} has no {key!r}: it holds weights only and cannot be "
                                      f"resumed (use it with rspnet.evaluate or rspnet.export)")
        load_model_weights(self.model, state, name)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # the poly schedule follows this run's --epochs (which may extend a run)
        self.scheduler.lr_lambdas = [poly_lambda(self.config.epochs * self.steps_per_epoch,
                                                 self.config.poly_power)]
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        progress = state["epoch_progress"]
        self._loss_sum, self._loss_count = progress["loss_sum"], progress["loss_count"]
        self._epoch_lr, self._epoch_start = progress["lr"], progress["start"]
        self.history = list(state.get("history", []))
        self.best_miou, self.best_epoch = state.get("best_miou"), state.get("best_epoch")
        rngs, world = state["rng"], self.ctx.world_size
        set_rng_state(rngs[self.ctx.rank] if len(rngs) == world else rngs[0])
        # the learning rate of the resumed step under this run's schedule (the
        # same expression LambdaLR evaluates, so an unchanged run is bit-exact)
        lam = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * lam
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.last_checkpoint = name
        if state.get("world_size", 1) != world:
            self.log(f"note: {name} ran on {state.get('world_size', 1)} process(es), this run on {world}: "
                     f"the same global batches; results differ by rounding and BatchNorm statistics")

    def where(self) -> str:
        return (f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self.batch + 1}/"
                f"{self.steps_per_epoch})")

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._clock is not None:
            self.elapsed += now - self._clock
        self._clock = now

    def save(self, best: bool = False) -> str:
        """Checkpoint now (every rank calls it; rank 0 writes), and ``best.pt``
        too when ``best``. Refuses to write non-finite parameters, so that a
        good checkpoint is never followed by a bad one. (BatchNorm statistics:
        see ``rspnet.search.searcher.StageSearch.save``.)"""
        self._tick()
        bad = first_nonfinite(list(self.model.named_parameters()))
        if bad is not None:
            raise Diverged(NonFiniteError(f"parameter {bad[0]!r}", bad[1]), f"step {self.step}",
                           self.last_checkpoint)
        rngs = distributed.gather_object(rng_state())
        path = self.series.path(self.step)
        if self.ctx.is_main:
            state = self.state_dict(rngs)
            self.series.save(state, self.step)
            if best:
                save_checkpoint(state, os.path.join(self.out_dir, "best.pt"))
        self.last_checkpoint = path
        return path

    # ---------------------------------------------------------------- loop
    def _train_loader(self) -> DataLoader:
        """This rank's shard of the current epoch from batch ``self.batch`` on;
        the order depends on (seed, epoch) only (with one process it is the
        permutation ``torch.randperm(n, seed * 100003 + epoch)``)."""
        sampler = ShardSampler(self.train_set, self.ctx.world_size, self.ctx.rank, shuffle=True,
                               seed=self.config.seed * 100003, drop_last=True)
        sampler.set_epoch(self.epoch)
        sampler.set_start(self.batch * self.local_batch)
        return _loader(self.train_set, self.config, sampler, self.local_batch)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, bool]:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            logits = self.net(images)
        loss = self.loss_fn(logits, labels)
        # the global mean loss, checked before any update, and whether any rank
        # was asked to stop: one small collective
        value, stop = mean_and_any(loss, self.stop())
        if not math.isfinite(value):
            raise NonFiniteError("the training loss", value)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value, stop

    def train_epoch(self) -> float:
        """The rest of the current epoch, from batch ``self.batch`` on; returns
        its mean loss (over the ranks and every step of the epoch)."""
        self.model.train()
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)  # augmentation differs per epoch
        n = self.steps_per_epoch
        if self.batch == 0:
            self._loss_sum, self._loss_count = 0.0, 0
            self._epoch_lr = self.optimizer.param_groups[0]["lr"]
            self._tick()
            self._epoch_start = self.elapsed
        bar = tqdm(total=n, initial=self.batch, desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                   leave=False, disable=not self.progress, dynamic_ncols=True)
        for images, labels in self._train_loader():
            where = self.where()
            try:
                value, stop = self._step(images, labels)
            except NonFiniteError as exc:
                raise Diverged(exc, where, self.last_checkpoint) from None
            self.step += 1
            self.batch += 1
            self._loss_sum += value
            self._loss_count += 1
            bar.update()
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if stop:
                where = f"step {self.step} (epoch {self.epoch + 1}, batch {self.batch}/{n})"
                if self.batch == n:   # the epoch's end is the next boundary: stop after its checkpoint
                    self._stop_at = where
                    break
                bar.close()
                raise StopRequested(self.save(), where)
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.batch < n:
                self.save()
        bar.close()
        self.batch = 0
        return self._loss_sum / max(self._loss_count, 1)

    def run(self, stop_after: int | None = None) -> None:
        """Train up to ``config.epochs`` (or ``stop_after`` more epochs),
        validating every ``val_every`` epochs and at the last one."""
        c = self.config
        shard = Subset(self.val_set, range(self.ctx.rank, len(self.val_set), self.ctx.world_size))
        val_loader = _loader(shard, c, batch_size=self.local_batch)
        self._clock = time.perf_counter()
        done = 0
        while self.epoch < c.epochs and (stop_after is None or done < stop_after):
            train_loss = self.train_epoch()
            self.epoch += 1
            done += 1
            distributed.average_buffers_(self.model)   # BN statistics: the ranks' average
            val = None
            if self.epoch % c.val_every == 0 or self.epoch == c.epochs:
                val = validate(self.model, val_loader, self.device, self.amp_dtype, self.channels_last)
            self._tick()
            seconds = self.elapsed - self._epoch_start
            record = {"epoch": self.epoch, "step": self.step, "lr": self._epoch_lr, "train_loss": train_loss,
                      "val_loss": None if val is None else val["loss"],
                      "val_miou": None if val is None else val["miou"],
                      "val_pixel_accuracy": None if val is None else val["pixel_accuracy"],
                      "seconds": round(seconds, 3), "elapsed": round(self.elapsed, 3)}
            self.history.append(record)
            improved = val is not None and val["miou"] is not None and (
                self.best_miou is None or val["miou"] > self.best_miou)
            if improved:
                self.best_miou, self.best_epoch = val["miou"], self.epoch
            self.log(_epoch_line(record, c.epochs, improved))
            path = self.save(best=improved)
            if val is not None:
                self.last_val = val
            if self._stop_at is not None:
                raise StopRequested(path, self._stop_at)
        self._tick()
        self._clock = None


def _epoch_line(r: dict[str, Any], epochs: int, improved: bool) -> str:
    miou = "   -   " if r["val_miou"] is None else f"{100 * r['val_miou']:6.2f}%"
    return (f"epoch {r['epoch']:>3}/{epochs}  loss {r['train_loss']:.4f}  val mIoU {miou}"
            f"{' *' if improved else '  '}  lr {r['lr']:.2e}  time {r['seconds']:.1f}s")


def _plain(value: Any) -> Any:
    """Tuples to lists, so that the config loads with weights_only=True and
    compares equal after a round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- outputs
def write_json(path: str, obj: Any) -> None:
    text = json.dumps(obj, indent=1) + "\n"
    with atomic_open(path) as f:
        f.write(text.encode())


def plot_curves(history: Sequence[dict[str, Any]], path: str, title: str = "") -> None:
    """Loss (train, val) and val mIoU per epoch, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    val = [(r["epoch"], r["val_loss"]) for r in history if r["val_loss"] is not None]
    if val:
        ax_loss.plot(*zip(*val), "o-", label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    miou = [(r["epoch"], 100 * r["val_miou"]) for r in history if r["val_miou"] is not None]
    if miou:
        ax_miou.plot(*zip(*miou), "o-", color="tab:green")
    ax_miou.set_xlabel("epoch")
    ax_miou.set_ylabel("val mIoU (%)")
    ax_miou.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------- CLI
def check_device(parser: argparse.ArgumentParser, device: str) -> str:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        parser.error(f"--device {device!r}: not a device (e.g. cpu, cuda, cuda:1)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {device}: CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            parser.error(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        parser.error(f"--device {device}: only cpu and cuda are supported")
    return device


def set_threads(threads: int | None, device: torch.device) -> None:
    """``--threads``: None = 1 on CPU (see the flag's help), else PyTorch's
    default; 0 = PyTorch's default; N = N."""
    if threads is None:
        threads = 1 if device.type == "cpu" else 0
    if threads:
        torch.set_num_threads(threads)


def load_architecture_arg(parser: argparse.ArgumentParser, path: str, flag: str = "--arch") -> Architecture:
    try:
        return Architecture.load(path)
    except FileNotFoundError:
        parser.error(f"{flag} {path}: no such file")
    except (OSError, ValueError) as exc:
        parser.error(f"{flag} {path}: {exc}")


DEFAULTS = TrainConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rspnet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="architecture file (architecture.json of rspnet.search)")
    p.add_argument("--out", help="output directory (default: runs/train-<timestamp>; with --resume PATH "
                                 "the checkpoint's directory)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="continue a run: 'auto' from the newest valid checkpoint in --out (falling back "
                        "past damaged ones; starts afresh when there is none), or PATH, one checkpoint")
    p.add_argument("--checkpoint-every", type=nonnegative_int, default=0, metavar="N",
                   help="also write a checkpoint every N steps within an epoch (0: at epoch ends only)")
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=data.DATASETS, default=DEFAULTS.data)
    g.add_argument("--data-root", help="Cityscapes directory (holding leftImg8bit/ and gtFine/)")
    g.add_argument("--size", type=parse_size, default=DEFAULTS.size,
                   help=f"HxW of the training crops and validation images, multiples of 32 "
                        f"(default {DEFAULTS.size[0]}x{DEFAULTS.size[1]})")
    g.add_argument("--train-images", type=positive_int,
                   help=f"use the first N training images (default: synthetic {SYNTHETIC_IMAGES['train']}, "
                        f"Cityscapes all)")
    g.add_argument("--val-images", type=positive_int,
                   help=f"use the first N validation images (default: synthetic {SYNTHETIC_IMAGES['val']}, "
                        f"Cityscapes all)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random scale 0.5-2x, crop, flip, colour jitter (default: on for Cityscapes, "
                        "off for the short synthetic run)")
    g.add_argument("--workers", type=nonnegative_int, default=DEFAULTS.workers,
                   help="DataLoader workers (default %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="(default %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="(default %(default)s)")
    g.add_argument("--lr", type=positive_float, default=DEFAULTS.lr,
                   help="initial learning rate (default %(default)s)")
    g.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="(default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="(default %(default)s)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--poly-power", type=float, default=DEFAULTS.poly_power,
                   help="lr = base * (1 - step/steps)^power (default %(default)s)")
    g.add_argument("--ohem", action="store_true", help="online hard example mining")
    g.add_argument("--ohem-thresh", type=float, default=DEFAULTS.ohem_thresh,
                   help="OHEM keeps pixels whose true-class probability is below this")
    g.add_argument("--ohem-min-kept", type=positive_int,
                   help="OHEM keeps at least this many pixels per batch (default: 1/16 of the labelled)")
    g = p.add_argument_group("device")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="(default %(default)s)")
    g.add_argument("--threads", type=nonnegative_int, default=None,
                   help="PyTorch CPU threads (0: PyTorch's default, one per core). Default: 1 on CPU, "
                        "where the small network gains little from more and oversubscribed cores "
                        "make every step 10-30x slower; PyTorch's default on GPU")
    g.add_argument("--amp", choices=AMP_MODES, default=DEFAULTS.amp,
                   help="mixed precision: auto = bf16 on a GPU that has it, else fp16 (with a "
                        "GradScaler); off on CPU")
    g.add_argument("--channels-last", choices=("auto", "on", "off"), default=DEFAULTS.channels_last,
                   help="channels-last memory format (auto: on GPU)")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--seed", type=nonnegative_int, default=DEFAULTS.seed, help="(default %(default)s)")
    g.add_argument("--val-every", type=positive_int, default=DEFAULTS.val_every,
                   help="validate every N epochs and after the last (default %(default)s)")
    g.add_argument("--keep-checkpoints", "--keep", dest="keep", type=nonnegative_int, default=DEFAULTS.keep,
                   metavar="K", help="checkpoints to keep, newest first (0 = all); best.pt is kept "
                                     "besides (default %(default)s)")
    g.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms (bit-exact resumption on GPU; slower)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv: Sequence[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.architecture = load_architecture_arg(parser, args.arch)
    check_device(parser, args.device)
    if args.data == "cityscapes" and not (args.data_root and os.path.isdir(args.data_root)):
        parser.error("--data cityscapes needs --data-root, an existing directory")
    if not 0 < args.ohem_thresh < 1:
        parser.error(f"--ohem-thresh must be in (0, 1), got {args.ohem_thresh}")
    if not 0 <= args.momentum < 1 or args.weight_decay < 0 or args.poly_power < 0:
        parser.error("need 0 <= --momentum < 1, --weight-decay >= 0, --poly-power >= 0")
    if args.nesterov and args.momentum == 0:
        parser.error("--nesterov needs a non-zero --momentum")
    if args.augment is None:
        args.augment = args.data == "cityscapes"
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (BatchNorm needs more than one value per channel)")

    if args.resume and args.resume != "auto":
        if not os.path.isfile(args.resume):
            parser.error(f"--resume {args.resume}: no such file")
        if args.out is None:
            args.out = os.path.dirname(os.path.abspath(args.resume))
    if args.resume == "auto" and not args.out:
        parser.error("--resume auto needs --out, the directory of the run to continue")
    if args.out is None:
        args.out = os.path.join("runs", time.strftime("train-%Y%m%d-%H%M%S"))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out}: exists and is not a directory")
    existing = checkpoint_series(args.out).list()
    if not args.resume and existing:
        parser.error(f"--out {args.out} already holds a training run ({existing[-1][1]}); "
                     f"continue it with --resume auto or choose another --out")

    config = TrainConfig(
        data=args.data, data_root=args.data_root, size=args.size, train_images=args.train_images,
        val_images=args.val_images, augment=args.augment, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, nesterov=args.nesterov, poly_power=args.poly_power,
        ohem=args.ohem, ohem_thresh=args.ohem_thresh, ohem_min_kept=args.ohem_min_kept,
        amp=args.amp, channels_last=args.channels_last, seed=args.seed, device=args.device,
        workers=args.workers, val_every=args.val_every, keep=args.keep)
    return parser, args, config


def _check_resumable(saved: dict[str, Any], config: TrainConfig, name: str) -> None:
    current = _plain(dataclasses.asdict(config))
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items()
               if k not in RESUMABLE_CHANGES and saved.get(k) != v]
    if changed:
        raise CheckpointError(f"{name} was trained with other settings; resuming would not continue "
                              f"it exactly. Changed: {'; '.join(changed)}")


def _resume_state(args, config: TrainConfig, warn: Callable[[str], None]) -> tuple[str, dict] | None:
    """Rank 0: the verified checkpoint to continue from (``--resume``), or
    None; ``CheckpointError`` with a message for the user."""
    if not args.resume:
        return None
    series = checkpoint_series(args.out)
    if args.resume == "auto":
        found = series.latest_valid(load_train_checkpoint, warn)
        if found is None:
            return None
        path, state = found
    else:
        path, state = args.resume, load_train_checkpoint(args.resume)   # must be good: no fallback
    name = f"checkpoint {path}"
    check_architecture(state, args.architecture, data.NUM_CLASSES, name, f"--arch {args.arch}")
    if "config" in state:
        _check_resumable(state["config"], config, name)
    if int(state.get("epoch", 0)) >= config.epochs:
        raise CheckpointError(f"{path} has already trained {state['epoch']} epochs; pass a larger "
                              f"--epochs to train longer")
    # (with auto, later files are damaged ones, which the resumed run rewrites)
    later = [p for n, p in series.list() if n > int(state.get("step", 0))]
    if later and args.resume != "auto":
        raise CheckpointError(f"{args.out} already holds later checkpoints ({os.path.basename(later[0])}"
                              f"{', ...' if len(later) > 1 else ''}) that continuing from step "
                              f"{state.get('step')} would overwrite; give another --out")
    return path, state


def main(argv: Sequence[str] | None = None) -> int:
    parser, args, config = parse_args(argv)
    with distributed.session(config.device) as ctx, StopSignal() as stop:
        return _main(parser, args, config, ctx, stop)


def _main(parser: argparse.ArgumentParser, args, config: TrainConfig, ctx: distributed.Context,
          stop: StopSignal) -> int:
    def fail(message: str) -> int:
        if ctx.is_main:
            parser.error(message)
        sys.exit(2)

    set_threads(args.threads, ctx.device)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if config.batch_size % ctx.world_size:
        fail(f"--batch-size {config.batch_size} is the global batch: it must be a multiple of the "
             f"{ctx.world_size} processes")
    warnings: list[str] = []
    found: Any = None
    if ctx.is_main:
        try:
            found = _resume_state(args, config, warnings.append)
        except CheckpointError as exc:
            found = f"--resume: {exc}"
    found = distributed.broadcast_object(found)   # every rank continues from what rank 0 verified
    if isinstance(found, str):
        fail(found)
    log_path = os.path.join(args.out, "train.log")
    if ctx.is_main:
        os.makedirs(args.out, exist_ok=True)

    def log(line: str) -> None:
        if not ctx.is_main:   # only rank 0 talks and writes
            return
        tqdm.write(line)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    for line in warnings:
        log(line)
    trainer = Trainer(config, args.architecture, args.out, os.path.abspath(args.arch), log,
                      progress=not args.no_progress and ctx.is_main, ctx=ctx,
                      checkpoint_every=args.checkpoint_every, stop=stop)
    if found is not None:
        resume_path, state = found
        trainer.load_state_dict(state, f"checkpoint {resume_path}")
        log(f"resumed from {resume_path}: epoch {trainer.epoch + 1}, batch {trainer.batch}/"
            f"{trainer.steps_per_epoch}, step {trainer.step}")
    elif args.resume == "auto":
        log(f"--resume auto: no checkpoint in {args.out}; starting afresh")
    params = sum(p.numel() for p in trainer.model.parameters())
    world = f", {ctx.world_size} processes ({ctx.backend})" if ctx.distributed else ""
    log(f"train: {config.data} data, {len(trainer.train_set)} train / {len(trainer.val_set)} val images "
        f"at {config.size[0]}x{config.size[1]}, {params / 1e6:.3f} M params, architecture "
        f"{architecture_fingerprint(args.architecture)}, device {ctx.device}{world}"
        f"{'' if trainer.amp_dtype is None else ', amp ' + str(trainer.amp_dtype).split('.')[-1]}, "
        f"{config.epochs} epochs x {trainer.steps_per_epoch} steps, seed {config.seed}, output {args.out}")

    files = {"metrics": os.path.join(args.out, "metrics.json"),
             "curves": os.path.join(args.out, "curves.png"),
             "best": os.path.join(args.out, "best.pt"), "log": log_path}

    def write_outputs(final: dict[str, Any] | None) -> None:
        if not ctx.is_main:
            return
        report = {"config": _plain(dataclasses.asdict(config)), "architecture": os.path.abspath(args.arch),
                  "architecture_fingerprint": architecture_fingerprint(args.architecture),
                  "params": params, "epochs_done": trainer.epoch, "steps_done": trainer.step,
                  "train_seconds": round(trainer.elapsed, 1), "best_val_miou": trainer.best_miou,
                  "best_epoch": trainer.best_epoch, "history": trainer.history, "files": files,
                  "world_size": ctx.world_size, "torch": torch.__version__}
        if final is not None:
            report["final_val"] = final
        write_json(files["metrics"], report)
        if trainer.history:
            plot_curves(trainer.history, files["curves"],
                        f"rspnet.train {config.data} {config.size[0]}x{config.size[1]} seed {config.seed}")

    try:
        trainer.run()
    except StopRequested as exc:
        log(f"stopped by {stop.name or 'request'} at {exc.where}: checkpoint written to {exc.path}; "
            f"continue with --resume auto --out {args.out}")
        write_outputs(None)
        distributed.barrier()   # every rank leaves once the checkpoint is on disk
        return 130 if stop.received == signal.SIGINT else 0
    except Diverged as exc:
        last = exc.last_checkpoint
        message = (f"error: the training diverged: {exc}. Nothing was written after the last good "
                   f"checkpoint" + (f", {last}" if last else " (there is none)") + "; try a lower --lr")
        log(message)
        if ctx.is_main:
            print(message, file=sys.stderr)
        write_outputs(None)
        return 1
    except KeyboardInterrupt:   # a second Ctrl-C: no checkpoint at this step
        log(f"interrupted: the last checkpoint is {trainer.last_checkpoint}; continue with "
            f"--resume auto --out {args.out}")
        write_outputs(None)
        return 130
    write_outputs(getattr(trainer, "last_val", None))
    best = "n/a" if trainer.best_miou is None else f"{100 * trainer.best_miou:.2f}%"
    log(f"done: {trainer.epoch} epochs, {trainer.step} steps, {trainer.elapsed:.1f} s; best val mIoU {best} "
        f"(epoch {trainer.best_epoch}); checkpoints in {args.out}, metrics {files['metrics']}, "
        f"curves {files['curves']}")
    distributed.barrier()   # every rank returns once rank 0's files are written
    return 0


if __name__ == "__main__":
    sys.exit(main())
