"""One stage of the bi-level search (SPEC §6): data split, optimisers,
epochs, logging, checkpoints.

The training images are split in two halves: A trains the weights, B the
architecture parameters and gives the logged mIoU. Each step makes an
architecture update on a B batch (after the warm-up) and then a weight update
on an A batch, as DARTS does. A checkpoint is written after every epoch and
holds everything needed to continue bit for bit: weights and architecture
parameters, both optimisers, the scheduler, epoch, step and every random
generator's state; the data order of an epoch depends only on (seed, stage,
epoch).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from rspnet.data.labels import IGNORE_INDEX
from rspnet.metrics import ConfusionMatrix, mean_iou
from rspnet.nn import Genotype

from .architect import Architect, ParamPenalty
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from .derive import format_cell, format_paths
from .supernet import MacroSupernet, SinglePathSupernet


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


def checkpoint_path(out_dir: str | os.PathLike, stage: int) -> str:
    return os.path.join(out_dir, f"checkpoint-stage{stage}.pt")


class StageSearch:
    """Stage 1 (the cell, ``cell=None``) or stage 2 (the paths around ``cell``)."""

    def __init__(self, stage: int, config: SearchConfig, dataset: torch.utils.data.Dataset,
                 num_classes: int, out_dir: str | os.PathLike, cell: Genotype | None = None,
                 log: Callable[[str], None] = print, progress: bool = True):
        if stage not in (1, 2) or (stage == 2) != (cell is not None):
            raise ValueError("StageSearch: stage 1 takes no cell, stage 2 needs one")
        self.stage, self.config, self.cell, self.num_classes = stage, config, cell, num_classes
        self.out_dir, self.log, self.progress = out_dir, log, progress
        self.device = torch.device(config.device)
        c = config
        half = len(dataset) // 2
        if half < c.batch_size:
            raise ValueError(f"{len(dataset)} training images give halves of {half}, fewer than "
                             f"one batch of {c.batch_size}")
        self.split_a = Subset(dataset, range(half))
        self.split_b = Subset(dataset, range(half, 2 * half))

        seed_everything(c.seed * 10 + stage)  # each stage starts from its own known state
        if stage == 1:
            model = SinglePathSupernet(num_classes, c.channels, c.scales, c.steps, c.memory,
                                       c.edge_partial, c.edge_normalization, c.rsp_ratio,
                                       c.rsp_depth, c.head_width)
        else:
            model = MacroSupernet(num_classes, cell, c.channels, c.scales, c.layers, c.rsp_ratio,
                                  c.rsp_depth, c.head_width)
        self.model = model.to(self.device)
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
        self.architect = Architect(self.model, self.a_optimizer, c.order, penalty)
        self.epoch = 0        # epochs completed
        self.step = 0         # weight steps taken
        self.elapsed = 0.0    # seconds spent in this stage, over every resumption
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- state
    @property
    def path(self) -> str:
        return checkpoint_path(self.out_dir, self.stage)

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "config": dataclasses.asdict(self.config),
            "cell": None if self.cell is None else cell_to_state(self.cell),
            "epoch": self.epoch, "step": self.step, "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "rng": rng_state(),
        }

    def resume(self) -> None:
        """Continue from this stage's checkpoint in ``out_dir``."""
        state = load_checkpoint(self.path, map_location=self.device)
        saved = state["config"]
        for key, value in dataclasses.asdict(self.config).items():
            if key not in RESUMABLE_CHANGES and _plain(saved.get(key)) != _plain(value):
                raise ValueError(f"--resume: {key} is {value!r} but the checkpoint was made with "
                                 f"{saved.get(key)!r}; resume with the original settings")
        if state["cell"] != (None if self.cell is None else cell_to_state(self.cell)):
            raise ValueError(f"--resume: the checkpoint's stage-2 search ran around another cell "
                             f"({state['cell']}); resume without --cell or with the same one")
        self.model.load_state_dict(state["model"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.a_optimizer.load_state_dict(state["a_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.history = state["history"]
        set_rng_state(state["rng"])
        self.log(f"[stage {self.stage}] resumed from {self.path} after epoch {self.epoch}")

    # --------------------------------------------------------------- search
    def _loader(self, split: Subset, shuffle: bool, epoch: int = 0) -> DataLoader:
        generator = None
        if shuffle:
            # the order depends on (seed, stage, epoch) only, so a resumed run sees the same batches
            generator = torch.Generator().manual_seed((self.config.seed * 1000 + epoch) * 10 + self.stage)
        return DataLoader(split, batch_size=self.config.batch_size, shuffle=shuffle,
                          drop_last=shuffle, generator=generator)

    def _train_epoch(self) -> tuple[float, float | None]:
        c, model = self.config, self.model
        model.train()
        weights = model.weight_parameters()
        search_arch = self.epoch >= c.warmup_epochs
        lr = self.scheduler.get_last_lr()[0]
        b_batches = iter(self._loader(self.split_b, shuffle=True, epoch=self.epoch))
        losses, arch_losses = [], []
        bar = tqdm(self._loader(self.split_a, shuffle=True, epoch=self.epoch), leave=False,
                   desc=f"stage {self.stage} epoch {self.epoch + 1}/{c.epochs}",
                   disable=not self.progress)
        for images, labels in bar:
            images, labels = images.to(self.device), labels.to(self.device)
            if search_arch:
                try:
                    b = next(b_batches)
                except StopIteration:
                    b_batches = iter(self._loader(self.split_b, shuffle=True, epoch=self.epoch))
                    b = next(b_batches)
                b = (b[0].to(self.device), b[1].to(self.device))
                arch_losses.append(self.architect.step((images, labels), b, lr, self.w_optimizer))
            self.w_optimizer.zero_grad(set_to_none=True)
            loss = model.loss(images, labels)
            loss.backward(inputs=weights)
            torch.nn.utils.clip_grad_norm_(weights, c.grad_clip)
            self.w_optimizer.step()
            self.step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        self.scheduler.step()
        mean = sum(losses) / len(losses)
        return mean, (sum(arch_losses) / len(arch_losses) if arch_losses else None)

    @torch.no_grad()
    def evaluate(self) -> float:
        """mIoU of the supernet on split B."""
        self.model.eval()
        confusion = ConfusionMatrix(self.num_classes, IGNORE_INDEX)
        for images, labels in self._loader(self.split_b, shuffle=False):
            confusion.update(self.model(images.to(self.device)).argmax(1), labels.to(self.device))
        return mean_iou(confusion.matrix)

    def describe(self) -> str:
        if self.stage == 1:
            return format_cell(self.model.genotype())
        return format_paths(self.model.genotype(self.config.top_k))

    def run(self) -> None:
        while not self.done:
            start = time.perf_counter()
            train_loss, arch_loss = self._train_epoch()
            miou = self.evaluate()
            self.epoch += 1
            self.elapsed += time.perf_counter() - start
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
            save_checkpoint(self.state_dict(), self.path)


def cell_to_state(cell: Genotype) -> dict[str, list]:
    return {"normal": [list(edge) for edge in cell.normal], "normal_concat": list(cell.normal_concat)}


def cell_from_state(state: dict[str, list]) -> Genotype:
    return Genotype(normal=tuple(tuple(edge) for edge in state["normal"]),
                    normal_concat=tuple(state["normal_concat"]))


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint keeps what asdict made)."""
    return list(value) if isinstance(value, (tuple, list)) else value
