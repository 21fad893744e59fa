"""GPU benchmark suite: every rspnet backend beside the peers, in one run.

    python benchmarks/gpu_suite.py [--quick] [--out DIR]

For each workload, method and dtype (fp32 and bf16) it prints (and writes to
DIR/gpu_suite.{md,json}) the forward, the backward and the forward+backward
time, each as ms and as a % of a device-to-device copy measured in the same
run (the ceiling for memory-bound ops: ideal bytes of that direction / time,
over the copy's bytes / time), and the peak extra memory. Peers
(``peers.py``) are what a user would write instead.

Timing: ``steps`` calls between one pair of CUDA events (no synchronisation
between steps, so host launch gaps hide behind the GPU work as they do in a
training loop), the median of ``repeats`` such batches. Forward: the call
under ``torch.no_grad()``; forward+backward: the call and ``backward(g)``
with the gradients reset to None; backward: their difference.

Peak extra memory: the allocator's peak during one forward+backward minus
the input-gradient bytes every method allocates alike (what the method needs
beyond its unavoidable outputs).

A benchmark that fails (an exception, a peer that disagrees) does not stop the
others, but it is no row: the run ends with exit status 1 and names every
failed benchmark, and DIR gets gpu_suite.failed.json instead of the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402
from memory import peak_bytes  # noqa: E402
from rspnet.ops import _backend, mixed_sum  # noqa: E402
from rspnet.ops.timing import call_times  # noqa: E402


def time_ms(fn, steps: int = 20, repeats: int = 5, warm: int = 3) -> float:
    """ms per call of ``fn``: ``steps`` calls between one event pair
    (``rspnet.ops.timing.call_times``), median of ``repeats``."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    return statistics.median(call_times(fn, repeats, cuda=True, batch=steps))


def copy_ceiling_gbps() -> float:
    x = torch.empty(2**28, device="cuda")  # 1 GiB fp32
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), steps=10)
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


def _pct(nbytes: float, ms: float, ceiling: float) -> float:
    return round(100 * nbytes / ms / 1e6 / ceiling, 1)


def bench_op(workload, name, fwd, leaves, g, ideal_fwd, ideal_bwd, ceiling, grad_bytes) -> dict:
    """One row: forward, backward and forward+backward of ``fwd`` (a
    zero-argument callable returning the output) with gradient ``g``."""
    def step():
        for t in leaves:
            t.grad = None
        fwd().backward(g)

    def forward_only():
        with torch.no_grad():
            fwd()

    row = {"workload": workload, "method": name}
    try:
        step()
        f_ms, s_ms = time_ms(forward_only), time_ms(step)
        b_ms = max(s_ms - f_ms, 1e-6)
        peak = peak_bytes(step, "cuda") - grad_bytes
        row.update({"fwd ms": round(f_ms, 4), "fwd % copy": _pct(ideal_fwd, f_ms, ceiling),
                    "bwd ms": round(b_ms, 4), "bwd % copy": _pct(ideal_bwd, b_ms, ceiling),
                    "fwd+bwd ms": round(s_ms, 4), "% copy": _pct(ideal_fwd + ideal_bwd, s_ms, ceiling),
                    "ideal ms": round((ideal_fwd + ideal_bwd) / ceiling / 1e6, 4),
                    "peak extra MiB": round(peak / 2**20, 1)})
    except Exception as exc:  # noqa: BLE001 - one failing peer must not hide the others
        row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    print(row, flush=True)
    return row


def mixed_sum_rows(ceiling, quick, dtype=torch.float32):
    k = 8
    shape = (2, 8, 32, 64) if quick else (8, 64, 128, 256)
    xs = [torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(k)]
    w = torch.randn(k, device="cuda", requires_grad=True)
    g = torch.randn(shape, device="cuda", dtype=dtype)
    nbytes = xs[0].numel() * xs[0].element_size()
    ideal_fwd, ideal_bwd = (k + 1) * nbytes, (2 * k + 1) * nbytes  # fwd: read k, write 1; bwd: read g + k, write k
    compiled = peers.compiled(peers.weighted_sum_eager)
    methods = [(f"rspnet {b}", (lambda b=b: mixed_sum(w, xs, backend=b)))
               for b in ("cuda", "triton") if _backend.can_run(b, "mixed_sum", xs[0].device, dtype)[0]]
    methods += [("rspnet auto", lambda: mixed_sum(w, xs)),
                ("peer eager sum", lambda: peers.weighted_sum_eager(w, *xs)),
                ("peer stack+einsum", lambda: peers.weighted_sum_stacked(w, *xs)),
                ("peer torch.compile", lambda: compiled(w, *xs))]
    workload = f"mixed_sum K={k} {tuple(shape)} {str(dtype).removeprefix('torch.')}"
    return [bench_op(workload, name, fn, [w, *xs], g, ideal_fwd, ideal_bwd, ceiling, k * nbytes)
            for name, fn in methods]


