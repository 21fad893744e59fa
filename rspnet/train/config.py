"""``TrainConfig``: every setting that decides what a training run computes
(stored in its checkpoints; a resumed run must use the same, except
``RESUMABLE_CHANGES``). How the run is driven is ``rspnet.engine.RunOptions``."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainConfig", "RESUMABLE_CHANGES", "check_config"]


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the CLI's."""
    data: str = "synthetic"
    data_root: str | None = None
    size: tuple[int, int] = (64, 128)
    train_images: int | None = None   # None: synthetic SYNTHETIC_IMAGES["train"], other data sets all
    val_images: int | None = None     # None: synthetic SYNTHETIC_IMAGES["val"], other data sets all
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


# Settings that may differ between a run and its resumption without changing
# what is computed (beyond float rounding: device, precision, memory format);
# a longer --epochs stretches the poly schedule from the resumed step.
RESUMABLE_CHANGES = ("device", "amp", "channels_last", "workers", "val_every", "epochs", "data_root")


def check_config(config: TrainConfig) -> None:
    """``ValueError`` (naming the CLI flag) for settings that cannot train."""
    from rspnet.data import check_source
    from rspnet.engine.config import check_run_settings

    check_source(config.data, config.data_root, ("train", "val"))
    check_run_settings(config.device, config.batch_size, config.size)
    if not 0 < config.ohem_thresh < 1:
        raise ValueError(f"--ohem-thresh must be in (0, 1), got {config.ohem_thresh}")
    if not 0 <= config.momentum < 1 or config.weight_decay < 0 or config.poly_power < 0:
        raise ValueError("need 0 <= --momentum < 1, --weight-decay >= 0, --poly-power >= 0")
    if config.nesterov and config.momentum == 0:
        raise ValueError("--nesterov needs a non-zero --momentum")
    if not config.lr > 0 or config.epochs < 1 or config.val_every < 1 or config.workers < 0:
        raise ValueError("need --lr > 0, --epochs >= 1, --val-every >= 1, --workers >= 0")
