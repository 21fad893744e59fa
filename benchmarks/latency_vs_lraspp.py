"""One-thread CPU latency at 512x1024 of folded RSPNet networks against the
folded LRASPP-MobileNetV3-Large, *interleaved*: every round times each network
once, in a rotating order, so that the load of a shared machine (which drifts
by tens of percent over a minute) falls on all of them alike. Reports each
network's median and, for each RSPNet, the median over rounds of its time
divided by LRASPP's in the same round, and in how many rounds it was faster.

Each network runs in its inference form (``rspnet.models.fold_batchnorm``,
what evaluate, predict and ``python -m rspnet.export --report`` run), with
random weights (latency does not depend on them), in the memory layout its
warm-up found faster. Usage::

    python benchmarks/latency_vs_lraspp.py [--rounds 25] [--json OUT.json] ARCH.json [ARCH.json ...]

``--quick`` (a smoke run): 2 rounds at 64x128 unless given.
"""
import argparse
import json
import statistics
import sys
import time

import torch

from rspnet.export import _FORMATS
from rspnet.models.fold import fold_batchnorm
from rspnet.models.reference import lraspp_mobilenet_v3
from rspnet.models.rspnet import RSPNet


def _once(model, x) -> float:
    start = time.perf_counter()
    model(x)
    return 1000 * (time.perf_counter() - start)


def _faster_layout(model, x, warmup: int = 3) -> tuple[str, torch.Tensor]:
    trials = {}
    for name, fmt in _FORMATS.items():
        model.to(memory_format=fmt)
        xi = x.contiguous(memory_format=fmt)
        trials[name] = statistics.median(_once(model, xi) for _ in range(warmup))
    best = min(trials, key=trials.get)
    model.to(memory_format=_FORMATS[best])
    return best, x.contiguous(memory_format=_FORMATS[best])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("archs", nargs="+", help="RSPNet architecture files")
    p.add_argument("--rounds", type=int, help="default 25 (--quick: 2)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="default 512 1024 (--quick: 64 128)")
    p.add_argument("--json", help="write the timings here")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds at 64x128")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 25
    if args.size is None:
        args.size = (64, 128) if args.quick else (512, 1024)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 3, *args.size)
    nets = {"LRASPP-MobileNetV3-Large": fold_batchnorm(lraspp_mobilenet_v3(19))}
    for arch in args.archs:
        nets[arch] = fold_batchnorm(RSPNet(arch, 19))
    inputs, layouts = {}, {}
    with torch.inference_mode():
        for name, net in nets.items():
            layouts[name], inputs[name] = _faster_layout(net.eval(), x)
        times = {name: [] for name in nets}
        names = list(nets)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(_once(nets[name], inputs[name]))
    reference = "LRASPP-MobileNetV3-Large"
    result = {"torch": torch.__version__, "size": list(args.size), "rounds": args.rounds, "networks": {}}
    print(f"one thread, batch 1, {args.size[0]}x{args.size[1]}, {args.rounds} interleaved rounds, "
          f"torch {torch.__version__}")
    for name in nets:
        row = {"layout": layouts[name], "median_ms": statistics.median(times[name]), "ms": times[name]}
        line = f"{name}: median {row['median_ms']:.1f} ms ({layouts[name]})"
        if name != reference:
            ratios = [a / b for a, b in zip(times[name], times[reference])]
            row.update(median_ratio=statistics.median(ratios),
                       faster_rounds=sum(r < 1 for r in ratios))
            line += (f"; / LRASPP in the same round: median {row['median_ratio']:.3f}x, "
                     f"faster in {row['faster_rounds']}/{args.rounds} rounds")
        result["networks"][name] = row
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
