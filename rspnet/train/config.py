"""``TrainConfig``: every setting that decides what a training run computes
(stored in its checkpoints and ``metrics.json``; a resumed run must use the
same, except the ``resumable`` ones), each declared once with its flag
(``rspnet.engine.settings``). How the run is driven is
``rspnet.engine.RunOptions``."""
from __future__ import annotations

from dataclasses import dataclass

from rspnet import data
from rspnet.data import CLASS_WEIGHTS, CLASS_WEIGHTS_HELP
from rspnet.cli import (data_root_help, nonnegative_int, parse_image_size, parse_size, positive_float, positive_int,
                        seed_int)
from rspnet.engine.precision import AMP_MODES, CHANNELS_LAST_MODES
from rspnet.engine.settings import resumable_changes, setting

__all__ = ["TrainConfig", "RESUMABLE_CHANGES", "check_config"]

_SYNTHETIC = data.SYNTHETIC_TRAINING_IMAGES


def _machine_device(values) -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the CLI's."""
    data: str = setting("synthetic", "the data set", group="data", choices=data.DATASETS)
    data_root: str | None = setting(None, data_root_help(), group="data", resumable=True)
    size: tuple[int, int] = setting((64, 128), "HxW of the validation images and the reference of the random "
                                    "scale; without --crop also of the training crops, then multiples of 32 "
                                    "(with it any size: validation pads to 32)", group="data",
                                    type=parse_image_size)
    crop: tuple[int, int] | None = setting(None, "HxW of the random training crops, cut from the image scaled "
                                           "0.5-2x of --size (none: --size; needs --augment); validation "
                                           "stays at --size", group="data", type=parse_size)
    class_crops: float = setting(0.0, "the fraction of training crops placed around a pixel of a class drawn "
                                 "uniformly from the image's classes (class-uniform sampling: small classes "
                                 "such as riders and poles in many more crops); 0: uniform crops; needs "
                                 "--augment", group="data")
    train_split: str = setting("train", "the images trained on: train, or trainval (train and val together, "
                               "as the published CamVid recipes' final runs; camvid and folder data; the val "
                               "scores are then not held out)", group="data", choices=("train", "trainval"))
    train_images: int | None = setting(None, f"use the first N training images (none: synthetic "
                                       f"{_SYNTHETIC['train']}, other data sets all)", group="data",
                                       type=positive_int)
    val_images: int | None = setting(None, f"use the first N validation images (none: synthetic "
                                     f"{_SYNTHETIC['val']}, other data sets all)", group="data",
                                     type=positive_int)
    augment: bool = setting(False, "random scale 0.5-2x, crop, flip, colour jitter (default: on for real "
                            "images (cityscapes, camvid, folder), off for the short synthetic run)", group="data",
                            cli_default=lambda values: values["data"] != "synthetic")
    epochs: int = setting(8, "epochs to train (a resumed run may train longer)", group="optimisation",
                          type=positive_int, resumable=True)
    batch_size: int = setting(4, "the global batch", group="optimisation", type=positive_int)
    optimizer: str = setting("sgd", "sgd (momentum, --nesterov) or adam (default: adam on real images, where "
                             "it won on CamVid, sgd for the short synthetic run)", group="optimisation",
                             choices=("sgd", "adam"),
                             cli_default=lambda values: "sgd" if values["data"] == "synthetic" else "adam")
    lr: float = setting(0.05, "initial learning rate (default: 0.05 for sgd, 1e-3 for adam)", group="optimisation",
                        type=positive_float, cli_default=lambda values: 1e-3 if values["optimizer"] == "adam" else 0.05)
    momentum: float = setting(0.9, "SGD momentum", group="optimisation")
    weight_decay: float = setting(5e-4, "weight decay (L2, added to the gradient)", group="optimisation")
    nesterov: bool = setting(False, "Nesterov momentum", group="optimisation")
    poly_power: float = setting(0.9, "lr = base * (1 - step/steps)^power", group="optimisation")
    class_weights: str = setting("none", "weigh the loss per class, computed once from the training masks and "
                                 f"kept with the run: {CLASS_WEIGHTS_HELP} (default: enet on real images, "
                                 "where it won on CamVid, unless --ohem; none on the synthetic scenes)",
                                 group="optimisation", choices=CLASS_WEIGHTS,
                                 cli_default=lambda values: "none" if values["data"] == "synthetic"
                                 or values["ohem"] else "enet")
    ema: float = setting(0.0, "keep an exponential moving average of the weights and BatchNorm statistics, "
                         "with this decay per step (warmed up as min(decay, (1+t)/(10+t)) after t steps); "
                         "validation, best.pt and the final weights are the average's; 0: off",
                         group="optimisation")
    ohem: bool = setting(False, "online hard example mining", group="optimisation")
    ohem_thresh: float = setting(0.7, "OHEM keeps pixels whose true-class probability is below this",
                                 group="optimisation")
    ohem_min_kept: int | None = setting(None, "OHEM keeps at least this many pixels per batch (none: 1/16 of "
                                        "the labelled)", group="optimisation", type=positive_int)
    amp: str = setting("auto", "mixed precision: auto = bf16 on a GPU that has it, else fp16 (with a "
                       "GradScaler); off on CPU", group="precision", choices=AMP_MODES, resumable=True)
    channels_last: str = setting("auto", "channels-last memory format (auto: on GPU)", group="precision",
                                 choices=CHANNELS_LAST_MODES, resumable=True)
    seed: int = setting(0, "the seed of the weights, the data order and the augmentation", group="run",
                        type=seed_int)
    device: str = setting("cpu", "cpu, cuda or cuda:N (default: cuda when there is one)", group="run",
                          resumable=True, cli_default=_machine_device)
    workers: int = setting(0, "DataLoader workers", group="data", type=nonnegative_int, resumable=True)
    val_every: int = setting(2, "validate every N epochs and after the last", group="optimisation",
                             type=positive_int, resumable=True)


