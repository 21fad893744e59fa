"""One stage of the bi-level search (SPEC §6): data split, optimisers,
epochs, logging, checkpoints, data parallelism and faults.

The training images are split in two halves: A trains the weights, B the
architecture parameters and gives the logged mIoU. Each step makes an
architecture update on a B batch (after the warm-up) and then a weight update
on an A batch, as DARTS does.

Data parallel (under ``torchrun``, ``rspnet.distributed``): ``batch_size`` is
the global batch; every rank takes ``batch_size / world`` samples of each
global batch of A and of B (``ShardSampler``); the weights are trained through
``DistributedDataParallel`` (the architecture parameters are excluded from it),
the architecture gradient is averaged over the ranks by the ``Architect``
before its optimiser step, BatchNorm is ``SyncBatchNorm`` on CUDA and the
running statistics are averaged before every evaluation and checkpoint.

Checkpoints (``rspnet.checkpoint``) are written at every epoch end and
every ``checkpoint_every`` steps, and hold everything needed to continue
exactly, mid-epoch included: weights and architecture parameters, both
optimisers, the scheduler, epoch, batch within the epoch, step, the epoch's
losses so far and every rank's random generator states. The data order of an
epoch depends only on (seed, stage, split, epoch), so a resumed run skips the
batches already done and sees the same ones next.

Faults: a stop request (``stop()``, set by SIGTERM/SIGINT) is honoured at the
next step boundary with a checkpoint (``StopRequested``); a loss, gradient norm
or architecture parameter that is not finite stops the stage
(``Diverged``) before anything is written, so the last good checkpoint
stays the newest one.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from rspnet import distributed
from rspnet.data.labels import IGNORE_INDEX
from rspnet.distributed import (Diverged, NonFiniteError, ShardSampler, StopRequested, first_nonfinite,
                                mean_and_any)
from rspnet.metrics import ConfusionMatrix, mean_iou
from rspnet.nn import Genotype

from .architect import Architect, ParamPenalty
from rspnet.checkpoint import CheckpointSeries, load_checkpoint, rng_state, seed_everything, set_rng_state
from .derive import format_cell, format_paths
from .supernet import MacroSupernet, SinglePathSupernet

FORMAT = "rspnet-search-checkpoint/2"


@dataclass
class SearchConfig:
    """Every setting of a search; the defaults are the CLI's (see docs/design.md)."""
    data: str = "synthetic"
    data_root: str | None = None
    images: int | None = None          # training images used; None: all (synthetic: 64)
    size: tuple[int, int] = (64, 128)
    epochs: int = 10                   # per stage
    warmup: int | None = None          # epochs before architecture updates; None: epochs // 2
    batch_size: int = 4
    channels: int = 16                 # F
    scales: int = 4
    layers: int = 8                    # trellis depth L of stage 2
    steps: int = 4                     # intermediate nodes of a cell
    memory: str = "recompute"
    order: str = "first"
    seed: int = 0
    device: str = "cpu"
    edge_partial: int = 1
    edge_normalization: bool = False
    rsp_ratio: float = 0.5
    rsp_depth: int = 1
    head_channels: int | None = None   # None: 4 F
    top_k: int = 2
    param_penalty: float = 0.0
    param_budget: float | None = None  # parameters
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    alpha_lr: float = 3e-4
    alpha_betas: tuple[float, float] = (0.5, 0.999)
    alpha_weight_decay: float = 1e-3
    beta_lr: float = 3e-3
    beta_betas: tuple[float, float] = (0.9, 0.999)
    beta_weight_decay: float = 1e-3

    @property
    def warmup_epochs(self) -> int:
        return self.epochs // 2 if self.warmup is None else self.warmup

    @property
    def head_width(self) -> int:
        return 4 * self.channels if self.head_channels is None else self.head_channels


# Settings that may change between a run and its resumption without changing
# what is computed (beyond floating-point rounding).
RESUMABLE_CHANGES = ("device", "memory")


