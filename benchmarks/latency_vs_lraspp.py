"""RSPNet architecture files against torchvision's LRASPP-MobileNetV3-Large, in one process.

Each network (random weights: the costs do not depend on them; ``--classes``
19) as built and in its inference form (``rspnet.models.inference_form``, what
evaluate, predict and ``python -m rspnet.export --report`` run), with the rows
of the export report (``rspnet.export.network_costs``): parameters, forward
FLOPs at ``--size`` (a multiply-add = 2), batch-1 latency (median, p20-p80 of
``--iters`` runs after ``--warmup``) and FPS, each in the memory layout its
warm-up found faster; then each RSPNet's ratios to LRASPP, as built and both
folded. Then the folded networks once more, *interleaved*: every round times
each network once, in a rotating order, so that the load of a shared machine
(which drifts by tens of percent over a minute) falls on all of them alike;
for each RSPNet the median over rounds of its time divided by LRASPP's in the
same round (the ratio a drifting load biases least) and in how many rounds it
was faster. Usage::

    python benchmarks/latency_vs_lraspp.py [--size 512x1024] [--rounds 25] [--device cpu] [--threads 1] \\
        [--json OUT.json] ARCH.json [ARCH.json ...]

``--quick`` (a smoke run): 64x128, 1 warm-up, 2 timed runs and 2 rounds, unless
given. Needs torchvision (``pip install -e .[bench]``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any, Callable

import torch

from rspnet.cli import parse_size
from rspnet.export import DTYPES, network_costs
from rspnet.models.reference import REFERENCE_NAME, lraspp_mobilenet_v3, reference_unavailable
from rspnet.models.rspnet import RSPNet
from rspnet.ops.timing import FORMATS, MEMORY_FORMATS, call_times, device_name

QUICK = {"size": (64, 128), "warmup": 1, "iters": 2, "rounds": 2}
DEFAULTS = {"size": (512, 1024), "warmup": 5, "iters": 20, "rounds": 25}


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int, cuda: bool = False) -> dict[str, list[float]]:
    """ms of each of ``runs`` per round: every round calls each once, the
    order rotated by one every round (two runs: swapped)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name] += call_times(runs[name], 1, cuda)
    return times


def versus(times: list[float], reference: list[float]) -> dict[str, float]:
    """The per-round ratios ``times / reference``: their median, and the
    rounds where ``times`` was the faster."""
    ratios = [a / b for a, b in zip(times, reference)]
    return {"median_ratio": statistics.median(ratios), "faster_rounds": sum(q < 1 for q in ratios)}


