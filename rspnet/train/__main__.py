"""``python -m rspnet.train``: train a derived RSPNet from scratch.

The network is built from an architecture file written by ``python -m
rspnet.search`` and trained with SGD (momentum 0.9, weight decay 5e-4), a poly
learning rate (power 0.9, per step) and pixel-wise cross-entropy that ignores
label 255, optionally with online hard example mining (``--ohem``). On a GPU it
uses mixed precision (bf16, or fp16 with a GradScaler) and channels-last.

Checkpoints are written at every epoch end and every ``--checkpoint-every``
steps, the newest ``--keep-checkpoints`` kept, plus ``best.pt``; ``--resume
auto`` continues from the newest valid one exactly, mid-epoch included;
SIGTERM / Ctrl-C write a checkpoint at the next step and stop; a NaN stops the
run, leaving the last good checkpoint the newest. The defaults train the
synthetic street scenes on two CPU cores in a few minutes.

Data parallel: ``torchrun --nproc_per_node=N -m rspnet.train ...`` (one process
per GPU; ``--batch-size`` is the global batch; DDP, SyncBatchNorm on GPUs).

Example::

    python -m rspnet.search --out runs/search
    python -m rspnet.train --arch runs/search/architecture.json --out runs/train
    python -m rspnet.evaluate --arch runs/search/architecture.json --checkpoint runs/train/best.pt
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from rspnet import data
from rspnet.cli import (add_run_options, architecture_arg, checked, data_root_help, nonnegative_int, parse_size,
                        positive_float, positive_int, run_command, run_options)
from rspnet.engine.precision import AMP_MODES, CHANNELS_LAST_MODES
from rspnet.train import TrainConfig, check_config, run

DEFAULTS = TrainConfig()
SYNTHETIC = data.SYNTHETIC_TRAINING_IMAGES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rspnet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="architecture file (architecture.json of rspnet.search)")
    g = p.add_argument_group("data")
    g.add_argument("--data", choices=data.DATASETS, default=DEFAULTS.data)
    g.add_argument("--data-root", help=data_root_help())
    g.add_argument("--size", type=parse_size, default=DEFAULTS.size,
                   help=f"HxW of the training crops and validation images, multiples of 32 "
                        f"(default {DEFAULTS.size[0]}x{DEFAULTS.size[1]})")
    g.add_argument("--train-images", type=positive_int,
                   help=f"use the first N training images (default: synthetic {SYNTHETIC['train']}, "
                        f"other data sets all)")
    g.add_argument("--val-images", type=positive_int,
                   help=f"use the first N validation images (default: synthetic {SYNTHETIC['val']}, "
                        f"other data sets all)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random scale 0.5-2x, crop, flip, colour jitter (default: on for real images "
                        "(cityscapes, camvid, folder), off for the short synthetic run)")
    g.add_argument("--workers", type=nonnegative_int, default=DEFAULTS.workers,
                   help="DataLoader workers (default %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="(default %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                   help="the global batch (default %(default)s)")
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
    g.add_argument("--val-every", type=positive_int, default=DEFAULTS.val_every,
                   help="validate every N epochs and after the last (default %(default)s)")
    g = p.add_argument_group("precision")
    g.add_argument("--amp", choices=AMP_MODES, default=DEFAULTS.amp,
                   help="mixed precision: auto = bf16 on a GPU that has it, else fp16 (with a "
                        "GradScaler); off on CPU")
    g.add_argument("--channels-last", choices=CHANNELS_LAST_MODES, default=DEFAULTS.channels_last,
                   help="channels-last memory format (auto: on GPU)")
    add_run_options(p, "train", DEFAULTS.seed)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    architecture = architecture_arg(parser, args.arch)
    config = TrainConfig(
        data=args.data, data_root=args.data_root, size=args.size, train_images=args.train_images,
        val_images=args.val_images, augment=args.data != "synthetic" if args.augment is None else args.augment,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, nesterov=args.nesterov, poly_power=args.poly_power,
        ohem=args.ohem, ohem_thresh=args.ohem_thresh, ohem_min_kept=args.ohem_min_kept,
        amp=args.amp, channels_last=args.channels_last, seed=args.seed, device=args.device,
        workers=args.workers, val_every=args.val_every)
    checked(parser, check_config, config)
    options = run_options(parser, args, "train")
    return run_command(parser, lambda: run(config, architecture, options, source=os.path.abspath(args.arch)))


if __name__ == "__main__":
    sys.exit(main())
