"""Peak memory of one search step, ``store`` vs ``recompute`` supernet.

A step is what ``python -m rspnet.search`` does per batch after the warm-up:
the architecture step (forward + backward on split B, Adam on α, or β in stage
2) and the weight step (forward + backward on split A, SGD). ``recompute`` is
the whole supernet's mode (``rspnet.nn.recompute``). Each mode runs in its own
subprocess, so one mode's allocator state cannot hide the other's peak:

1. build the supernet, the optimisers and the two batches (the resident state);
2. keep the gradients of α or β (on B) and of every weight (on A) at the initial
   parameters, to check that both modes compute the same step, then take one
   step (warm-up: lazy allocations, optimiser state);
3. take a second step with the peak measured above what is live before it:
   CPU: peak RSS (VmHWM, reset through /proc/self/clear_refs, freed memory
   returned to the OS) minus the RSS before the step, and the peak of live
   tensor bytes (``benchmarks/memory.py``); CUDA: ``max_memory_allocated``.

In stage 1 a third subprocess measures a derived network of the same topology
(one fixed op per kept edge, plain autograd) taking a weight step.

    python benchmarks/search_memory.py [--stage 1|2] [--batch-size 4 --size 64x128 --channels 16]
                                       [--layers 8] [--device cpu|cuda] [--json PATH] [--quick]

Defaults: the search CLI's (stage 1); ``--quick`` (a smoke run): batch 2, 32x64,
F=8, L=3. Stage 2 searches the trellis's paths around a fixed cell.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memory import peak_bytes  # noqa: E402  (benchmarks/memory.py)

from rspnet.architecture import Architecture, Genotype  # noqa: E402
from rspnet.data import NUM_CLASSES, get_dataset  # noqa: E402
from rspnet.models import RSPNet  # noqa: E402
from rspnet.search import Architect, MacroSupernet, SearchConfig, SinglePathSupernet  # noqa: E402

DEFAULTS = SearchConfig()
MODES = ("store", "recompute", "single_path")
QUICK = {"batch_size": 2, "size": (32, 64), "channels": 8, "layers": 3}
GRADIENT_TOLERANCE = 1e-4  # largest difference between the modes / largest entry, per tensor
# the fixed cell of the single-path floor and of the stage-2 benchmark
CELL = Genotype(normal=tuple(("sep_conv_3x3", s, t) for s, t in
                             [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4)]),
                normal_concat=(1, 2, 3, 4))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_freed_memory() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _batches(args, device):
    data = get_dataset("synthetic", "train", size=args.size, length=2 * args.batch_size)
    items = [data[i] for i in range(2 * args.batch_size)]
    return [tuple(torch.stack([it[j] for it in items[k::2]]).to(device) for j in range(2))
            for k in range(2)]


def _search_step(args, device):
    """The supernet, its optimisers, and one search step (architecture, then weights)."""
    c = DEFAULTS
    if args.stage == 1:
        model = SinglePathSupernet(NUM_CLASSES, args.channels, c.scales, c.steps, args.mode,
                                   head_channels=4 * args.channels).to(device)
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=c.arch_lr, betas=c.arch_betas,
                                 weight_decay=c.arch_weight_decay)
    else:
        model = MacroSupernet(NUM_CLASSES, CELL, args.channels, c.scales, args.layers,
                              head_channels=4 * args.channels, memory=args.mode).to(device)
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=c.arch_lr, betas=c.arch_betas,
                                 weight_decay=c.arch_weight_decay)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=c.w_lr, momentum=c.w_momentum,
                            weight_decay=c.w_weight_decay)
    architect = Architect(model, a_opt, args.order)
    batch_a, batch_b = _batches(args, device)
    weights = model.weight_parameters()

    def step():
        architect.step(batch_a, batch_b, c.w_lr, w_opt)
        w_opt.zero_grad(set_to_none=True)
        model.loss(*batch_a).backward(inputs=weights)
        w_opt.step()

    def gradients():
        """α's (β's) gradient on B and the weights' on A, at the same parameters
        in both modes (after a step, Adam's first update, about lr·sign(g), would
        turn rounding-level differences of near-zero entries into real ones)."""
        name_of = {id(p): n for n, p in model.named_parameters()}
        names = [name_of[id(p)] for p in model.arch_parameters() + weights]
        g_arch = torch.autograd.grad(model.loss(*batch_b), model.arch_parameters())
        g_weights = torch.autograd.grad(model.loss(*batch_a), weights)
        return dict(zip(names, [g.cpu() for g in g_arch + g_weights]))
    return step, gradients


def _single_path_step(args, device):
    """A derived network of the stage-1 topology, one fixed op per kept edge,
    plain autograd: one weight step."""
    arch = Architecture(cell=CELL, channels=args.channels, scales=DEFAULTS.scales,
                        head_channels=4 * args.channels)
    model = RSPNet(arch, NUM_CLASSES).to(device)
    w_opt = torch.optim.SGD(model.parameters(), lr=DEFAULTS.w_lr, momentum=DEFAULTS.w_momentum)
    batch_a, _ = _batches(args, device)

    def step():
        w_opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(batch_a[0]), batch_a[1], ignore_index=255).backward()
        w_opt.step()
    return step, None


def worker(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    step, gradients = (_single_path_step if args.mode == "single_path" else _search_step)(args, device)
    if gradients is not None:
        torch.save(gradients(), args.grads_out)
    step()
    result = {"mode": args.mode}
    if device.type == "cuda":
        result["peak_bytes"] = peak_bytes(step, "cuda")
        result["measure"] = "torch.cuda.max_memory_allocated above the step's start"
        return result
    _release_freed_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    step()
    result["rss_peak_bytes"] = (_status_kib("VmHWM") - before) * 1024
    result["tensor_peak_bytes"] = peak_bytes(step, "cpu")
    result["peak_bytes"] = result["rss_peak_bytes"]
    result["measure"] = "peak RSS (VmHWM) above the RSS at the step's start"
    return result


def _size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=(1, 2), default=1)
    p.add_argument("--batch-size", type=int, help=f"default {DEFAULTS.batch_size}")
    p.add_argument("--size", type=_size, help=f"HxW, default {DEFAULTS.size[0]}x{DEFAULTS.size[1]}")
    p.add_argument("--channels", type=int, help=f"default {DEFAULTS.channels}")
    p.add_argument("--layers", type=int, help=f"stage 2's trellis depth, default {DEFAULTS.layers}")
    p.add_argument("--quick", action="store_true", help=f"smaller defaults: {QUICK}")
    p.add_argument("--order", choices=("first", "second"), default=DEFAULTS.order)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)        # worker only
    p.add_argument("--grads-out", help=argparse.SUPPRESS)                 # worker only
    args = p.parse_args(argv)
    for name, quick in QUICK.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else getattr(DEFAULTS, name))
    return args


def run_modes(args: argparse.Namespace, modes) -> tuple[dict, dict]:
    """Each mode's worker in its own process: its result, and the gradients of
    the two search modes."""
    results, grads = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            grads_path = os.path.join(tmp, f"{mode}.pt")
            cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode, "--grads-out", grads_path,
                   "--stage", str(args.stage), "--layers", str(args.layers),
                   "--batch-size", str(args.batch_size), "--size", f"{args.size[0]}x{args.size[1]}",
                   "--channels", str(args.channels), "--order", args.order, "--device", args.device]
            # a fixed mmap threshold: large tensors go back to the OS when freed, so RSS tracks them
            run_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            done = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
            if done.returncode != 0:
                raise SystemExit(f"search_memory.py: FAILED: the {mode} worker exited with {done.returncode}:\n"
                                 f"{done.stderr[-3000:]}")
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            if mode != "single_path":
                grads[mode] = torch.load(grads_path, weights_only=True)
    return results, grads


def check_gradients(grads: dict) -> float:
    """The largest difference between the modes' gradients relative to each
    tensor's largest entry; ``SystemExit`` above ``GRADIENT_TOLERANCE``. Both
    modes compute the same step: the gradients may differ by fp32 rounding only,
    carried through the network (measured: 2e-6 of each tensor's largest entry
    in stage 1, 9e-6 in stage 2; a wrong gradient is off by order 1)."""
    worst = 0.0
    for name, ref in grads["store"].items():
        other = grads["recompute"][name]
        scale = torch.maximum(ref.abs().max(), other.abs().max())
        difference = ((other - ref).abs().max() / scale).item() if scale > 0 else 0.0
        if not difference <= GRADIENT_TOLERANCE:
            raise SystemExit(f"gradient of {name} differs between the modes: {difference:.2e} "
                             "of its largest entry")
        worst = max(worst, difference)
    return worst


def _print_table(args, modes, results, ratio, worst) -> None:
    print(f"one stage-{args.stage} search step, batch {args.batch_size} at "
          f"{args.size[0]}x{args.size[1]}, F={args.channels}{f', L={args.layers}' if args.stage == 2 else ''}, "
          f"{args.order} order, {args.device}")
    print(f"{'':<12} {'peak MiB':>10} {'tensor peak MiB':>16}")
    for mode in modes:
        r = results[mode]
        tensor = r.get("tensor_peak_bytes")
        print(f"{mode:<12} {r['peak_bytes'] / 2**20:>10.1f} "
              f"{'' if tensor is None else f'{tensor / 2**20:>16.1f}'}")
    print(f"recompute / store: {100 * ratio:.1f} % of the peak ({results['store']['measure']})")
    if "tensor_peak_bytes" in results["store"]:
        t_ratio = results["recompute"]["tensor_peak_bytes"] / results["store"]["tensor_peak_bytes"]
        print(f"recompute / store, live tensor bytes: {100 * t_ratio:.1f} %")
    print(f"gradients ({'α' if args.stage == 1 else 'β'} and every weight) agree: "
          f"largest difference {worst:.2e} of the largest entry")


def main(argv=None) -> int:
    args = _parse(argv)
    if args.mode:
        print(json.dumps(worker(args)))
        return 0
    modes = MODES if args.stage == 1 else MODES[:2]
    config = {"stage": args.stage, "batch_size": args.batch_size, "size": list(args.size),
              "channels": args.channels, "layers": args.layers if args.stage == 2 else None, "order": args.order,
              "device": args.device}
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
           "cpu_threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    print(json.dumps(env))
    results, grads = run_modes(args, modes)
    worst = check_gradients(grads)
    ratio = results["recompute"]["peak_bytes"] / results["store"]["peak_bytes"]
    _print_table(args, modes, results, ratio, worst)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "config": config, "results": results, "ratio": ratio,
                       "max_relative_grad_difference": worst}, f, indent=1)
    return 0

if __name__ == "__main__":
    sys.exit(main())
