"""The DARTS-cell workload with rspnet's ``MixedOp`` beside its peers.

Workload (the reference peers' ``SearchCell``, reproduced below): a DARTS
normal cell with 2 inputs, 4 intermediate nodes, 14 mixed edges of the 8 DARTS
ops, n=8, c=32, 128×256, fp32, one forward + backward. ``quick``: n=2, c=8,
32×64. Rows: the peers ``eager`` and ``checkpoint`` (one
``torch.utils.checkpoint`` per edge) and rspnet's ``MixedOp`` in ``store`` and
``recompute`` mode, all in one process, with the same weights, inputs and α.
ms is the median; peak MiB is the allocation above the inputs during one
forward + backward (CUDA only, as in peers.py; None on CPU).

Skip BN: by default the cell is built as ``python -m rspnet.search`` builds it
(``--skip-bn``: an affine-free BatchNorm after ``skip_connect``), and the peer
gets the same BatchNorm, so that every row computes the same function; with
``--no-skip-bn`` the peer is DARTS's cell exactly. Before timing, each variant's
output and gradients are checked against eager's (``TOLERANCE``); a
disagreement is an error, not a row.

    python benchmarks/cell_workload.py [--quick] [--device cuda] [--[no-]skip-bn] [--json PATH]
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rspnet.nn import MixedOp
from rspnet.search import SearchConfig

SKIP_BN = SearchConfig().skip_bn  # the search's default
# largest difference from eager relative to eager's largest entry, per tensor: fp32
# rounding (TF32 convolutions on CUDA) stays far below; a different function, e.g. a
# missing BatchNorm, is off by order 0.1-1
TOLERANCE = 1e-3


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


def peer_primitives(c, skip_bn=False):
    """DARTS's ops; ``skip_bn`` follows the identity with a BatchNorm like the pools'."""
    skip = nn.Sequential(nn.Identity(), nn.BatchNorm2d(c, affine=False)) if skip_bn else nn.Identity()
    return [PeerZero(),
            nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(c, affine=False)),
            nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.BatchNorm2d(c, affine=False)),
            skip,
            PeerSepConv(c, 3, 1), PeerSepConv(c, 5, 2), PeerDilConv(c, 3, 2, 2), PeerDilConv(c, 5, 4, 2)]


class PeerMixedOp(nn.Module):
    def __init__(self, c, skip_bn=False):
        super().__init__()
        self.ops = nn.ModuleList(peer_primitives(c, skip_bn))

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


def _cells(c, skip_bn=SKIP_BN):
    """The four variants, with one set of weights: rspnet's MixedOp lists the
    DARTS ops in the same order with the same modules (the skip BatchNorm on
    both sides or on neither), so the peer's state dict loads into it unchanged."""
    torch.manual_seed(0)
    peer = functools.partial(PeerMixedOp, skip_bn=skip_bn)
    eager = PeerSearchCell(c, edge=peer)
    cells = {"eager": eager, "checkpoint": PeerSearchCell(c, ckpt=True, edge=peer)}
    for memory in ("store", "recompute"):
        cells[f"rspnet_{memory}"] = PeerSearchCell(
            c, edge=lambda ch, m=memory: MixedOp(ch, m, skip_bn=skip_bn))
    for cell in cells.values():
        cell.load_state_dict(eager.state_dict())
    return cells


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max()
    return ((a - ref).abs().max() / scale).item() if scale > 0 else (a - ref).abs().max().item()


def agreement(cells: dict, s0, s1, alphas, grad_out) -> dict:
    """One forward + backward of every variant on the same inputs: per variant,
    the largest difference from eager's output, α gradient and input gradients,
    relative to the largest entry of eager's. In training mode BN normalises with
    batch statistics, so the running statistics a step updates change nothing."""
    found = {}
    for name, cell in cells.items():
        x0, x1 = s0.detach().clone().requires_grad_(), s1.detach().clone().requires_grad_()
        a = alphas.detach().clone().requires_grad_()
        y = cell(x0, x1, a)
        y.backward(grad_out)
        found[name] = {"output": y.detach(), "alpha grad": a.grad, "s0 grad": x0.grad, "s1 grad": x1.grad}
    ref = found["eager"]
    return {name: max(_relative(t[k], ref[k]) for k in ref) for name, t in found.items()}


def _inputs(n, c, h, w, device):
    g = torch.Generator().manual_seed(0)
    s0 = torch.randn(n, c, h, w, generator=g).to(device)
    s1 = torch.randn(n, c, h, w, generator=g).to(device)
    alphas = torch.randn(14, 8, generator=g).to(device).requires_grad_()
    grad_out = torch.randn(n, 4 * c, h, w, generator=g).to(device)
    return s0, s1, alphas, grad_out


def run(device: str | torch.device, quick: bool = False, skip_bn: bool = SKIP_BN) -> dict:
    """Time and peak memory of one forward + backward of the workload, per
    variant, after checking that every variant computes eager's function
    (``ValueError`` naming the variants that do not)."""
    device = torch.device(device)
    n, c, h, w = (2, 8, 32, 64) if quick else (8, 32, 128, 256)
    s0, s1, alphas, grad_out = _inputs(n, c, h, w, device)
    out = {"workload": {"n": n, "c": c, "h": h, "w": w, "edges": 14, "ops": 8, "dtype": "float32",
                        "skip_bn": skip_bn},
           "env": {"torch": torch.__version__, "device": str(device),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}}
    cells = {name: cell.to(device) for name, cell in _cells(c, skip_bn).items()}
    diffs = agreement(cells, s0, s1, alphas, grad_out)
    out["rel_diff"] = diffs
    print("largest difference from eager (output, α and input gradients), relative to its largest entry:",
          json.dumps(diffs), flush=True)
    wrong = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
    if wrong:
        raise ValueError(f"cell_workload: {sorted(wrong)} differ from eager by {wrong} "
                         f"(tolerance {TOLERANCE}): the variants do not compute the same function")
    for cell in cells.values():
        cell.cpu()
    alpha_grads = {}
    for name, cell in cells.items():
        cell.to(device)

        def step(cell=cell):
            alphas.grad = None
            cell(s0, s1, alphas).backward(grad_out)
        ms, mib = measure(step, device, reps=2 if quick else 10, warm=1 if quick else 3)
        alpha_grads[name] = alphas.grad.detach().clone()
        out[name] = {"ms": round(ms, 3), "peak_mib": None if mib is None else round(mib, 1)}
        print(f"cell {name:17s} n={n} c={c} {h}x{w} skip_bn={skip_bn}: {ms:9.2f} ms  peak "
              f"{'n/a' if mib is None else f'{mib:9.1f} MiB'}", flush=True)
        cell.cpu()
    # every timed step starts from the same weights: the same α gradient as eager's
    ref = alpha_grads["eager"]
    out["alpha_grad_rel_diff"] = {k: _relative(v, ref) for k, v in alpha_grads.items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-bn", action=argparse.BooleanOptionalAction, default=SKIP_BN,
                   help="a BatchNorm after skip_connect in both cells (default: the search's default)")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args()
    try:
        result = run(args.device, args.quick, args.skip_bn)
    except ValueError as exc:
        sys.exit(f"FAILED: {exc}")
    print("α gradient of the timed steps, largest difference from eager relative to its largest entry:",
          json.dumps(result["alpha_grad_rel_diff"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
