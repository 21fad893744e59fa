"""``python -m rspnet.search``: the two-stage RSPNet search.

Stage 1 searches the cell on the single-path network; stage 2 searches the
paths of the trellis around that cell. The defaults are sized to finish on two
CPU cores in a few minutes on the synthetic data (see docs/design.md); the
paper-scale settings are flags (e.g. ``--size 512x1024 --channels 16
--layers 8 --epochs 40 --batch-size 8 --device cuda``).

A light-weight network (docs/design.md §6): search a proxy with
``--same-scale-paths --head light``, then train the searched cell and
trellis wider with ``python -m rspnet.rescale ... --pool-first``.

Data parallel: ``torchrun --nproc_per_node=N -m rspnet.search ...`` (one
process per GPU; ``--batch-size`` is the global batch). Checkpoints at every
epoch end and every ``--checkpoint-every`` steps; ``--resume auto`` continues
exactly where a search stopped (mid-epoch included); SIGTERM / Ctrl-C write a
checkpoint at the next step and stop.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rspnet import data
from rspnet.architecture import CANDIDATE_SETS, HEAD_KINDS
from rspnet.cli import (add_run_options, architecture_arg, channel_list, checked, data_root_help, nonnegative_int, parse_size,
                        positive_float, positive_int, run_command, run_options)
from rspnet.nn import MEMORY_MODES
from rspnet.search import ORDERS, STAGES, SearchConfig, check_config, default_memory, run

DEFAULTS = SearchConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rspnet.search", description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", choices=STAGES, default="both",
                   help="1: search the cell; 2: search the paths around --cell; both: 1 then 2")
    p.add_argument("--cell", help="architecture file whose cell stage 2 uses (needed by --stage 2)")
    p.add_argument("--data", choices=data.DATASETS, default=DEFAULTS.data)
    p.add_argument("--data-root", help=data_root_help())
    p.add_argument("--images", type=positive_int, default=DEFAULTS.images,
                   help="training images to use, split in halves A/B (default: synthetic 224, others all)")
    p.add_argument("--size", type=parse_size, default=DEFAULTS.size, help="HxW, multiples of 32")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="epochs per stage")
    p.add_argument("--warmup", type=nonnegative_int, default=DEFAULTS.warmup,
                   help="epochs of weight training before architecture updates (default: epochs // 2)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="the global batch")
    p.add_argument("--channels", type=positive_int, default=DEFAULTS.channels,
                   help="F: channels at 1/4 scale, doubling per scale")
    p.add_argument("--layers", type=positive_int, default=DEFAULTS.layers, help="trellis depth of stage 2")
    p.add_argument("--steps", type=positive_int, default=DEFAULTS.steps, help="intermediate nodes per cell")
    p.add_argument("--memory", choices=MEMORY_MODES, default=None,
                   help="supernet memory mode (both stages): recompute keeps only each edge's, "
                        "stem's, head's and node's inputs and recomputes in backward; store is plain "
                        "autograd (default: store on CPU, recompute on CUDA)")
    p.add_argument("--order", choices=ORDERS, default=DEFAULTS.order,
                   help="first- or second-order (unrolled) architecture gradient")
    p.add_argument("--edge-partial", type=positive_int, default=DEFAULTS.edge_partial,
                   help="PC-DARTS partial channels K on the cell's edges (1 = off)")
    p.add_argument("--edge-normalization", action="store_true", help="PC-DARTS edge normalisation")
    p.add_argument("--skip-bn", action=argparse.BooleanOptionalAction, default=DEFAULTS.skip_bn,
                   help="an affine-free BatchNorm after the skip_connect candidate in the search, as "
                        "after the pools: every candidate's output on the same scale, against the "
                        "collapse onto skip connections")
    p.add_argument("--path-norm", action=argparse.BooleanOptionalAction, default=DEFAULTS.path_norm,
                   help="stage 2: divide every path by its RMS after resampling before the PAM weighs it, "
                        "so that β does not compare resolutions")
    p.add_argument("--candidates", choices=tuple(CANDIDATE_SETS), default=DEFAULTS.candidates,
                   help="the cell's candidate ops: darts (DARTS's eight), light (none, skip_connect and "
                        "inverted residuals: expand 3/6, depthwise 3x3/5x5), both, or nopool (DARTS's "
                        "eight without the two poolings)")
    p.add_argument("--rsp-ratio", type=float, default=DEFAULTS.rsp_ratio,
                   help="fraction of channels that go through the cell")
    p.add_argument("--rsp-depth", type=positive_int, default=DEFAULTS.rsp_depth, help="RSP recursion depth")
    p.add_argument("--head-channels", type=positive_int, default=DEFAULTS.head_channels,
                   help="width of the head's 3x3 conv (default: 4 F)")
    p.add_argument("--scale-channels", type=channel_list, default=DEFAULTS.scale_channels, metavar="C0,C1,...",
                   help="channels of every scale, finest first, the first equal to --channels "
                        "(default: --channels doubled at each scale, e.g. 16,32,64,128)")
    p.add_argument("--pool-first", action=argparse.BooleanOptionalAction, default=DEFAULTS.pool_first,
                   help="stage 2: average-pool a path into a coarser node before its 1x1 projection "
                        "(the same in eval mode, 4^d times fewer FLOPs for a path d scales down)")
    p.add_argument("--max-skip", type=nonnegative_int, default=DEFAULTS.max_skip,
                   help="at most this many skip_connect edges in the derived cell (P-DARTS): the "
                        "weakest extra skips take their next-best op (default: no limit)")
    p.add_argument("--head", choices=HEAD_KINDS, default=DEFAULTS.head,
                   help="the head: concat (every last-layer map upsampled to 1/4, concatenated, 3x3 conv) "
                        "or light (1x1 conv per map at its own scale, averaged at 1/4, 3x3 conv at the "
                        "head's width, global-context gate: a fraction of concat's cost)")
    p.add_argument("--arch-lr", type=positive_float, default=DEFAULTS.arch_lr,
                   help="Adam learning rate of the architecture parameters (α in stage 1, β in stage 2)")
    p.add_argument("--arch-betas", type=float, nargs=2, default=DEFAULTS.arch_betas, metavar=("B1", "B2"),
                   help="Adam betas of the architecture parameters")
    p.add_argument("--arch-weight-decay", type=float, default=DEFAULTS.arch_weight_decay,
                   help="weight decay of the architecture parameters")
    p.add_argument("--top-k", type=positive_int, default=DEFAULTS.top_k, help="paths kept per node")
    p.add_argument("--same-scale-paths", action=argparse.BooleanOptionalAction, default=DEFAULTS.same_scale_paths,
                   help="every node keeps the path from its own scale in the previous layer (HRNet's "
                        "continuous streams) and --top-k minus 1 more by beta")
    p.add_argument("--param-penalty", type=float, default=DEFAULTS.param_penalty,
                   help="λ of the expected-parameter penalty on the architecture loss (0 = off)")
    p.add_argument("--param-budget", type=positive_float, default=None,
                   help="parameter budget in millions: only the excess over it is penalised "
                        "(with --random: only architectures within it are drawn)")
    p.add_argument("--flops-budget", type=positive_float, default=None, metavar="G",
                   help="GFLOPs of the derived network at --size: the architecture loss adds "
                        "--cost-weight · max(0, E[FLOPs] - budget) / budget (docs/design.md §6)")
    p.add_argument("--latency-budget", type=positive_float, default=None, metavar="MS",
                   help="latency (ms) of the derived network at --latency-size on --device (CPU: one "
                        "thread), from a per-piece table measured once and cached in --latency-table; "
                        "penalised like --flops-budget")
    p.add_argument("--cost-weight", type=float, default=DEFAULTS.cost_weight, metavar="λ",
                   help="λ of the FLOPs / latency penalties")
    p.add_argument("--latency-size", type=parse_size, default=DEFAULTS.latency_size,
                   help="HxW at which the latency table is measured")
    p.add_argument("--latency-table", default=None, metavar="PATH",
                   help="JSON file caching measured latencies, keyed by device, torch version and shapes "
                        "(default: $RSPNET_LATENCY_TABLE or ~/.cache/rspnet/latency.json)")
    p.add_argument("--random", type=positive_int, metavar="N",
                   help="no search: draw N architectures uniformly from the same space (the random "
                        "baseline, seeded by --seed) and write them to --out as random-NNN.json")
    add_run_options(p, "search", DEFAULTS.seed)
    return p


def _random(parser: argparse.ArgumentParser, args, config: SearchConfig) -> int:
    import os
    import time

    from rspnet.search.baseline import write_random_architectures

    out = args.out or os.path.join("runs", time.strftime("random-%Y%m%d-%H%M%S"))
    budget = None if args.param_budget is None else args.param_budget * 1e6
    try:
        written = write_random_architectures(config, args.random, out, args.seed, budget,
                                            data.class_table(config.data, config.data_root).num_classes,
                                            progress=not args.no_progress)
    except ValueError as exc:
        parser.error(str(exc))
    for path, params in written:
        print(f"{path}  {params / 1e6:.3f} M params")
    print(f"{len(written)} random architectures (seed {args.seed}) in {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = SearchConfig(
        data=args.data, data_root=args.data_root, images=args.images, size=args.size,
        epochs=args.epochs, warmup=args.warmup, batch_size=args.batch_size, channels=args.channels,
        layers=args.layers, steps=args.steps, memory=args.memory or default_memory(args.device),
        order=args.order, seed=args.seed, arch_lr=args.arch_lr, arch_betas=tuple(args.arch_betas),
        arch_weight_decay=args.arch_weight_decay,
        device=args.device, edge_partial=args.edge_partial,
        edge_normalization=args.edge_normalization, skip_bn=args.skip_bn, path_norm=args.path_norm,
        rsp_ratio=args.rsp_ratio, candidates=args.candidates,
        rsp_depth=args.rsp_depth, head_channels=args.head_channels, head=args.head, max_skip=args.max_skip,
        scale_channels=args.scale_channels, pool_first=args.pool_first, top_k=args.top_k,
        same_scale_paths=args.same_scale_paths,
        param_penalty=args.param_penalty,
        flops_budget=None if args.flops_budget is None else args.flops_budget * 1e9,
        latency_budget=args.latency_budget, cost_weight=args.cost_weight,
        latency_size=args.latency_size, latency_table=args.latency_table,
        param_budget=None if args.param_budget is None or args.random else args.param_budget * 1e6)
    checked(parser, check_config, config)
    if args.random:
        return _random(parser, args, config)
    options = run_options(parser, args, "search")
    if args.stage == "2" and not args.cell and not options.resume:
        parser.error("--stage 2 needs --cell ARCHITECTURE_JSON (the result of stage 1)")
    cell = architecture_arg(parser, args.cell, "--cell").cell if args.cell else None
    return run_command(parser, lambda: run(config, options, args.stage, cell))


if __name__ == "__main__":
    sys.exit(main())
