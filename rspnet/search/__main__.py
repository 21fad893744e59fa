"""``python -m rspnet.search``: the two-stage RSPNet search.

Stage 1 searches the cell on the single-path network; stage 2 searches the
paths of the trellis around that cell. The defaults are sized to finish on two
CPU cores in a few minutes on the synthetic data (see docs/design.md); the
paper-scale settings are flags (e.g. ``--size 512x1024 --channels 16
--layers 8 --epochs 40 --batch-size 8 --device cuda``).

Data parallel: ``torchrun --nproc_per_node=N -m rspnet.search ...`` (one
process per GPU; ``--batch-size`` is the global batch). Checkpoints at every
epoch end and every ``--checkpoint-every`` steps; ``--resume auto`` continues
exactly where a search stopped (mid-epoch included); SIGTERM / Ctrl-C write a
checkpoint at the next step and stop.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import signal
import sys
import time
from typing import Any, NoReturn, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from rspnet import data, distributed
from rspnet.distributed import Diverged, StopRequested, StopSignal
from rspnet.models import RSPNet
from rspnet.nn import MEMORY_MODES, edge_list, partial_channels

from .architect import ORDERS
from .architecture import Architecture
from rspnet.checkpoint import CheckpointError
from rspnet.cli import parse_size, positive_int
from .derive import format_cell, format_paths
from .searcher import (SearchConfig, StageSearch, cell_from_state, checkpoint_series,
                       load_search_checkpoint)

DEFAULTS = SearchConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rspnet.search", description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", choices=("1", "2", "both"), default="both",
                   help="1: search the cell; 2: search the paths around --cell; both: 1 then 2")
    p.add_argument("--cell", help="architecture file whose cell stage 2 uses (needed by --stage 2)")
    p.add_argument("--data", choices=data.DATASETS, default=DEFAULTS.data)
    p.add_argument("--data-root", help="Cityscapes directory (holding leftImg8bit/ and gtFine/)")
    p.add_argument("--images", type=positive_int, default=DEFAULTS.images,
                   help="training images to use, split in halves A/B (default: synthetic 64, Cityscapes all)")
    p.add_argument("--size", type=parse_size, default=DEFAULTS.size, help="HxW, multiples of 32")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="epochs per stage")
    p.add_argument("--warmup", type=int, default=DEFAULTS.warmup,
                   help="epochs of weight training before architecture updates (default: epochs // 2)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--channels", type=positive_int, default=DEFAULTS.channels,
                   help="F: channels at 1/4 scale, doubling per scale")
    p.add_argument("--layers", type=positive_int, default=DEFAULTS.layers, help="trellis depth of stage 2")
    p.add_argument("--steps", type=positive_int, default=DEFAULTS.steps, help="intermediate nodes per cell")
    p.add_argument("--memory", choices=MEMORY_MODES, default=DEFAULTS.memory,
                   help="supernet memory mode (both stages): recompute keeps only each edge's, "
                        "stem's, head's and node's inputs and recomputes in backward; store is plain autograd")
    p.add_argument("--order", choices=ORDERS, default=DEFAULTS.order,
                   help="first- or second-order (unrolled) architecture gradient")
    p.add_argument("--edge-partial", type=positive_int, default=DEFAULTS.edge_partial,
                   help="PC-DARTS partial channels K on the cell's edges (1 = off)")
    p.add_argument("--edge-normalization", action="store_true", help="PC-DARTS edge normalisation")
    p.add_argument("--rsp-ratio", type=float, default=DEFAULTS.rsp_ratio,
                   help="fraction of channels that go through the cell")
    p.add_argument("--rsp-depth", type=positive_int, default=DEFAULTS.rsp_depth, help="RSP recursion depth")
    p.add_argument("--head-channels", type=positive_int, default=DEFAULTS.head_channels,
                   help="width of the head's 3x3 conv (default: 4 F)")
    p.add_argument("--top-k", type=positive_int, default=DEFAULTS.top_k, help="paths kept per node")
    p.add_argument("--param-penalty", type=float, default=DEFAULTS.param_penalty,
                   help="λ of the expected-parameter penalty on the architecture loss (0 = off)")
    p.add_argument("--param-budget", type=float, default=None,
                   help="parameter budget in millions: only the excess over it is penalised")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: 1 with --device cpu, torch's own otherwise)")
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms (bit-exact resumption on GPU; slower)")
    p.add_argument("--out", help="output directory (default: runs/search-<timestamp>; with "
                                 "--resume PATH the checkpoint's directory)")
    p.add_argument("--resume", nargs="?", const="auto", metavar="auto|PATH",
                   help="continue a search: 'auto' (also plain --resume) from the newest valid "
                        "checkpoint in --out, falling back past damaged ones and starting afresh "
                        "when there is none; or PATH, one checkpoint file")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="also write a checkpoint every N steps within an epoch (0: at epoch ends only)")
    p.add_argument("--keep-checkpoints", type=int, default=3, metavar="K",
                   help="checkpoints kept per stage, newest first (0: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, SearchConfig]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data == "cityscapes" and not (args.data_root and os.path.isdir(args.data_root)):
        parser.error("--data cityscapes needs --data-root, an existing directory")
    if args.warmup is not None and not 0 <= args.warmup <= args.epochs:
        parser.error(f"--warmup must be in [0, --epochs={args.epochs}], got {args.warmup}")
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (BatchNorm needs more than one value at 1/32)")
    if not 0 < args.rsp_ratio < 1:
        parser.error(f"--rsp-ratio must be in (0, 1), got {args.rsp_ratio}")
    c = args.channels
    try:
        for _ in range(args.rsp_depth):
            c = partial_channels(c, args.rsp_ratio)
    except ValueError as exc:
        parser.error(f"--channels {args.channels} with --rsp-ratio/--rsp-depth: {exc}")
    if c % args.edge_partial:
        parser.error(f"--edge-partial {args.edge_partial} must divide the cell's {c} channels at 1/4")
    if args.param_penalty < 0 or (args.param_budget is not None and args.param_budget <= 0):
        parser.error("--param-penalty must be >= 0 and --param-budget > 0")
    if args.param_budget is not None and not args.param_penalty:
        parser.error("--param-budget needs --param-penalty > 0 (the budget only shapes the penalty)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    if args.checkpoint_every < 0 or args.keep_checkpoints < 0:
        parser.error("--checkpoint-every and --keep-checkpoints must be >= 0")
    if args.resume == "auto" and not args.out:
        parser.error("--resume needs --out, the directory of the search to continue")
    if args.resume and args.resume != "auto":
        if not os.path.isfile(args.resume):
            parser.error(f"--resume {args.resume}: no such file")
        if args.out is None:
            args.out = os.path.dirname(os.path.abspath(args.resume))
    if args.stage == "2" and not args.cell and not args.resume:
        parser.error("--stage 2 needs --cell ARCHITECTURE_JSON (the result of stage 1)")
    if args.cell:
        try:
            args.cell_genotype = Architecture.load(args.cell).cell
        except (OSError, ValueError) as exc:
            parser.error(f"--cell: {exc}")
    if args.out is None:
        args.out = os.path.join("runs", time.strftime("search-%Y%m%d-%H%M%S"))
    config = SearchConfig(
        data=args.data, data_root=args.data_root, images=args.images, size=args.size,
        epochs=args.epochs, warmup=args.warmup, batch_size=args.batch_size, channels=args.channels,
        layers=args.layers, steps=args.steps, memory=args.memory, order=args.order, seed=args.seed,
        device=args.device, edge_partial=args.edge_partial,
        edge_normalization=args.edge_normalization, rsp_ratio=args.rsp_ratio,
        rsp_depth=args.rsp_depth, head_channels=args.head_channels, top_k=args.top_k,
        param_penalty=args.param_penalty,
        param_budget=None if args.param_budget is None else args.param_budget * 1e6)
    return args, config


def _architecture(config: SearchConfig, cell, nodes=None) -> Architecture:
    provenance = {k: v for k, v in dataclasses.asdict(config).items()
                  if k in ("data", "images", "size", "epochs", "warmup", "batch_size", "layers",
                           "memory", "order", "seed", "edge_partial", "edge_normalization",
                           "top_k", "param_penalty", "param_budget")}
    return Architecture(cell=cell, channels=config.channels, scales=config.scales,
                        head_channels=config.head_width, rsp_ratio=config.rsp_ratio,
                        rsp_depth=config.rsp_depth, layers=config.layers if nodes else None,
                        nodes=nodes, search=provenance)


def _cost(architecture: Architecture, num_classes: int, size: tuple[int, int]) -> dict[str, int]:
    """Parameters and forward FLOPs (FlopCounterMode: a multiply-add is 2) of
    the derived network on one image."""
    model = RSPNet(architecture, num_classes).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *size))
    return {"params": sum(p.numel() for p in model.parameters()), "flops": counter.get_total_flops()}


def _peak_memory(device: torch.device) -> dict[str, object]:
    if device.type == "cuda":
        return {"kind": "torch.cuda.max_memory_allocated", "bytes": torch.cuda.max_memory_allocated(device)}
    return {"kind": "peak RSS of the process (ru_maxrss)",
            "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _fail(ctx: distributed.Context, message: str) -> NoReturn:
    """An argparse-style error: rank 0 prints it, every rank exits with 2."""
    if ctx.is_main:
        build_parser().error(message)
    sys.exit(2)


def _resume_plan(args: argparse.Namespace, stages: tuple[int, ...],
                 log) -> dict[int, tuple[str, dict[str, Any]]]:
    """Rank 0: the verified checkpoint each stage continues from, {stage: (path, state)}.
    Raises ``CheckpointError`` / ``ValueError`` with a message for the user."""
    plan: dict[int, tuple[str, dict[str, Any]]] = {}
    if not args.resume:
        return plan
    if args.resume != "auto":
        state = load_search_checkpoint(args.resume)   # a given file must be good: no fallback
        stage = state["stage"]
        if stage not in stages:
            raise ValueError(f"{args.resume} is a stage-{stage} checkpoint, but --stage "
                             f"{args.stage} runs stage(s) {', '.join(map(str, stages))}")
        later = [p for s in (1, 2) for n, p in checkpoint_series(args.out, s).list()
                 if s > stage or (s == stage and n > state["step"])]
        if later:
            raise ValueError(f"{args.out} already holds later checkpoints ({os.path.basename(later[-1])}"
                             f"{', ...' if len(later) > 1 else ''}) that continuing from "
                             f"{os.path.basename(args.resume)} would mix with; give another --out")
        return {stage: (args.resume, state)}   # earlier stages are over, later ones start afresh
    for stage in stages:
        found = checkpoint_series(args.out, stage).latest_valid(load_search_checkpoint, log)
        if found is not None:
            plan[stage] = found
    if 2 in plan and 1 in plan and plan[1][1]["epoch"] < plan[1][1]["config"]["epochs"]:
        del plan[1]   # stage 2 has begun: stage 1 is over, whatever its newest good file is
    if not plan:
        log(f"--resume auto: no checkpoint in {args.out}; starting afresh")
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    args, config = parse_args(argv)
    with distributed.session(config.device) as ctx, StopSignal() as stop:
        return _main(args, config, ctx, stop)


def _main(args: argparse.Namespace, config: SearchConfig, ctx: distributed.Context,
          stop: StopSignal) -> int:
    # imported here: matplotlib is only needed once there is something to draw
    from .plots import plot_cell, plot_network, plot_weights_history

    log_path = os.path.join(args.out, "search.log")
    if ctx.is_main:
        os.makedirs(args.out, exist_ok=True)

    def log(line: str) -> None:
        if not ctx.is_main:   # only rank 0 talks and writes
            return
        tqdm.write(line)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    device = ctx.device
    if args.threads is not None or device.type == "cpu":
        # the default search's tensors are too small to gain from intra-op threads, and
        # OpenMP workers that spin-wait make it several times slower on a shared CPU
        torch.set_num_threads(args.threads or 1)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if config.batch_size % ctx.world_size:
        _fail(ctx, f"--batch-size {config.batch_size} is the global batch: it must be a multiple of "
                   f"the {ctx.world_size} processes")
    length = config.images if config.images is not None else (64 if config.data == "synthetic" else None)
    dataset = data.get_dataset(config.data, "train", root=config.data_root, size=config.size,
                               length=length)
    if len(dataset) // 2 < config.batch_size:
        _fail(ctx, f"{len(dataset)} training images give halves A/B of {len(dataset) // 2}, "
                   f"fewer than --batch-size {config.batch_size}")
    stages = (1, 2) if args.stage == "both" else (int(args.stage),)

    plan: Any = None
    if ctx.is_main:
        try:
            plan = _resume_plan(args, stages, log)
        except (CheckpointError, ValueError) as exc:
            plan = f"--resume: {exc}"
    plan = distributed.broadcast_object(plan)   # every rank resumes from what rank 0 verified
    if isinstance(plan, str):
        _fail(ctx, plan)

    world = f", {ctx.world_size} processes ({ctx.backend})" if ctx.distributed else ""
    log(f"search: {config.data} data, {len(dataset)} training images at "
        f"{config.size[0]}x{config.size[1]}, device {device}{world}, output {args.out}")
    files = {"architecture": os.path.join(args.out, "architecture.json"),
             "summary": os.path.join(args.out, "summary.json")}
    summary: dict[str, object] = {"config": dataclasses.asdict(config), "stages": {}}

    def run_stage(stage: int, cell=None) -> StageSearch:
        search = StageSearch(stage, config, dataset, data.NUM_CLASSES, args.out, cell=cell, log=log,
                             progress=not args.no_progress and ctx.is_main, ctx=ctx,
                             checkpoint_every=args.checkpoint_every, keep=args.keep_checkpoints,
                             stop=stop)
        if stage in plan:
            try:
                search.load_state_dict(plan[stage][1], plan[stage][0])
            except ValueError as exc:  # settings that differ from the checkpoint's
                _fail(ctx, str(exc))
        search.run()
        last = search.history[-1]
        summary["stages"][str(stage)] = {"epochs": search.epoch, "steps": search.step,
                                         "seconds": round(search.elapsed, 1),
                                         "val_miou": last["val_miou"], "entropy": last["entropy"],
                                         "genotype": search.describe(), "history": search.history}
        return search

    cell = getattr(args, "cell_genotype", None)
    if 2 in stages and 2 in plan:   # the stage-2 checkpoint knows its cell
        cell = cell_from_state(plan[2][1]["cell"])
    elif 2 in stages and cell is None and 1 not in stages:
        _fail(ctx, "--stage 2 needs --cell ARCHITECTURE_JSON (the result of stage 1)")
    architecture = None
    try:
        if 1 in stages and not (2 in plan and 1 not in plan):
            search = run_stage(1)
            cell = search.model.genotype()
            architecture = _architecture(config, cell)
            if ctx.is_main:
                architecture.save(files["architecture"])
                files["cell_picture"] = os.path.join(args.out, "cell.png")
                files["alpha_plot"] = os.path.join(args.out, "alphas.png")
                plot_cell(cell, files["cell_picture"])
                plot_weights_history(search.history, "alpha", files["alpha_plot"],
                                     [f"edge {s}->{t}" for s, t in edge_list(config.steps)])
            log(f"[stage 1] derived cell: {format_cell(cell)}")
        if 2 in stages:
            search = run_stage(2, cell)
            nodes = search.model.genotype(config.top_k)
            architecture = _architecture(config, cell, nodes)
            if ctx.is_main:
                architecture.save(files["architecture"])
                files["network_picture"] = os.path.join(args.out, "network.png")
                files["beta_plot"] = os.path.join(args.out, "betas.png")
                plot_network(architecture, files["network_picture"])
                if "cell_picture" not in files:
                    files["cell_picture"] = os.path.join(args.out, "cell.png")
                    plot_cell(cell, files["cell_picture"])
                plot_weights_history(search.history, "beta", files["beta_plot"],
                                     [f"node {l}.{s}" for l, s in search.model.nodes],
                                     [[f"{l}.{s}" for l, s in src] for src in search.model.sources])
            log(f"[stage 2] derived paths: {format_paths(nodes)}")
    except StopRequested as exc:
        log(f"stopped by {stop.name or 'request'} at {exc.where}: checkpoint written to {exc.path}; continue "
            f"with --resume auto --out {args.out}")
        distributed.barrier()   # every rank leaves once the checkpoint is on disk
        return 130 if stop.received == signal.SIGINT else 0
    except Diverged as exc:
        last = exc.last_checkpoint
        message = (f"error: the search diverged: {exc}. Nothing was written after the last good "
                   f"checkpoint" + (f", {last}" if last else " (there is none)") +
                   "; try a lower learning rate (SearchConfig.w_lr / alpha_lr / beta_lr) or "
                   "--param-penalty 0")
        log(message)
        if ctx.is_main:
            print(message, file=sys.stderr)
        return 1

    if ctx.is_main:
        cost = _cost(architecture, data.NUM_CLASSES, config.size)
        seconds = sum(s["seconds"] for s in summary["stages"].values())
        summary.update({"derived": {**cost, "input": [1, 3, *config.size],
                                    "topology": "single_path" if architecture.nodes is None else "trellis"},
                        "search_seconds": round(seconds, 1), "peak_memory": _peak_memory(device),
                        "world_size": ctx.world_size, "files": files})
        with open(files["summary"], "w") as f:
            json.dump(summary, f, indent=1)
        peak = summary["peak_memory"]
        print(f"\nderived network ({summary['derived']['topology']}): {cost['params'] / 1e6:.3f} M params, "
              f"{cost['flops'] / 1e9:.3f} GFLOPs at {config.size[0]}x{config.size[1]}")
        print(f"search time: {seconds:.1f} s; peak memory: {peak['bytes'] / 2**20:.0f} MiB ({peak['kind']})")
        print(f"architecture file: {files['architecture']}")
        print("pictures: " + ", ".join(v for k, v in files.items() if k.endswith(("picture", "plot"))))
        print(f"summary: {files['summary']}")
    distributed.barrier()   # every rank returns once rank 0's files are written
    return 0


if __name__ == "__main__":
    sys.exit(main())
