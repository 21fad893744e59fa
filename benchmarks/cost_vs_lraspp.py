"""Parameters, GFLOPs at 64x128 and one-thread CPU latency at 512x1024 of
RSPNet architecture files beside torchvision's LRASPP-MobileNetV3-Large, all in
one process (LRASPP measured first and last, to show the drift of a shared
machine), each as built and in its folded inference form
(``rspnet.models.inference_form``: BatchNorms and linear cell states merged,
what evaluate, predict and the export report run). Usage::

    python benchmarks/cost_vs_lraspp.py [--quick] OUT.json ARCH.json [ARCH.json ...]

``--quick`` (a smoke run): latency at 64x128, one warm-up and two timed runs.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from search_quality import QUICK_LATENCY, costs, lraspp_model  # noqa: E402

from rspnet.models import inference_form  # noqa: E402
from rspnet.models.rspnet import RSPNet  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the JSON file written")
    p.add_argument("archs", nargs="+", help="RSPNet architecture files")
    p.add_argument("--quick", action="store_true", help="latency at 64x128, 1 warm-up, 2 runs")
    args = p.parse_args(argv)
    latency = QUICK_LATENCY if args.quick else {}
    size = "x".join(map(str, latency.get("latency_size", (512, 1024))))
    rows: dict[str, list[dict]] = {}

    def measure(name, model):
        c = costs(model, (64, 128), **latency)
        folded = costs(inference_form(model.eval()), (64, 128), **latency)
        c.update({f"folded_{k}": v for k, v in folded.items()})
        rows.setdefault(name, []).append(c)
        print(f"{name}: {c['params'] / 1e6:.3f} M params, {c['flops'] / 1e9:.3f} GFLOPs at 64x128, "
              f"{c['latency_ms']:.0f} ms at {size} (1 thread); folded: {folded['flops'] / 1e9:.3f} GFLOPs, "
              f"{folded['latency_ms']:.0f} ms", flush=True)

    measure("lraspp", lraspp_model())
    for arch in args.archs:
        measure(arch, RSPNet(arch, 19))
    measure("lraspp", lraspp_model())
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
