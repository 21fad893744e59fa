"""The DARTS-cell workload with rspnet's ``MixedOp`` beside its peers.

Workload (the reference peers' ``SearchCell``, reproduced below): a DARTS
normal cell with 2 inputs, 4 intermediate nodes, 14 mixed edges of the 8 DARTS
ops, n=8, c=32, 128×256, fp32, one forward + backward. ``quick``: n=2, c=8,
32×64. Rows: the peers ``eager`` and ``checkpoint`` (one
``torch.utils.checkpoint`` per edge) and rspnet's ``MixedOp`` in ``store`` and
``recompute`` mode, all in one process, with the same weights, inputs and α.
ms is the median; peak MiB is the allocation above the inputs during one
forward + backward (CUDA only, as in peers.py; None on CPU).

    python benchmarks/cell_workload.py [--quick] [--device cuda] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rspnet.nn import MixedOp


# ------------------------------------------------------------------------------------------
# The peer definitions: the DARTS ops, the eager MixedOp and SearchCell as DARTS writes
# them, and the measuring rule (median ms, peak MiB above the baseline allocation).
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device, reps=10, warm=3):
    """median ms and peak MiB above the baseline allocation for fn()."""
    for _ in range(warm):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            s = torch.cuda.Event(enable_timing=True)
            e = torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    peak = None
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return times[len(times) // 2], peak


class PeerSepConv(nn.Sequential):
    def __init__(self, c, k, p):
        super().__init__(
            nn.ReLU(), nn.Conv2d(c, c, k, 1, p, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=False),
            nn.ReLU(), nn.Conv2d(c, c, k, 1, p, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=False))


class PeerDilConv(nn.Sequential):
    def __init__(self, c, k, p, d):
        super().__init__(
            nn.ReLU(), nn.Conv2d(c, c, k, 1, p, dilation=d, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=False))


class PeerZero(nn.Module):
    def forward(self, x):
        return x.mul(0.0)


def peer_primitives(c):
    return [PeerZero(),
            nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(c, affine=False)),
            nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.BatchNorm2d(c, affine=False)),
            nn.Identity(),
            PeerSepConv(c, 3, 1), PeerSepConv(c, 5, 2), PeerDilConv(c, 3, 2, 2), PeerDilConv(c, 5, 4, 2)]


class PeerMixedOp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ops = nn.ModuleList(peer_primitives(c))

    def forward(self, x, w):
        return sum(wi * op(x) for wi, op in zip(w, self.ops))


class PeerSearchCell(nn.Module):
    """DARTS normal cell: 2 inputs, 4 intermediate nodes, 14 mixed edges."""

    def __init__(self, c, steps=4, ckpt=False, edge=PeerMixedOp):
        super().__init__()
        self.steps, self.ckpt = steps, ckpt
        self.edges = nn.ModuleList(edge(c) for i in range(steps) for _ in range(2 + i))

    def forward(self, s0, s1, alphas):
        w = F.softmax(alphas, dim=-1)
        states, off = [s0, s1], 0
        for i in range(self.steps):
            acc = 0
            for j, h in enumerate(states):
                e = self.edges[off + j]
                if self.ckpt:
                    acc = acc + checkpoint(e, h, w[off + j], use_reentrant=False)
                else:
                    acc = acc + e(h, w[off + j])
            off += len(states)
            states.append(acc)
        return torch.cat(states[-self.steps:], 1)
# ------------------------------------------------------------------------- end of the copy


def _cells(c):
    """The four variants, with one set of weights: rspnet's MixedOp lists the
    DARTS ops in the same order with the same modules, so the peer's state
    dict loads into it unchanged."""
    torch.manual_seed(0)
    eager = PeerSearchCell(c)
    cells = {"eager": eager, "checkpoint": PeerSearchCell(c, ckpt=True)}
    for memory in ("store", "recompute"):
        cells[f"rspnet_{memory}"] = PeerSearchCell(c, edge=lambda ch, m=memory: MixedOp(ch, m))
    for cell in cells.values():
        cell.load_state_dict(eager.state_dict())
    return cells


def run(device: str | torch.device, quick: bool = False) -> dict:
    """Time and peak memory of one forward + backward of the workload, per variant."""
    device = torch.device(device)
    n, c, h, w = (2, 8, 32, 64) if quick else (8, 32, 128, 256)
    g = torch.Generator().manual_seed(0)
    s0 = torch.randn(n, c, h, w, generator=g).to(device)
    s1 = torch.randn(n, c, h, w, generator=g).to(device)
    alphas = torch.randn(14, 8, generator=g).to(device).requires_grad_()
    grad_out = torch.randn(n, 4 * c, h, w, generator=g).to(device)
    out = {"workload": {"n": n, "c": c, "h": h, "w": w, "edges": 14, "ops": 8, "dtype": "float32"},
           "env": {"torch": torch.__version__, "device": str(device),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}}
    alpha_grads = {}
    for name, cell in _cells(c).items():
        cell.to(device)

        def step(cell=cell):
            alphas.grad = None
            cell(s0, s1, alphas).backward(grad_out)
        ms, mib = measure(step, device, reps=5 if quick else 10)
        alpha_grads[name] = alphas.grad.detach().clone()
        out[name] = {"ms": round(ms, 3), "peak_mib": None if mib is None else round(mib, 1)}
        print(f"cell {name:17s} n={n} c={c} {h}x{w}: {ms:9.2f} ms  peak "
              f"{'n/a' if mib is None else f'{mib:9.1f} MiB'}", flush=True)
        cell.cpu()
    # in training mode BN normalises with batch statistics, so every step from the
    # same weights has the same α gradient: compare each variant with eager
    ref = alpha_grads["eager"]
    out["alpha_grad_rel_diff"] = {k: ((v - ref).abs().max() / ref.abs().max()).item()
                                  for k, v in alpha_grads.items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    result = run(args.device, args.quick)
    print("α gradient, largest difference from eager relative to its largest entry:",
          json.dumps(result["alpha_grad_rel_diff"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