def ratios(ours: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    return {"params": ours["params"] / reference["params"], "flops": ours["flops"] / reference["flops"],
            "latency": ours["latency"]["median_ms"] / reference["latency"]["median_ms"]}


def compare(archs: list[str], args) -> dict[str, Any]:
    """Every network's rows, its ratios to LRASPP and the interleaved rounds
    of the folded networks (``args``: size, classes, device, dtype, warmup,
    iters, rounds, memory_format)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    builders = {REFERENCE_NAME: lambda: lraspp_mobilenet_v3(args.classes),
                **{arch: (lambda arch=arch: RSPNet(arch, args.classes)) for arch in archs}}
    networks, runs = {}, {}
    for name, build in builders.items():
        torch.manual_seed(0)
        kept: dict[str, torch.nn.Module] = {}
        rows = network_costs(build(), args.size, device, dtype, False, args.warmup, args.iters,
                             args.memory_format, keep=kept)
        layout = rows["folded"]["latency"]["memory_format"]
        x = torch.zeros(1, 3, *args.size, device=device, dtype=dtype).contiguous(memory_format=FORMATS[layout])
        runs[name] = lambda net=kept["folded"], x=x: net(x)
        networks[name] = {**rows, "interleaved": {"layout": layout}}
    with torch.inference_mode():
        times = interleaved(runs, args.rounds, device.type == "cuda")
    reference = networks[REFERENCE_NAME]
    for name, row in networks.items():
        row["interleaved"].update(ms=times[name], median_ms=statistics.median(times[name]))
        if name != REFERENCE_NAME:
            row["ratios"] = {key: ratios(row[key], reference[key]) for key in ("unfolded", "folded")}
            row["interleaved"].update(versus(times[name], times[REFERENCE_NAME]))
    return networks


def _aligned(table: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    return ["  ".join(f"{c:<{wd}}" if i in (0, 5) else f"{c:>{wd}}" for i, (c, wd) in enumerate(zip(t, widths)))
            .rstrip() for t in table]


def report_lines(networks: dict[str, Any], rounds: int) -> list[str]:
    """The cost table (every network as built and folded, the ratios to
    LRASPP) and one line per network of the interleaved rounds."""
    table = [("network", "parameters", "GFLOPs", "latency ms (p20-p80)", "FPS", "layout")]
    for name, row in networks.items():
        bn = row["folded"]
        for key, label in (("unfolded", name),
                           ("folded", f"{name}, BN folded ({bn['bn_folded']} of {bn['bn_folded'] + bn['bn_left']})")):
            r, la = row[key], row[key]["latency"]
            table.append((label, f"{r['params']:,}", f"{r['flops'] / 1e9:.3f}",
                          f"{la['median_ms']:.2f} ({la['p20_ms']:.2f}-{la['p80_ms']:.2f})", f"{la['fps']:.2f}",
                          la["memory_format"]))
        for key, label in (("unfolded", f"{name} / LRASPP"), ("folded", f"{name} / LRASPP, both folded")):
            if "ratios" in row:
                q = row["ratios"][key]
                table.append((label, f"{q['params']:.3f}x", f"{q['flops']:.3f}x", f"{q['latency']:.3f}x",
                              f"{1 / q['latency']:.3f}x", ""))
    lines = _aligned(table) + ["", f"folded, {rounds} interleaved rounds:"]
    for name, row in networks.items():
        inter = row["interleaved"]
        line = f"{name}: median {inter['median_ms']:.1f} ms ({inter['layout']})"
        if "median_ratio" in inter:
            line += (f"; / LRASPP in the same round: median {inter['median_ratio']:.3f}x, "
                     f"faster in {inter['faster_rounds']}/{rounds} rounds")
        lines.append(line)
    return lines


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("archs", nargs="+", help="RSPNet architecture files")
    p.add_argument("--size", type=parse_size, metavar="HxW", help="default 512x1024 (--quick: 64x128)")
    p.add_argument("--rounds", type=int, help="interleaved rounds, default 25 (--quick: 2)")
    p.add_argument("--warmup", type=int, help="default 5 (--quick: 1)")
    p.add_argument("--iters", type=int, help="timed runs per row, default 20 (--quick: 2)")
    p.add_argument("--classes", type=int, default=19, help="output classes of every network (default 19)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1; 0: PyTorch's default)")
    p.add_argument("--json", help="write the rows and timings here")
    p.add_argument("--quick", action="store_true", help="a smoke run: 64x128, 1 warm-up, 2 runs, 2 rounds")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.rounds, args.warmup, args.iters, args.classes) < 1:
        p.error("--rounds, --warmup, --iters and --classes must be at least 1")
    note = reference_unavailable()
    if note:
        p.error(note)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    networks = compare(args.archs, args)
    import torchvision

    device = torch.device(args.device)
    print(f"{device_name(device)}, {args.dtype}, batch 1, {args.size[0]}x{args.size[1]}, median of "
          f"{args.iters} runs after {args.warmup} warm-up, torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}")
    print("\n".join(report_lines(networks, args.rounds)), flush=True)
    if args.json:
        result = {"torch": torch.__version__, "torchvision": torchvision.__version__, "device": str(device),
                  "device_name": device_name(device), "threads": torch.get_num_threads(), "dtype": args.dtype,
                  "size": list(args.size), "warmup": args.warmup, "iters": args.iters, "rounds": args.rounds,
                  "reference": REFERENCE_NAME, "networks": networks}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
