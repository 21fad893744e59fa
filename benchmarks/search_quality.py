"""Does the search select better than chance? The search-quality benchmark.

    python benchmarks/search_quality.py --out runs/quality            # S=3, R=6, noise floor, LRASPP
    python benchmarks/search_quality.py --out runs/quality --quick    # a smoke run of the pipeline

It runs S searches (``python -m rspnet.search --seed s``, default settings)
and draws R architectures uniformly from the same space (``python -m
rspnet.search --random R``), trains every one with the same default recipe
(``python -m rspnet.train``), trains the first searched architecture with
``--noise-seeds`` training seeds to show how much the training seed alone moves
the score, and trains torchvision's LRASPP-MobileNetV3-Large from scratch
through the same trainer as the hand-designed reference (needs torchvision:
``pip install -e .[bench]``). ``--jobs`` processes run at a time (one thread
each). Finished runs are reused, so an interrupted benchmark continues.

The score of a run is its final validation mIoU (the recipe's last epoch, not
the best one). It writes ``quality.md`` (table and summary), ``quality.json``
and ``quality.png`` (mIoU against parameters, searched / random / LRASPP) into
``--out``: per architecture its mIoU, parameters, FLOPs at the training size
and one-thread CPU latency at 512x1024; in the summary the searched and random
means ± std, their difference with its standard error, the training-seed std,
the genotype overlap between search seeds and the skip connections per cell.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# ------------------------------------------------------------------- runs
def _launch(argv: list[str], log: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def _run_all(jobs: list[tuple[str, list[str], str]], parallel: int) -> None:
    """Run (name, argv, log) jobs, ``parallel`` at a time; fail on the first error."""
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            name, argv, log = pending.pop(0)
            print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
            running.append((name, _launch(argv, log), log, time.perf_counter()))
        time.sleep(0.2)
        for item in list(running):
            name, proc, log, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                for _, other, _, _ in running:
                    other.kill()
                raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log}")
            print(f"[{time.strftime('%H:%M:%S')}] done  {name} in {time.perf_counter() - start:.0f} s", flush=True)


def _trained(out: str) -> dict | None:
    path = os.path.join(out, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        metrics = json.load(f)
    if metrics.get("epochs_done") != metrics["config"]["epochs"] or not metrics.get("final_val"):
        return None
    return metrics


# --------------------------------------------------------------- LRASPP
def train_lraspp(out: str, seed: int, train_args: list[str], arch: str) -> int:
    """Train torchvision's LRASPP-MobileNetV3-Large from scratch with
    ``rspnet.train``'s recipe: the same trainer, data, loss, schedule and
    validation, with only the network swapped (``Trainer.build_model``; the
    architecture file only fills the checkpoint's records)."""
    from rspnet.train import trainer as trainer_module
    from rspnet.train.__main__ import main

    trainer_module.Trainer.build_model = lambda self: lraspp_model()
    return main(["--arch", arch, "--out", out, "--seed", str(seed), "--no-progress", *train_args])


def lraspp_model():
    """torchvision's LRASPP-MobileNetV3-Large for 19 classes, no pretrained
    weights, returning the class scores as a tensor (the reference of
    ``benchmarks/latency_vs_lraspp.py`` too)."""
    from rspnet.models.reference import lraspp_mobilenet_v3

    return lraspp_mobilenet_v3(19)


# ---------------------------------------------------------------- costs
LATENCY_SIZE = (512, 1024)
QUICK_LATENCY = {"latency_size": (64, 128), "warmup": 1, "iters": 2}   # --quick: a smoke run


def costs(model, size, latency_size=LATENCY_SIZE, warmup: int = 2, iters: int = 7) -> dict:
    """Parameters, FLOPs at ``size`` and median one-thread CPU latency at ``latency_size``."""
    import torch

    from rspnet.ops.timing import measure_latency
    from rspnet.models import count_flops, count_params

    model = model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        latency = measure_latency(model, latency_size, torch.device("cpu"), warmup=warmup, iters=iters)
    finally:
        torch.set_num_threads(threads)
    return {"params": count_params(model), "flops": count_flops(model, size),
            "latency_ms": latency["median_ms"]}


# -------------------------------------------------------------- summary
def _overlap(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def summarize(rows: list[dict], searches: list[str]) -> dict:
    from rspnet.architecture import Architecture

    def scores(kind):
        return [r["miou"] for r in rows if r["kind"] == kind]
    searched, random_ = scores("searched"), scores("random")
    # the training-seed noise: the first searched architecture under every training seed
    noise = [r["miou"] for r in rows if r["kind"] == "noise" or r["name"] == "searched-0"]
    std = lambda xs: statistics.stdev(xs) if len(xs) > 1 else float("nan")  # noqa: E731
    diff = statistics.mean(searched) - statistics.mean(random_) if searched and random_ else float("nan")
    se = math.sqrt(std(searched) ** 2 / len(searched) + std(random_) ** 2 / len(random_)) \
        if len(searched) > 1 and len(random_) > 1 else float("nan")
    archs = [Architecture.load(p) for p in searches]
    cells = [set(a.cell.normal) for a in archs]
    paths = [{(n.node, s) for n in a.nodes or () for s, _ in n.paths} for a in archs]
    median_random = statistics.median(random_) if random_ else float("nan")
    return {
        "searched_mean": statistics.mean(searched) if searched else None, "searched_std": std(searched),
        "random_mean": statistics.mean(random_) if random_ else None, "random_std": std(random_),
        "random_median": median_random,
        "difference": diff, "difference_se": se,
        "training_seed_std": std(noise),
        "searched_beating_random_median": sum(s > median_random for s in searched),
        "cell_overlap": statistics.mean([_overlap(a, b) for a, b in itertools.combinations(cells, 2)])
        if len(cells) > 1 else None,
        "path_overlap": statistics.mean([_overlap(a, b) for a, b in itertools.combinations(paths, 2)])
        if len(paths) > 1 else None,
        "skip_connections_per_cell": [sum(op == "skip_connect" for op, _, _ in a.cell.normal) for a in archs],
    }


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def report(rows: list[dict], summary: dict, out: str, command: str, machine: str,
           latency_size=LATENCY_SIZE) -> str:
    lat = f"CPU latency {latency_size[0]}x{latency_size[1]}, 1 thread (ms)"
    lines = [f"Command: `{command}`", "", f"Machine: {machine}", "",
             f"| run | kind | val mIoU % | params (M) | GFLOPs (train size) | {lat} | genotype / source |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['kind']} | {_pct(r['miou'])} | {r['params'] / 1e6:.3f} | "
                     f"{r['flops'] / 1e9:.3f} | {r['latency_ms']:.0f} | {r.get('describe', '')} |")
    s = summary
    lines += ["", f"- searched: {_pct(s['searched_mean'])} ± {_pct(s['searched_std'])} % (mean ± std)",
              f"- random: {_pct(s['random_mean'])} ± {_pct(s['random_std'])} % (median {_pct(s['random_median'])} %)",
              f"- searched − random: {_pct(s['difference'])} points, standard error {_pct(s['difference_se'])}",
              f"- training-seed std (one architecture, several seeds): {_pct(s['training_seed_std'])} points",
              f"- searched architectures above the random median: {s['searched_beating_random_median']}",
              f"- genotype overlap between search seeds (Jaccard): cell edges {s['cell_overlap']}, "
              f"kept paths {s['path_overlap']}",
              f"- skip connections per searched cell: {s['skip_connections_per_cell']}"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "quality.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "quality.json"), "w") as f:
        json.dump({"rows": rows, "summary": summary, "command": command, "machine": machine}, f, indent=1)
    return text


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, style in (("random", dict(color="tab:gray", marker="o")),
                        ("searched", dict(color="tab:blue", marker="*", s=120)),
                        ("noise", dict(color="tab:blue", marker="x")),
                        ("lraspp", dict(color="tab:red", marker="s"))):
        pts = [(r["params"] / 1e6, 100 * r["miou"]) for r in rows if r["kind"] == kind]
        if pts:
            ax.scatter(*zip(*pts), label={"noise": "searched #0, other training seeds",
                                          "lraspp": "LRASPP-MobileNetV3-Large"}.get(kind, kind), **style)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main
# --quick: a smoke run of the whole pipeline on tiny settings (one search, two
# random architectures, no extra training seeds), what tests/test_benchmarks.py runs
QUICK_COUNTS = {"searches": 1, "random": 2, "noise_seeds": 1}
QUICK_SEARCH = ["--epochs", "2", "--images", "8", "--size", "32x64", "--channels", "8", "--layers", "3"]
QUICK_TRAIN = ["--epochs", "1", "--train-images", "8", "--val-images", "4", "--size", "32x64"]


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--searches", type=int, help="S: search seeds 0..S-1 (default 3)")
    p.add_argument("--random", type=int, help="R: random architectures (default 6)")
    p.add_argument("--random-seed", type=int, default=1000)
    p.add_argument("--noise-seeds", type=int, help="training seeds of the first searched architecture (default 3)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-lraspp", action="store_true")
    p.add_argument("--search-args", default="",
                   help="extra flags of every search, e.g. --search-args=--path-norm (with '=' when they start with -)")
    p.add_argument("--train-args", default="", help="extra flags of every training run, as --search-args")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny searches and trainings, {QUICK_COUNTS} unless given: checks the pipeline only")
    p.add_argument("--train-lraspp", nargs=3, metavar=("OUT", "SEED", "ARCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    full = {"searches": 3, "random": 6, "noise_seeds": 3}
    for name, default in full.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK_COUNTS[name] if args.quick else default)
    args.search_args = (QUICK_SEARCH if args.quick else []) + args.search_args.split()
    args.train_args_list = (QUICK_TRAIN if args.quick else []) + args.train_args.split()
    return args


def _search_jobs(args, out: str, logs: str) -> tuple[list, list[str], list[str]]:
    """The searches and the random baseline still to run; the search
    directories and the random architecture files."""
    jobs = []
    searches = [os.path.join(out, f"search-{s}") for s in range(args.searches)]
    for s, d in enumerate(searches):
        if not os.path.exists(os.path.join(d, "architecture.json")):
            extra = ["--resume", "auto"] if os.path.exists(d) else []   # an interrupted search: continue it
            jobs.append((f"search seed {s}", ["-m", "rspnet.search", "--seed", str(s), "--out", d, "--no-progress",
                                              *extra, *args.search_args], os.path.join(logs, f"search-{s}.log")))
    random_dir = os.path.join(out, "random")
    randoms = [os.path.join(random_dir, f"random-{i:03d}.json") for i in range(args.random)]
    if args.random and not all(os.path.exists(r) for r in randoms):
        jobs.append(("random baseline", ["-m", "rspnet.search", "--random", str(args.random), "--seed",
                                         str(args.random_seed), "--out", random_dir, *args.search_args],
                     os.path.join(logs, "random.log")))
    return jobs, searches, randoms


def _train_jobs(args, out: str, logs: str, searches: list[str], randoms: list[str]) -> tuple[list, list]:
    """Every architecture trained with the same recipe: the (name, kind,
    architecture, seed) runs and the trainings still to run."""
    runs = [(f"searched-{s}", "searched", os.path.join(d, "architecture.json"), 0) for s, d in enumerate(searches)]
    runs += [(f"random-{i}", "random", r, 0) for i, r in enumerate(randoms)]
    if searches:
        runs += [(f"searched-0-seed{k}", "noise", os.path.join(searches[0], "architecture.json"), k)
                 for k in range(1, args.noise_seeds)]
    if not args.no_lraspp:
        runs.append(("lraspp", "lraspp", os.path.join(searches[0], "architecture.json") if searches else randoms[0], 0))
    jobs = []
    for name, kind, arch, seed in runs:
        d = os.path.join(out, "train", name)
        if _trained(d):
            continue
        if os.path.exists(d):
            import shutil
            shutil.rmtree(d)   # an unfinished run: train it again from the start
        if kind == "lraspp":
            cmd = [os.path.abspath(__file__), "--train-lraspp", d, str(seed), arch,
                   *(["--quick"] if args.quick else []), f"--train-args={' '.join(args.train_args.split())}"]
        else:
            cmd = ["-m", "rspnet.train", "--arch", arch, "--out", d, "--seed", str(seed), "--no-progress",
                   *args.train_args_list]
        jobs.append((f"train {name}", cmd, os.path.join(logs, f"train-{name}.log")))
    return runs, jobs


def _measure(runs: list, out: str, latency: dict) -> list[dict]:
    """One row per run: its final mIoU and its network's costs."""
    from rspnet.architecture import Architecture, format_cell
    from rspnet.models import RSPNet
    rows, measured = [], {}
    for name, kind, arch, seed in runs:
        metrics = _trained(os.path.join(out, "train", name))
        size = tuple(metrics["config"]["size"])
        key = "lraspp" if kind == "lraspp" else Architecture.load(arch).fingerprint()
        if key not in measured:   # one cost measurement per network (the noise runs share one)
            measured[key] = costs(lraspp_model() if kind == "lraspp" else RSPNet(arch, 19), size, **latency)
        describe = "torchvision, from scratch" if kind == "lraspp" else format_cell(Architecture.load(arch).cell)
        row = {"name": name, "kind": kind, "architecture": arch, "train_seed": seed,
               "miou": metrics["final_val"]["miou"], "best_miou": metrics["best_val_miou"],
               "train_seconds": metrics["train_seconds"], **measured[key], "describe": describe}
        rows.append(row)
        print(f"{name:>20}  {kind:>8}  mIoU {100 * row['miou']:6.2f}%  {row['params'] / 1e6:.3f} M  "
              f"{row['flops'] / 1e9:.3f} GFLOPs  {row['latency_ms']:.0f} ms  {row['train_seconds']:.0f} s", flush=True)
    return rows


def main(argv=None) -> int:
    args = _parse(argv)
    if args.train_lraspp:
        out, seed, arch = args.train_lraspp
        return train_lraspp(out, int(seed), args.train_args_list, arch)

    out = os.path.abspath(args.out)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    started = time.perf_counter()
    jobs, searches, randoms = _search_jobs(args, out, logs)   # 1. searches and the random baseline
    _run_all(jobs, args.jobs)
    runs, jobs = _train_jobs(args, out, logs, searches, randoms)   # 2. every architecture trained alike
    _run_all(jobs, args.jobs)

    import torch   # 3. costs, table, plot, summary
    latency = QUICK_LATENCY if args.quick else {}
    rows = _measure(runs, out, latency)
    summary = summarize(rows, [os.path.join(d, "architecture.json") for d in searches])
    machine = (f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.jobs} runs at a time, one thread "
               f"each; benchmark wall time {time.perf_counter() - started:.0f} s")
    command = "python benchmarks/search_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(rows, summary, out, command, machine, latency.get("latency_size", LATENCY_SIZE))
    plot(rows, os.path.join(out, "quality.png"))
    print(text)
    print(f"written: {os.path.join(out, 'quality.md')}, quality.json, quality.png")
    return 0

if __name__ == "__main__":
    sys.exit(main())
