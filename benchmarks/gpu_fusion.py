"""GPU benchmarks of path_fusion and channel_merge beside their peers, in one run.

Called by gpu_suite.py (``run(quick)`` returns its rows); also runnable alone
(exit status 1, naming them, when any method fails):

    python benchmarks/gpu_fusion.py [--quick] [--json PATH]

Rows follow gpu_suite.py: forward, backward and forward+backward ms, each as a
% of a device copy measured in the same run (ideal bytes of that direction),
and peak extra memory. Peers come from peers.py.

* PAM path fusion (the PAM workload of benchmarks/RESULTS.md): 4 scales (1/1, 1/2, 1/4, 1/8 of the
  output) fused to 256x512, n=8, c=64. Ideal traffic: forward reads the inputs
  (I) and writes the output (O): I + O; backward reads g (O) and the inputs
  (for dlogits) and writes their gradients: 2I + O.
* RSP channel merge: two halves of (8, 32, 128, 256), groups=2. Ideal: every
  element read and written once in each direction: 2 x total bytes each.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402
from gpu_suite import bench_op, copy_ceiling_gbps, failure_report  # noqa: E402
from rspnet.ops import _backend, channel_merge, path_fusion  # noqa: E402


def _nbytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def path_fusion_rows(ceiling: float, quick: bool, dtype=torch.float32) -> list[dict]:
    n, c, h, w = (2, 8, 32, 64) if quick else (8, 64, 256, 512)
    feats = [torch.randn(n, c, h >> i, w >> i, device="cuda", dtype=dtype, requires_grad=True) for i in range(4)]
    logits = torch.randn(4, device="cuda", requires_grad=True)
    g = torch.randn(n, c, h, w, device="cuda", dtype=dtype)
    inputs, out = _nbytes(feats), _nbytes([g])
    ideal_fwd, ideal_bwd = inputs + out, 2 * inputs + out
    compiled = peers.compiled(peers.path_fusion_eager)
    methods = [(f"rspnet {b}", (lambda b=b: path_fusion(logits, feats, (h, w), backend=b)))
               for b in ("cuda", "triton") if _backend.can_run(b, "path_fusion", g.device, dtype)[0]]
    methods += [("rspnet auto", lambda: path_fusion(logits, feats, (h, w))),
                ("peer eager", lambda: peers.path_fusion_eager(logits, *feats, size=(h, w))),
                ("peer torch.compile", lambda: compiled(logits, *feats, size=(h, w)))]
    workload = f"path_fusion 4 scales -> {(n, c, h, w)} {str(dtype).removeprefix('torch.')}"
    return [bench_op(workload, name, fn, [logits, *feats], g, ideal_fwd, ideal_bwd, ceiling, inputs)
            for name, fn in methods]


def channel_merge_rows(ceiling: float, quick: bool, dtype=torch.float32) -> list[dict]:
    shape = (2, 8, 32, 64) if quick else (8, 32, 128, 256)
    xs = [torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2)]
    g = torch.randn(shape[0], 2 * shape[1], *shape[2:], device="cuda", dtype=dtype)
    total = _nbytes(xs)
    compiled = peers.compiled(peers.channel_merge_eager)
    methods = [(f"rspnet {b}", (lambda b=b: channel_merge(xs, 2, backend=b)))
               for b in ("cuda", "triton") if _backend.can_run(b, "channel_merge", g.device, dtype)[0]]
    methods += [("rspnet auto", lambda: channel_merge(xs, 2)),
                ("peer eager cat+shuffle", lambda: peers.channel_merge_eager(*xs, groups=2)),
                ("peer torch.compile", lambda: compiled(*xs, groups=2))]
    workload = f"channel_merge 2 x {shape} groups=2 {str(dtype).removeprefix('torch.')}"
    return [bench_op(workload, name, fn, xs, g, 2 * total, 2 * total, ceiling, total) for name, fn in methods]


def run(quick: bool = False) -> list[dict]:
    ceiling = copy_ceiling_gbps()
    rows = path_fusion_rows(ceiling, quick)
    rows += path_fusion_rows(ceiling, quick, torch.bfloat16)
    rows += channel_merge_rows(ceiling, quick)
    rows += channel_merge_rows(ceiling, quick, torch.bfloat16)
    torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_fusion.py needs a CUDA device")
    result = run(args.quick)
    failed = [r for r in result if "error" in r]
    if failed:   # no rows file: a failed method is no measurement
        print(failure_report(failed, "gpu_fusion.py"), file=sys.stderr)
        return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