# Settings that may differ between a run and its resumption without changing
# what is computed (beyond float rounding: device, precision, memory format);
# a longer --epochs stretches the poly schedule from the resumed step.
RESUMABLE_CHANGES = resumable_changes(TrainConfig)


def check_config(config: TrainConfig) -> None:
    """``ValueError`` (naming the CLI flag) for settings that cannot train."""
    from rspnet.engine.config import check_run_settings, check_workers

    data.check_source(config.data, config.data_root, ("train", "val"))
    if config.crop is None and (config.size[0] % 32 or config.size[1] % 32):
        raise ValueError(f"--size {config.size[0]}x{config.size[1]}: without --crop the training crops are "
                         f"--size, and their height and width must be multiples of 32")
    check_run_settings(config.device, config.batch_size, config.crop or config.size)
    if not 0 <= config.ema < 1:
        raise ValueError(f"--ema is a decay in [0, 1) (0: off), got {config.ema}")
    if not 0 < config.ohem_thresh < 1:
        raise ValueError(f"--ohem-thresh must be in (0, 1), got {config.ohem_thresh}")
    if not 0 <= config.momentum < 1 or config.weight_decay < 0 or config.poly_power < 0:
        raise ValueError("need 0 <= --momentum < 1, --weight-decay >= 0, --poly-power >= 0")
    check_workers(config.workers)
    if config.ohem and config.class_weights != "none":
        raise ValueError("--class-weights and --ohem do not combine: OHEM chooses the pixels by their loss")
    if config.train_split == "trainval" and config.data not in ("camvid", "folder"):
        raise ValueError(f"--train-split trainval is for --data camvid or folder, not {config.data}")
    if not 0 <= config.class_crops <= 1:
        raise ValueError(f"--class-crops is a fraction in [0, 1], got {config.class_crops}")
    if config.class_crops and not config.augment:
        raise ValueError("--class-crops needs --augment (it places the random crops)")
    if config.crop is not None and not config.augment:
        raise ValueError("--crop needs --augment (the random crops are the augmentation's)")
    if config.crop is not None and (config.crop[0] > config.size[0] or config.crop[1] > config.size[1]):
        raise ValueError(f"--crop {config.crop[0]}x{config.crop[1]} is larger than --size "
                         f"{config.size[0]}x{config.size[1]}")
    if config.optimizer == "adam" and config.nesterov:
        raise ValueError("--nesterov is for --optimizer sgd")
    if config.nesterov and config.momentum == 0:
        raise ValueError("--nesterov needs a non-zero --momentum")
    if not config.lr > 0 or config.epochs < 1 or config.val_every < 1 or config.workers < 0:
        raise ValueError("need --lr > 0, --epochs >= 1, --val-every >= 1, --workers >= 0")