def cell_rows(mod, quick):
    """The DARTS-cell workload (benchmarks/cell_workload.py) as table rows."""
    res = mod.run("cuda", quick=quick)
    wl = res["workload"]
    name = f"DARTS cell 14x8 n={wl['n']} c={wl['c']} {wl['h']}x{wl['w']} skip_bn={wl['skip_bn']}"
    return [{"workload": name, "method": ("peer " if k in ("eager", "checkpoint") else "rspnet ") + k,
             "ms": v["ms"], "peak extra MiB": v["peak_mib"], "rel diff from eager": res["rel_diff"].get(k)}
            for k, v in res.items() if isinstance(v, dict) and "ms" in v]


def optional_rows(module: str, quick: bool, adapt=None):
    """Suites of the other ops and workloads, from their own modules; a module
    that does not import is a failed benchmark, not a skipped one."""
    def rows():
        mod = __import__(module)
        return adapt(mod, quick) if adapt else mod.run(quick=quick)
    return collect(module, rows)


def collect(workload: str, rows) -> list[dict]:
    """``rows()``, or one failure row naming ``workload`` if it raises."""
    try:
        return rows()
    except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others
        row = {"workload": workload, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(row, flush=True)
        return [row]


def failure_report(failed: list[dict], script: str = "gpu_suite.py") -> str:
    lines = [f"{script}: FAILED: {len(failed)} benchmark(s) did not run; no results table written:"]
    lines += [f"  FAILED {r.get('workload')} / {r.get('method', 'the whole benchmark')}: {r['error']}"
              for r in failed]
    return "\n".join(lines)


def finish(info: dict, ceiling: float, rows: list[dict], out: str | None) -> int:
    """Print the table and the verdicts, write them to ``out`` when every
    benchmark ran; otherwise name the failures on stderr, write only
    gpu_suite.failed.json (removing an earlier run's table) and return 1."""
    failed = [r for r in rows if "error" in r]
    good = [r for r in rows if "error" not in r]
    md = to_markdown(info, ceiling, good) + "\n\n" + verdicts(info, good)
    if failed:
        print(f"INCOMPLETE: {len(failed)} benchmark(s) failed (named at the end); the rows that ran:")
    print(md)
    if out:
        os.makedirs(out, exist_ok=True)
        names = ("gpu_suite.md", "gpu_suite.json", "gpu_suite.failed.json")
        for name in names:
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        data = {"env": info, "copy_gbps": ceiling, "rows": good}
        if failed:
            with open(os.path.join(out, names[2]), "w") as f:
                json.dump({**data, "failed": failed}, f, indent=1)
        else:
            with open(os.path.join(out, names[0]), "w") as f:
                f.write(md + "\n")
            with open(os.path.join(out, names[1]), "w") as f:
                json.dump(data, f, indent=1)
    if failed:
        print(failure_report(failed), file=sys.stderr, flush=True)
        return 1
    return 0


def to_markdown(info, ceiling, rows) -> str:
    cols = ["workload", "method", "fwd ms", "fwd % copy", "bwd ms", "bwd % copy", "fwd+bwd ms", "% copy",
            "ideal ms", "ms", "peak extra MiB", "rel diff from eager"]
    cols = [c for c in cols if any(c in r for r in rows)]
    out = [f"Device: {info['gpu']}; torch {info['torch']} (CUDA {info['cuda']}), triton {info['triton']}, "
           f"{info['nvcc']}; {info['date']}. Copy ceiling measured in this run: {ceiling:.0f} GB/s.", "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


# The targets of the fused ops (fp32, forward+backward, default backend).
TARGETS = {"mixed_sum": ("% copy", 85.0), "channel_merge": ("% copy", 85.0), "path_fusion": ("fwd+bwd ms", 0.6)}


def verdicts(info: dict, rows: list[dict]) -> str:
    """One line per target: met or not, from the 'rspnet auto' fp32 rows. The
    path_fusion time target is for an H200; elsewhere it reads as 1.5x the
    ideal bytes over this run's copy rate."""
    out = ["Targets (rspnet auto, fp32, forward+backward):"]
    for op, (col, target) in TARGETS.items():
        row = next((r for r in rows if r.get("workload", "").startswith(op) and r.get("method") == "rspnet auto"
                    and "float32" in r.get("workload", "") and col in r), None)
        if row is None:
            out.append(f"- {op}: no measurement")
            continue
        if col == "% copy":
            ok = row[col] >= target
            out.append(f"- {op}: {row[col]} % of copy (target >= {target} %): {'met' if ok else 'NOT met'}")
        else:
            limit = target if "H200" in (info.get("gpu") or "") else 1.5 * row["ideal ms"]
            ok = row[col] <= limit
            out.append(f"- {op}: {row[col]} ms (target <= {limit:.3g} ms): {'met' if ok else 'NOT met'}")
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
    rows = collect("mixed_sum float32", lambda: mixed_sum_rows(ceiling, args.quick))
    rows += collect("mixed_sum bfloat16", lambda: mixed_sum_rows(ceiling, args.quick, torch.bfloat16))
    rows += optional_rows("gpu_fusion", args.quick)
    rows += optional_rows("cell_workload", args.quick, cell_rows)
    return finish(info, ceiling, rows, args.out)


if __name__ == "__main__":
    sys.exit(main())
