"""``python -m rspnet.search``: the two-stage RSPNet search.

Stage 1 searches the cell on the single-path network; stage 2 searches the
paths of the trellis around that cell. The defaults are sized to finish on two
CPU cores in a few minutes on the synthetic data (see docs/design.md); the
paper-scale settings are flags (e.g. ``--size 512x1024 --channels 16
--layers 8 --epochs 40 --batch-size 8 --device cuda``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from rspnet import data
from rspnet.models import RSPNet
from rspnet.nn import MEMORY_MODES, edge_list, partial_channels

from .architect import ORDERS
from .architecture import Architecture
from .checkpoint import load_checkpoint
from .derive import format_cell, format_paths
from .searcher import SearchConfig, StageSearch, cell_from_state, checkpoint_path

DEFAULTS = SearchConfig()


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 64x128), got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 64x128), got {text!r}")
    if parts[0] % 32 or parts[1] % 32:
        raise argparse.ArgumentTypeError(
            f"{text}: height and width must be multiples of 32 (the network reaches 1/32 scale)")
    return parts[0], parts[1]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rspnet.search", description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", choices=("1", "2", "both"), default="both",
                   help="1: search the cell; 2: search the paths around --cell; both: 1 then 2")
    p.add_argument("--cell", help="architecture file whose cell stage 2 uses (needed by --stage 2)")
    p.add_argument("--data", choices=data.DATASETS, default=DEFAULTS.data)
    p.add_argument("--data-root", help="Cityscapes directory (holding leftImg8bit/ and gtFine/)")
    p.add_argument("--images", type=_positive, default=DEFAULTS.images,
                   help="training images to use, split in halves A/B (default: synthetic 64, Cityscapes all)")
    p.add_argument("--size", type=_size, default=DEFAULTS.size, help="HxW, multiples of 32")
    p.add_argument("--epochs", type=_positive, default=DEFAULTS.epochs, help="epochs per stage")
    p.add_argument("--warmup", type=int, default=DEFAULTS.warmup,
                   help="epochs of weight training before architecture updates (default: epochs // 2)")
    p.add_argument("--batch-size", type=_positive, default=DEFAULTS.batch_size)
    p.add_argument("--channels", type=_positive, default=DEFAULTS.channels,
                   help="F: channels at 1/4 scale, doubling per scale")
    p.add_argument("--layers", type=_positive, default=DEFAULTS.layers, help="trellis depth of stage 2")
    p.add_argument("--steps", type=_positive, default=DEFAULTS.steps, help="intermediate nodes per cell")
    p.add_argument("--memory", choices=MEMORY_MODES, default=DEFAULTS.memory,
                   help="mixed-edge memory mode of stage 1")
    p.add_argument("--order", choices=ORDERS, default=DEFAULTS.order,
                   help="first- or second-order (unrolled) architecture gradient")
    p.add_argument("--edge-partial", type=_positive, default=DEFAULTS.edge_partial,
                   help="PC-DARTS partial channels K on the cell's edges (1 = off)")
    p.add_argument("--edge-normalization", action="store_true", help="PC-DARTS edge normalisation")
    p.add_argument("--rsp-ratio", type=float, default=DEFAULTS.rsp_ratio,
                   help="fraction of channels that go through the cell")
    p.add_argument("--rsp-depth", type=_positive, default=DEFAULTS.rsp_depth, help="RSP recursion depth")
    p.add_argument("--head-channels", type=_positive, default=DEFAULTS.head_channels,
                   help="width of the head's 3x3 conv (default: 4 F)")
    p.add_argument("--top-k", type=_positive, default=DEFAULTS.top_k, help="paths kept per node")
    p.add_argument("--param-penalty", type=float, default=DEFAULTS.param_penalty,
                   help="λ of the expected-parameter penalty on the architecture loss (0 = off)")
    p.add_argument("--param-budget", type=float, default=None,
                   help="parameter budget in millions: only the excess over it is penalised")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=_positive, default=None,
                   help="CPU threads for torch (default: 1 with --device cpu, torch's own otherwise)")
    p.add_argument("--out", help="output directory (default: runs/search-<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the search in --out from its latest checkpoint")
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
    if args.resume:
        if not args.out:
            parser.error("--resume needs --out, the directory of the search to continue")
        if not any(os.path.exists(checkpoint_path(args.out, s)) for s in (1, 2)):
            parser.error(f"--resume: no checkpoint in {args.out}")
    if args.stage == "2" and not args.cell and not (
            args.resume and os.path.exists(checkpoint_path(args.out, 2))):
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


def main(argv: Sequence[str] | None = None) -> int:
    # imported here: matplotlib is only needed once there is something to draw
    from .plots import plot_cell, plot_network, plot_weights_history

    args, config = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "search.log")

    def log(line: str) -> None:
        tqdm.write(line)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    device = torch.device(config.device)
    if args.threads is not None or device.type == "cpu":
        # the default search's tensors are too small to gain from intra-op threads, and
        # OpenMP workers that spin-wait make it several times slower on a shared CPU
        torch.set_num_threads(args.threads or 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    length = config.images if config.images is not None else (64 if config.data == "synthetic" else None)
    dataset = data.get_dataset(config.data, "train", root=config.data_root, size=config.size,
                               length=length)
    if len(dataset) // 2 < config.batch_size:
        build_parser().error(f"{len(dataset)} training images give halves A/B of {len(dataset) // 2}, "
                             f"fewer than --batch-size {config.batch_size}")
    log(f"search: {config.data} data, {len(dataset)} training images at "
        f"{config.size[0]}x{config.size[1]}, device {device}, output {args.out}")
    files = {"architecture": os.path.join(args.out, "architecture.json"),
             "summary": os.path.join(args.out, "summary.json")}
    summary: dict[str, object] = {"config": dataclasses.asdict(config), "stages": {}}
    stages = (1, 2) if args.stage == "both" else (int(args.stage),)

    def run_stage(stage: int, cell=None) -> StageSearch:
        search = StageSearch(stage, config, dataset, data.NUM_CLASSES, args.out, cell=cell, log=log,
                             progress=not args.no_progress)
        if args.resume and os.path.exists(search.path):
            try:
                search.resume()
            except ValueError as exc:  # settings that differ from the checkpoint's
                build_parser().error(str(exc))
        search.run()
        last = search.history[-1]
        summary["stages"][str(stage)] = {"epochs": search.epoch, "steps": search.step,
                                         "seconds": round(search.elapsed, 1),
                                         "val_miou": last["val_miou"], "entropy": last["entropy"],
                                         "genotype": search.describe(), "history": search.history}
        return search

    cell = getattr(args, "cell_genotype", None)
    architecture = None
    if 1 in stages:
        search = run_stage(1)
        cell = search.model.genotype()
        architecture = _architecture(config, cell)
        architecture.save(files["architecture"])
        files["cell_picture"] = os.path.join(args.out, "cell.png")
        files["alpha_plot"] = os.path.join(args.out, "alphas.png")
        plot_cell(cell, files["cell_picture"])
        plot_weights_history(search.history, "alpha", files["alpha_plot"],
                             [f"edge {s}->{t}" for s, t in edge_list(config.steps)])
        log(f"[stage 1] derived cell: {format_cell(cell)}")
    if 2 in stages:
        if cell is None:  # --stage 2 --resume without --cell: the checkpoint knows the cell
            cell = cell_from_state(load_checkpoint(checkpoint_path(args.out, 2))["cell"])
        search = run_stage(2, cell)
        nodes = search.model.genotype(config.top_k)
        architecture = _architecture(config, cell, nodes)
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

    cost = _cost(architecture, data.NUM_CLASSES, config.size)
    seconds = sum(s["seconds"] for s in summary["stages"].values())
    summary.update({"derived": {**cost, "input": [1, 3, *config.size],
                                "topology": "single_path" if architecture.nodes is None else "trellis"},
                    "search_seconds": round(seconds, 1), "peak_memory": _peak_memory(device),
                    "files": files})
    with open(files["summary"], "w") as f:
        json.dump(summary, f, indent=1)
    peak = summary["peak_memory"]
    print(f"\nderived network ({summary['derived']['topology']}): {cost['params'] / 1e6:.3f} M params, "
          f"{cost['flops'] / 1e9:.3f} GFLOPs at {config.size[0]}x{config.size[1]}")
    print(f"search time: {seconds:.1f} s; peak memory: {peak['bytes'] / 2**20:.0f} MiB ({peak['kind']})")
    print(f"architecture file: {files['architecture']}")
    print("pictures: " + ", ".join(v for k, v in files.items() if k.endswith(("picture", "plot"))))
    print(f"summary: {files['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