def checkpoint_series(out_dir: str | os.PathLike, stage: int, keep: int = 3) -> CheckpointSeries:
    """``checkpoint-stage{stage}-step{NNNNNNNN}.pt`` in ``out_dir``; the number
    is the stage's weight-step count."""
    return CheckpointSeries(out_dir, f"checkpoint-stage{stage}-step", keep)


def load_search_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A verified search checkpoint (``CheckpointError`` otherwise)."""
    return load_checkpoint(path, format=FORMAT)


class _LossOf(torch.nn.Module):
    """``forward(images, labels) = model.loss(images, labels)``: what DDP wraps."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model.loss(images, labels)


class StageSearch:
    """Stage 1 (the cell, ``cell=None``) or stage 2 (the paths around ``cell``).

    ``ctx``: the process's place in a data-parallel run
    (``rspnet.distributed.init``); ``None``: one process on ``config.device``.
    ``checkpoint_every``: also checkpoint every N weight steps (0: at epoch
    ends only); ``keep``: checkpoints of this stage kept (0: all);
    ``stop``: polled at every step, True asks for a checkpoint and a stop.
    """

    def __init__(self, stage: int, config: SearchConfig, dataset: torch.utils.data.Dataset,
                 num_classes: int, out_dir: str | os.PathLike, cell: Genotype | None = None,
                 log: Callable[[str], None] = print, progress: bool = True,
                 ctx: distributed.Context | None = None, checkpoint_every: int = 0, keep: int = 3,
                 stop: Callable[[], bool] | None = None):
        if stage not in (1, 2) or (stage == 2) != (cell is not None):
            raise ValueError("StageSearch: stage 1 takes no cell, stage 2 needs one")
        self.stage, self.config, self.cell, self.num_classes = stage, config, cell, num_classes
        self.out_dir, self.log, self.progress = out_dir, log, progress
        self.ctx = ctx if ctx is not None else distributed.Context(device=torch.device(config.device))
        self.device = self.ctx.device
        self.checkpoint_every, self.stop = checkpoint_every, stop or (lambda: False)
        c, world = config, self.ctx.world_size
        if c.batch_size % world:
            raise ValueError(f"the global batch {c.batch_size} does not divide over {world} processes")
        self.local_batch = c.batch_size // world
        half = len(dataset) // 2
        if half < c.batch_size:
            raise ValueError(f"{len(dataset)} training images give halves of {half}, fewer than "
                             f"one batch of {c.batch_size}")
        self.split_a = Subset(dataset, range(half))
        self.split_b = Subset(dataset, range(half, 2 * half))
        self.batches_per_epoch = half // c.batch_size

        seed_everything(c.seed * 10 + stage)  # each stage starts from its own known state
        if stage == 1:
            model = SinglePathSupernet(num_classes, c.channels, c.scales, c.steps, c.memory,
                                       c.edge_partial, c.edge_normalization, c.rsp_ratio,
                                       c.rsp_depth, c.head_width)
        else:
            model = MacroSupernet(num_classes, cell, c.channels, c.scales, c.layers, c.rsp_ratio,
                                  c.rsp_depth, c.head_width, memory=c.memory)
        self.model = distributed.convert_sync_batchnorm(model, self.device).to(self.device)
        # identical initialisation everywhere (DDP also broadcasts the weights, not α / β)
        distributed.broadcast_tensors_(list(self.model.parameters()) + list(self.model.buffers()))
        # the weight step goes through DDP's forward, which must return the
        # supernet's own loss (its fused, memory-saving head + loss)
        self.net = distributed.wrap_ddp(_LossOf(self.model), self.device,
                                        ignore=self.model.arch_parameters())
        # from here on every rank draws its own random stream
        seed_everything((c.seed * 10 + stage) * 1000 + self.ctx.rank)
        self.w_optimizer = torch.optim.SGD(self.model.weight_parameters(), lr=c.w_lr,
                                           momentum=c.w_momentum, weight_decay=c.w_weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_optimizer, T_max=c.epochs, eta_min=c.w_lr_min)
        settings = {"alpha": (c.alpha_lr, c.alpha_betas, c.alpha_weight_decay),
                    "beta": (c.beta_lr, c.beta_betas, c.beta_weight_decay)}
        groups = [{"params": params, "lr": settings[kind][0], "betas": settings[kind][1],
                   "weight_decay": settings[kind][2]}
                  for kind, params in self.model.arch_param_groups().items()]
        self.a_optimizer = torch.optim.Adam(groups)
        penalty = ParamPenalty(c.param_penalty, c.param_budget) if c.param_penalty else None
        self.architect = Architect(self.model, self.a_optimizer, c.order, penalty,
                                   reduce=distributed.all_reduce_mean_)
        self.series = checkpoint_series(out_dir, stage, keep)
        self.epoch = 0        # epochs completed
        self.batch = 0        # batches done in the current epoch
        self.step = 0         # weight steps taken
        self.elapsed = 0.0    # seconds spent in this stage, over every resumption
        self.history: list[dict[str, Any]] = []
        self.last_checkpoint: str | None = None
        self._losses: list[float] = []        # this epoch's weight losses so far (global means)
        self._arch_losses: list[float] = []   # and architecture losses
        self._clock: float | None = None
        self._stop_at: str | None = None   # a stop requested at an epoch's last step

    # ----------------------------------------------------------------- state
    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    def where(self) -> str:
        return (f"stage {self.stage} step {self.step + 1} (epoch {self.epoch + 1}, batch "
                f"{self.batch + 1}/{self.batches_per_epoch})")

    def state_dict(self, rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "stage": self.stage,
            "config": dataclasses.asdict(self.config),
            "cell": None if self.cell is None else cell_to_state(self.cell),
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "epoch_losses": list(self._losses), "epoch_arch_losses": list(self._arch_losses),
            "world_size": self.ctx.world_size,
            "rng": rng if rng is not None else [rng_state()],   # one state per rank
        }

    def check_resumable(self, state: dict[str, Any], name: str) -> None:
        """``ValueError`` naming the first setting that differs from the checkpoint's."""
        saved = state["config"]
        for key, value in dataclasses.asdict(self.config).items():
            if key not in RESUMABLE_CHANGES and _plain(saved.get(key)) != _plain(value):
                raise ValueError(f"--resume: {key} is {value!r} but {name} was made with "
                                 f"{saved.get(key)!r}; resume with the original settings")
        if state["stage"] != self.stage:
            raise ValueError(f"--resume: {name} is a stage-{state['stage']} checkpoint, not stage {self.stage}")
        if state["cell"] != (None if self.cell is None else cell_to_state(self.cell)):
            raise ValueError(f"--resume: the checkpoint's stage-2 search ran around another cell "
                             f"({state['cell']}); resume without --cell or with the same one")

    def load_state_dict(self, state: dict[str, Any], name: str = "the checkpoint") -> None:
        """Continue from ``state`` (a verified checkpoint of this stage)."""
        self.check_resumable(state, name)
        self.model.load_state_dict(state["model"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.a_optimizer.load_state_dict(state["a_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.elapsed = state["elapsed"]
        self.history = state["history"]
        self._losses, self._arch_losses = list(state["epoch_losses"]), list(state["epoch_arch_losses"])
        rngs, world = state["rng"], self.ctx.world_size
        set_rng_state(rngs[self.ctx.rank] if len(rngs) == world else rngs[0])
        self.last_checkpoint = name
        note = ""
        if state["world_size"] != world:
            note = (f"; it ran on {state['world_size']} process(es), this run on {world}: the same "
                    f"global batches, results differ by rounding and BatchNorm statistics")
        self.log(f"[stage {self.stage}] resumed from {name} at epoch {self.epoch + 1}, batch "
                 f"{self.batch}/{self.batches_per_epoch}, step {self.step}{note}")

    def resume(self, path: str | None = None) -> None:
        """Continue from ``path`` or from this stage's newest valid checkpoint."""
        if path is None:
            found = self.series.latest_valid(load_search_checkpoint, self.log)
            if found is None:
                raise ValueError(f"--resume: no stage-{self.stage} checkpoint in {self.out_dir}")
            path, state = found
        else:
            state = load_search_checkpoint(path)
        self.load_state_dict(state, path)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._clock is not None:
            self.elapsed += now - self._clock
        self._clock = now

    def save(self) -> str:
        """Checkpoint now (every rank calls it; rank 0 writes). Refuses to write
        non-finite parameters, so that a good checkpoint is never followed by a
        bad one.

        BatchNorm statistics: at an epoch's end (``run``) they are the ranks'
        average, the same everywhere. Mid-epoch (always before the epoch's last
        step) the file holds rank 0's, which is exact too: in training mode the
        statistics do not enter the computation, and DDP hands rank 0's to every
        rank at the start of each weight forward, so the other ranks' own
        statistics matter only after the epoch's last step, which is never
        checkpointed mid-epoch (a stop requested there waits for the epoch's
        end)."""
        self._tick()
        bad = first_nonfinite(list(self.model.named_parameters()))
        if bad is not None:
            raise Diverged(NonFiniteError(f"parameter {bad[0]!r}", bad[1]),
                                 f"stage {self.stage} step {self.step}", self.last_checkpoint)
        rngs = distributed.gather_object(rng_state())
        path = self.series.path(self.step)
        if self.ctx.is_main:
            self.series.save(self.state_dict(rngs), self.step)
        self.last_checkpoint = path
        return path

    # --------------------------------------------------------------- search
    def _loader(self, split: Subset, which: int, start_batch: int = 0) -> DataLoader:
        """This rank's shard of split A (``which`` 0) or B (1) for the current
        epoch, from batch ``start_batch`` on; the order depends only on
        (seed, stage, split, epoch)."""
        c = self.config
        sampler = ShardSampler(split, self.ctx.world_size, self.ctx.rank, shuffle=True,
                               seed=((c.seed * 10 + self.stage) * 2 + which) * 100_000, drop_last=True)
        sampler.set_epoch(self.epoch)
        sampler.set_start(start_batch * self.local_batch)
        return DataLoader(split, batch_size=self.local_batch, sampler=sampler, drop_last=True,
                          pin_memory=self.device.type == "cuda")

    def _to(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return (batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True))

    def _check_arch(self) -> None:
        groups = self.model.arch_param_groups()
        named = [(f"{kind}[{i}]" if len(params) > 1 else kind, p)
                 for kind, params in groups.items() for i, p in enumerate(params)]
        bad = first_nonfinite(named)
        if bad is not None:
            raise NonFiniteError(f"the architecture parameter {bad[0]}", bad[1])

    def _train_step(self, a_batch, b_iter, search_arch: bool, lr: float) -> tuple[bool, Any]:
        """One step; returns (stop requested by any rank, the B iterator)."""
        c = self.config
        images, labels = self._to(a_batch)
        if search_arch:
            try:
                b = next(b_iter)
            except StopIteration:  # B has fewer batches than A (never with equal halves)
                b_iter = iter(self._loader(self.split_b, 1))
                b = next(b_iter)
            self._arch_losses.append(self.architect.step((images, labels), self._to(b), lr,
                                                         self.w_optimizer))
            self._check_arch()
        # the weight step: α / β are constants here (no gradient is computed for
        # them, and DDP sees a graph in which every parameter it syncs is used)
        arch = [p for p in self.model.arch_parameters() if p.requires_grad]
        for p in arch:
            p.requires_grad_(False)
        try:
            loss = self.net(images, labels)
            # the global mean loss, checked before anything is updated, and
            # whether any rank was asked to stop: one small collective
            value, stop = mean_and_any(loss, self.stop())
            if not math.isfinite(value):
                raise NonFiniteError("the weight loss (split A)", value)
            weights = self.model.weight_parameters()
            self.w_optimizer.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            for p in arch:
                p.requires_grad_(True)
        norm = torch.nn.utils.clip_grad_norm_(weights, c.grad_clip)
        if not torch.isfinite(norm):
            raise NonFiniteError("the weight gradient norm (split A)", norm.item())
        self.w_optimizer.step()
        self._losses.append(value)
        return stop, b_iter

    def _train_epoch(self) -> None:
        """The rest of the current epoch, from batch ``self.batch`` on."""
        c, model = self.config, self.model
        model.train()
        search_arch = self.epoch >= c.warmup_epochs
        lr = self.scheduler.get_last_lr()[0]
        n = self.batches_per_epoch
        b_iter = iter(self._loader(self.split_b, 1, self.batch % n))
        bar = tqdm(total=n, initial=self.batch, leave=False, disable=not self.progress,
                   desc=f"stage {self.stage} epoch {self.epoch + 1}/{c.epochs}")
        for a_batch in self._loader(self.split_a, 0, self.batch):
            where = self.where()
            try:
                stop, b_iter = self._train_step(a_batch, b_iter, search_arch, lr)
            except NonFiniteError as exc:
                raise Diverged(exc, where, self.last_checkpoint) from None
            self.step += 1
            self.batch += 1
            bar.update()
            bar.set_postfix(loss=f"{self._losses[-1]:.3f}")
            if stop:
                where = f"stage {self.stage} step {self.step} (epoch {self.epoch + 1}, batch {self.batch}/{n})"
                if self.batch == n:   # the epoch's end is the next boundary: stop after its checkpoint
                    self._stop_at = where
                    break
                bar.close()
                raise StopRequested(self.save(), where)
            if self.checkpoint_every and self.step % self.checkpoint_every == 0 and self.batch < n:
                self.save()
        bar.close()
        self.scheduler.step()

    @torch.no_grad()
    def evaluate(self) -> float:
        """mIoU of the supernet on split B (each rank evaluates a shard; the
        confusion matrices are summed)."""
        self.model.eval()
        confusion = ConfusionMatrix(self.num_classes, IGNORE_INDEX)
        shard = Subset(self.split_b, range(self.ctx.rank, len(self.split_b), self.ctx.world_size))
        for images, labels in DataLoader(shard, batch_size=self.local_batch):
            confusion.update(self.model(images.to(self.device)).argmax(1), labels.to(self.device))
        matrix = distributed.all_reduce_sum(confusion.matrix.to(self.device))
        return mean_iou(matrix.cpu())

    def describe(self) -> str:
        if self.stage == 1:
            return format_cell(self.model.genotype())
        return format_paths(self.model.genotype(self.config.top_k))

    def run(self) -> None:
        self._clock = time.perf_counter()
        while not self.done:
            self._train_epoch()
            distributed.average_buffers_(self.model)
            miou = self.evaluate()
            self.epoch += 1
            self.batch = 0
            train_loss = sum(self._losses) / len(self._losses)
            arch_loss = sum(self._arch_losses) / len(self._arch_losses) if self._arch_losses else None
            self._losses, self._arch_losses = [], []
            entropy = self.model.entropy()
            self.history.append({"epoch": self.epoch, "train_loss": train_loss, "arch_loss": arch_loss,
                                 "val_miou": miou, "entropy": entropy,
                                 "weights": self.model.arch_weights()})
            arch = "warm-up" if arch_loss is None else f"{arch_loss:.4f}"
            ent = "  ".join(f"H({k}) {v:.4f}" for k, v in entropy.items())
            line = (f"[stage {self.stage}] epoch {self.epoch}/{self.config.epochs}  "
                    f"train loss {train_loss:.4f}  arch loss {arch}  val mIoU(B) {100 * miou:.2f}%  "
                    f"{ent}  genotype {self.describe()}")
            self.log(line)
            path = self.save()
            if self._stop_at is not None:
                raise StopRequested(path, self._stop_at)
        self._tick()
        self._clock = None


def cell_to_state(cell: Genotype) -> dict[str, list]:
    return {"normal": [list(edge) for edge in cell.normal], "normal_concat": list(cell.normal_concat)}


def cell_from_state(state: dict[str, list]) -> Genotype:
    return Genotype(normal=tuple(tuple(edge) for edge in state["normal"]),
                    normal_concat=tuple(state["normal_concat"]))


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint keeps what asdict made)."""
    return list(value) if isinstance(value, (tuple, list)) else value
