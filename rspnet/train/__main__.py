"""``python -m rspnet.train``: train a derived RSPNet from scratch.

The network is built from an architecture file written by ``python -m
rspnet.search`` and trained with SGD (momentum 0.9, weight decay 5e-4) or
``--optimizer adam``, a poly learning rate (power 0.9, per step) and pixel-wise
cross-entropy that ignores label 255, optionally weighted per class
(``--class-weights``) or with online hard example mining (``--ohem``). Presets:
``--config camvid-cpu`` (CamVid on a 2-core CPU, each run <= 10 minutes) and
``--config camvid-gpu`` (352x480, train+val, 300 epochs). On a GPU it
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

from rspnet.cli import add_config_option, add_run_options, architecture_arg, checked, config_of, run_command, \
    run_options
from rspnet.train import TrainConfig, check_config, run
from rspnet import cli


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m rspnet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="architecture file (architecture.json of rspnet.search)")
    add_config_option(p, "train")
    add_run_options(p, "train", TrainConfig)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    architecture = architecture_arg(parser, args.arch)
    config = config_of(parser, args, TrainConfig, "train")
    checked(parser, check_config, config)
    options = run_options(parser, args, "train")
    return run_command(parser, lambda: run(config, architecture, options, source=os.path.abspath(args.arch)))


if __name__ == "__main__":
    sys.exit(cli.guarded(main, "python -m rspnet.train")())
