"""Parameters, GFLOPs at 64x128 and one-thread CPU latency at 512x1024 of
RSPNet architecture files beside torchvision's LRASPP-MobileNetV3-Large, all in
one process (LRASPP measured first and last, to show the drift of a shared
machine), each as built and in its folded inference form
(``rspnet.models.fold_batchnorm``: BatchNorms and linear cell states merged,
what evaluate, predict and the export report run). Usage::

    python benchmarks/cost_vs_lraspp.py OUT.json ARCH.json [ARCH.json ...]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from search_quality import costs, lraspp_model  # noqa: E402

from rspnet.models.fold import fold_batchnorm  # noqa: E402
from rspnet.models.rspnet import RSPNet  # noqa: E402


def main(argv: list[str]) -> int:
    out, archs = argv[0], argv[1:]
    rows: dict[str, list[dict]] = {}

    def measure(name, model):
        c = costs(model, (64, 128))
        folded = costs(fold_batchnorm(model.eval()), (64, 128))
        c.update({f"folded_{k}": v for k, v in folded.items()})
        rows.setdefault(name, []).append(c)
        print(f"{name}: {c['params'] / 1e6:.3f} M params, {c['flops'] / 1e9:.3f} GFLOPs at 64x128, "
              f"{c['latency_ms']:.0f} ms at 512x1024 (1 thread); folded: {folded['flops'] / 1e9:.3f} GFLOPs, "
              f"{folded['latency_ms']:.0f} ms", flush=True)

    measure("lraspp", lraspp_model())
    for arch in archs:
        measure(arch, RSPNet(arch, 19))
    measure("lraspp", lraspp_model())
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
