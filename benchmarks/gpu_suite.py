"""GPU benchmark suite: every rspnet backend beside the peers, in one run.

    python benchmarks/gpu_suite.py [--quick] [--out DIR]

For each workload it prints (and writes to DIR/gpu_suite.{md,json}): median
ms of forward+backward, effective GB/s of the ideal traffic, that rate as a %
of a device-to-device copy measured in the same run (the ceiling for
memory-bound ops), and peak extra memory. Peers are what a user would write
instead (eager sum, stack+einsum, torch.compile).

Peak extra memory: gradients are reset to None before every step, so every
method allocates its input gradients alike; the figure is the allocator's
peak during one forward+backward minus those gradient bytes (what the
method needs beyond its unavoidable outputs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from memory import peak_bytes  # noqa: E402
from rspnet.ops import mixed_sum  # noqa: E402
from rspnet.ops import _backend  # noqa: E402


def median_ms(fn, reps=20, warm=3) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def copy_ceiling_gbps() -> float:
    x = torch.empty(2**28, device="cuda")  # 1 GiB fp32
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x))
    del x, y
    torch.cuda.empty_cache()
    return 2 * 2**28 * 4 / ms / 1e6


def env_info() -> dict:
    info = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        info["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except (OSError, IndexError):
        info["nvcc"] = None
    return info


def bench_step(name, fwd, leaves, g, ideal_bytes, ceiling, grad_bytes):
    def step():
        for t in leaves:
            t.grad = None
        fwd().backward(g)
    try:
        step()
        ms = median_ms(step)
        peak = peak_bytes(step, "cuda") - grad_bytes
        gbps = ideal_bytes / ms / 1e6
        return {"method": name, "ms": round(ms, 4), "GB/s": round(gbps, 1),
                "% copy": round(100 * gbps / ceiling, 1), "peak extra MiB": round(peak / 2**20, 1)}
    except Exception as exc:  # noqa: BLE001 - one failing peer must not hide the others
        return {"method": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def mixed_sum_rows(ceiling, quick, dtype=torch.float32):
    k = 8
    shape = (2, 8, 32, 64) if quick else (8, 64, 128, 256)
    xs = [torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(k)]
    alpha = torch.randn(k, device="cuda", requires_grad=True)
    g = torch.randn(shape, device="cuda", dtype=dtype)
    nbytes = xs[0].numel() * xs[0].element_size()
    ideal = (3 * k + 2) * nbytes  # fwd: read k, write 1; bwd: read g + k, write k
    leaves = [alpha, *xs]

    def eager(a=alpha):
        w = F.softmax(a, 0)
        return sum(wi * xi for wi, xi in zip(w, xs))

    def stacked():
        return torch.einsum("k,k...->...", F.softmax(alpha, 0).to(dtype), torch.stack(xs))

    compiled = torch.compile(lambda a, *xs: sum(wi * xi for wi, xi in zip(F.softmax(a, 0), xs)))
    methods = [(f"rspnet {b}", (lambda b=b: mixed_sum(F.softmax(alpha, 0), xs, backend=b)))
               for b in ("cuda", "triton") if _backend.can_run(b, "mixed_sum", xs[0].device, dtype)[0]]
    methods += [("rspnet auto", lambda: mixed_sum(F.softmax(alpha, 0), xs)),
                ("peer eager sum", eager), ("peer stack+einsum", stacked),
                ("peer torch.compile", lambda: compiled(alpha, *xs))]
    rows = []
    for name, fn in methods:
        row = bench_step(name, fn, leaves, g, ideal, ceiling, k * nbytes)
        row["workload"] = f"mixed_sum K={k} {tuple(shape)} {str(dtype).removeprefix('torch.')}"
        rows.append(row)
        print(row, flush=True)
    return rows


def cell_rows(mod, quick):
    """The DARTS-cell workload (benchmarks/cell_workload.py) as table rows."""
    res = mod.run("cuda", quick=quick)
    wl = res["workload"]
    name = f"DARTS cell 14x8 n={wl['n']} c={wl['c']} {wl['h']}x{wl['w']}"
    return [{"workload": name, "method": ("peer " if k in ("eager", "checkpoint") else "rspnet ") + k,
             "ms": v["ms"], "peak extra MiB": v["peak_mib"],
             "alpha grad rel diff": res["alpha_grad_rel_diff"].get(k)}
            for k, v in res.items() if isinstance(v, dict) and "ms" in v]


def optional_rows(module: str, quick: bool, adapt=None):
    """Suites of the other ops and workloads, from their own modules."""
    try:
        mod = __import__(module)
    except ImportError as exc:
        print(f"skipping {module}: {exc}", flush=True)
        return []
    try:
        return adapt(mod, quick) if adapt else mod.run(quick=quick)
    except Exception as exc:  # noqa: BLE001
        return [{"workload": module, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}]


def to_markdown(info, ceiling, rows) -> str:
    cols = ["workload", "method", "ms", "GB/s", "% copy", "peak extra MiB", "alpha grad rel diff", "error"]
    cols = [c for c in cols if any(c in r for r in rows)]
    out = [f"Device: {info['gpu']}; torch {info['torch']} (CUDA {info['cuda']}), triton {info['triton']}, "
           f"{info['nvcc']}; {info['date']}. Copy ceiling measured in this run: {ceiling:.0f} GB/s.", "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test of the suite)")
    ap.add_argument("--out", help="directory for gpu_suite.md and gpu_suite.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_suite.py needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    info = env_info()
    print(json.dumps(info), flush=True)
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling: {ceiling:.0f} GB/s", flush=True)
    rows = mixed_sum_rows(ceiling, args.quick) + mixed_sum_rows(ceiling, args.quick, torch.bfloat16)
    rows += optional_rows("gpu_fusion", args.quick)
    rows += optional_rows("cell_workload", args.quick, cell_rows)
    md = to_markdown(info, ceiling, rows)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_suite.md"), "w") as f:
            f.write(md + "\n")
        with open(os.path.join(args.out, "gpu_suite.json"), "w") as f:
            json.dump({"env": info, "copy_gbps": ceiling, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
