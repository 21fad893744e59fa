"""``StageSearch``: one stage of the bi-level search — what a search step is
and what a search checkpoint holds besides the run's position; the resumable
loop itself is ``rspnet.engine.ResumableLoop``.

The training images are split in two halves: A trains the weights, B the
architecture parameters and gives the logged mIoU. Each step makes an
architecture update on a B batch (after the warm-up) and then a weight update
on an A batch, as DARTS does.

Data parallel (under ``torchrun``): ``batch_size`` is the global batch; every
rank takes ``batch_size / world`` samples of each global batch of A and of B
(``ShardSampler``); the weights are trained through
``DistributedDataParallel`` (the architecture parameters are excluded from
it), the architecture gradient is averaged over the ranks by the ``Architect``
before its optimiser step, and BatchNorm is ``SyncBatchNorm`` on CUDA.

The data order of an epoch depends only on (seed, stage, split, epoch), so a
resumed stage skips the batches already done and sees the same ones next.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from rspnet.architecture import Genotype, cell_from_dict, cell_to_dict, format_cell, format_paths
from rspnet.engine import distributed
from rspnet.engine.scoring import class_scores
from rspnet.engine.checkpoint import CheckpointSeries, load_checkpoint
from rspnet.engine.config import changed_settings, local_batch, plain
from rspnet.engine.faults import NonFiniteError, first_nonfinite
from rspnet.engine.loop import ResumableLoop
from rspnet.engine.sampler import ShardSampler
from rspnet.engine.seeding import rank_seed, seed_everything
from rspnet.metrics import ConfusionMatrix, mean_iou

from .architect import Architect, CostPenalty, ParamPenalty
from .cost import CostGeometry, flops_table, latency_table
from .config import RESUMABLE_CHANGES, SearchConfig
from .supernet import build_supernet

__all__ = ["StageSearch", "FORMAT", "checkpoint_series", "load_search_checkpoint"]

FORMAT = "rspnet-search-checkpoint/3"


EVAL_PIXELS = 16 * 64 * 128


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


def cost_geometry(config: SearchConfig, num_classes: int, size: tuple[int, int]) -> CostGeometry:
    """The geometry of the networks a search with ``config`` derives, measured at ``size``."""
    return CostGeometry.of(config.space, num_classes, size)


def cost_penalties(config: SearchConfig, num_classes: int, device) -> dict[str, CostPenalty]:
    """The cost penalties a config asks for, by metric (``flops``: FLOPs at
    ``size``; ``latency``: ms at ``latency_size`` on ``device``, the table
    read from / written to ``latency_table``)."""
    c, found = config, {}
    if c.flops_budget is not None:
        table = flops_table(cost_geometry(c, num_classes, c.size))
        found["flops"] = CostPenalty(table, c.cost_weight, c.flops_budget)
    if c.latency_budget is not None:
        from .cost import default_latency_table_path
        table = latency_table(cost_geometry(c, num_classes, c.latency_size), device,
                              c.latency_table or default_latency_table_path())
        found["latency"] = CostPenalty(table, c.cost_weight, c.latency_budget)
    return found


class StageSearch(ResumableLoop):
    """Stage 1 (the cell, ``cell=None``) or stage 2 (the paths around ``cell``).

    ``ctx``: the process's place in a data-parallel run
    (``rspnet.engine.distributed.init``); ``None``: one process on
    ``config.device``. ``checkpoint_every``: also checkpoint every N weight
    steps (0: at epoch ends only); ``keep``: checkpoints of this stage kept
    (0: all); ``stop``: polled at every step, True asks for a checkpoint and a
    stop; ``ignore_index``: the label no loss or score counts;
    ``class_weights``: per class, the weights of the supernet's loss (None:
    unweighted; ``--class-weights``).
    """

    format = FORMAT

    def __init__(self, stage: int, config: SearchConfig, dataset: torch.utils.data.Dataset,
                 num_classes: int, out_dir: str | os.PathLike, cell: Genotype | None = None,
                 log: Callable[[str], None] = print, progress: bool = True,
                 ctx: distributed.Context | None = None, checkpoint_every: int = 0, keep: int = 3,
                 stop: Callable[[], bool] | None = None, ignore_index: int = 255,
                 class_weights: Sequence[float] | None = None):
        if stage not in (1, 2) or (stage == 2) != (cell is not None):
            raise ValueError("StageSearch: stage 1 takes no cell, stage 2 needs one")
        self.stage, self.config, self.cell, self.num_classes = stage, config, cell, num_classes
        self.out_dir, self.ignore_index = out_dir, ignore_index
        self.label = f"stage {stage} "
        ctx = ctx if ctx is not None else distributed.Context(device=torch.device(config.device))
        self.device = ctx.device
        c = config
        self.local_batch = local_batch(c.batch_size, ctx.world_size)
        # evaluation (no graph, eval-mode BN: per-image results) in batches of
        # at least EVAL_PIXELS pixels, so the per-operator overhead of the
        # supernet's many small ops does not dominate (docs/design.md §9);
        # --path-norm keeps the training batch: its path RMS is taken over
        # the batch even in eval mode
        self.eval_batch = (self.local_batch if c.path_norm
                           else max(self.local_batch, EVAL_PIXELS // (c.size[0] * c.size[1])))
        half = len(dataset) // 2
        if half < c.batch_size:
            raise ValueError(f"{len(dataset)} training images give halves of {half}, fewer than "
                             f"one batch of {c.batch_size}")
        self.split_a = Subset(dataset, range(half))
        self.split_b = Subset(dataset, range(half, 2 * half))
        self.epochs = c.epochs
        self.steps_per_epoch = half // c.batch_size

        seed = c.seed * 10 + stage   # each stage starts from its own known state
        seed_everything(seed)
        model = build_supernet(c.space, num_classes, cell if stage == 2 else None, c.memory, ignore_index)
        model.set_class_weights(class_weights)
        self.model = distributed.convert_sync_batchnorm(model, self.device).to(self.device)
        # identical initialisation everywhere (DDP also broadcasts the weights, not α / β)
        distributed.broadcast_tensors_(list(self.model.parameters()) + list(self.model.buffers()))
        # the weight step goes through DDP's forward, which must return the
        # supernet's own loss (its fused, memory-saving head + loss)
        self.net = distributed.wrap_ddp(_LossOf(self.model), self.device,
                                        ignore=self.model.arch_parameters())
        # from here on every rank draws its own random stream
        seed_everything(rank_seed(seed, ctx.rank))
        self.w_optimizer = torch.optim.SGD(self.model.weight_parameters(), lr=c.w_lr,
                                           momentum=c.w_momentum, weight_decay=c.w_weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_optimizer, T_max=c.epochs, eta_min=c.w_lr_min)
        self.a_optimizer = torch.optim.Adam(self.model.arch_parameters(), lr=c.arch_lr,
                                            betas=tuple(c.arch_betas), weight_decay=c.arch_weight_decay)
        penalties = [ParamPenalty(c.param_penalty, c.param_budget)] if c.param_penalty else []
        self.cost_penalties = cost_penalties(c, num_classes, self.device)
        penalties += self.cost_penalties.values()
        self.architect = Architect(self.model, self.a_optimizer, c.order, penalties,
                                   reduce=distributed.all_reduce_mean_)
        self._arch_losses: list[float] = []   # this epoch's architecture losses so far
        self._b_iter = None
        self._search_arch, self._lr = False, c.w_lr
        self.start_loop(ctx, checkpoint_series(out_dir, stage, keep), log, progress, checkpoint_every, stop)

    # ----------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "config": plain(self.config),
            "cell": None if self.cell is None else cell_to_dict(self.cell),
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch_arch_losses": list(self._arch_losses),
        }

    def check_resumable(self, state: dict[str, Any], name: str) -> None:
        """``ValueError`` naming the first setting that differs from the checkpoint's."""
        changed = changed_settings(state["config"], self.config, RESUMABLE_CHANGES)
        if changed:
            key, saved, value = changed[0]
            raise ValueError(f"--resume: {key} is {value!r} but {name} was made with "
                             f"{saved!r}; resume with the original settings")
        if state["stage"] != self.stage:
            raise ValueError(f"--resume: {name} is a stage-{state['stage']} checkpoint, not stage {self.stage}")
        if state["cell"] != (None if self.cell is None else cell_to_dict(self.cell)):
            raise ValueError(f"--resume: the checkpoint's stage-2 search ran around another cell "
                             f"({format_cell(cell_from_dict(state['cell']))}); resume without --cell "
                             f"or with the same one")

    def load_extra_state(self, state: dict[str, Any], name: str) -> None:
        self.check_resumable(state, name)
        self.model.load_state_dict(state["model"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.a_optimizer.load_state_dict(state["a_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._arch_losses = list(state["epoch_arch_losses"])

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

    def current_lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def epoch_batches(self):
        """Split A from batch ``self.batch`` on; the B batches of the
        architecture steps follow in step (``self._b_iter``)."""
        if self.batch == 0:
            self._arch_losses = []
        self._search_arch = self.epoch >= self.config.warmup_epochs
        self._lr = self.scheduler.get_last_lr()[0]
        self._b_iter = iter(self._loader(self.split_b, 1, self.batch % self.steps_per_epoch))
        return self._loader(self.split_a, 0, self.batch)

    def train_step(self, a_batch) -> tuple[float, bool]:
        """An architecture step on a B batch (after the warm-up), then a weight
        step on ``a_batch``: (the weight loss, stop requested by any rank)."""
        c = self.config
        images, labels = self._to(a_batch)
        if self._search_arch:
            try:
                b = next(self._b_iter)
            except StopIteration:  # B has fewer batches than A (never with equal halves)
                self._b_iter = iter(self._loader(self.split_b, 1))
                b = next(self._b_iter)
            self._arch_losses.append(self.architect.step((images, labels), self._to(b), self._lr,
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
            value, stop = distributed.mean_and_any(loss, self.stop())
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
        return value, stop

    def progress_postfix(self, loss: float) -> dict[str, str]:
        return {"loss": f"{loss:.3f}"}

    def after_epoch_steps(self) -> None:
        self.scheduler.step()

    @torch.no_grad()
    def evaluate(self) -> float:
        """mIoU of the supernet on split B (each rank evaluates a shard; the
        confusion matrices are summed)."""
        self.model.eval()
        confusion = ConfusionMatrix(self.num_classes, self.ignore_index)
        shard = Subset(self.split_b, range(self.ctx.rank, len(self.split_b), self.ctx.world_size))
        for images, labels in DataLoader(shard, batch_size=self.eval_batch):
            confusion.update(class_scores(self.model, images.to(self.device)).argmax(1), labels.to(self.device))
        matrix = distributed.all_reduce_sum(confusion.matrix.to(self.device))
        return mean_iou(matrix.cpu())

    def describe(self) -> str:
        """The architecture derived now, in one line."""
        if self.stage == 1:
            return format_cell(self.model.genotype())
        return format_paths(self.model.paths(self.config.top_k, self.config.same_scale_paths))

    def end_epoch(self, train_loss: float) -> list[str]:
        miou = self.evaluate()
        arch_loss = sum(self._arch_losses) / len(self._arch_losses) if self._arch_losses else None
        self._arch_losses = []
        entropy = self.model.entropy()
        with torch.no_grad():
            expected = {k: p.expected(self.model).item() for k, p in self.cost_penalties.items()}
        self.history.append({"epoch": self.epoch, "train_loss": train_loss, "arch_loss": arch_loss,
                             "val_miou": miou, "entropy": entropy,
                             "probabilities": self.model.arch_probabilities(),
                             **({"expected_cost": expected} if expected else {})})
        arch = "warm-up" if arch_loss is None else f"{arch_loss:.4f}"
        ent = "  ".join(f"H({k}) {v:.4f}" for k, v in entropy.items())
        if "flops" in expected:
            ent += f"  E[GFLOPs] {expected['flops'] / 1e9:.4f}"
        if "latency" in expected:
            ent += f"  E[latency] {expected['latency']:.1f} ms"
        self.log(f"[stage {self.stage}] epoch {self.epoch}/{self.config.epochs}  "
                 f"train loss {train_loss:.4f}  arch loss {arch}  supernet mIoU on arch split B {100 * miou:.2f}%  "
                 f"{ent}  genotype {self.describe()}")
        return []
