"""Does the search select better than chance? The search-quality benchmark.

    python benchmarks/search_quality.py --out runs/quality            # synthetic: S=3, R=6, noise floor, LRASPP
    python benchmarks/search_quality.py --out runs/quality --quick    # a smoke run of the pipeline
    python benchmarks/search_quality.py --data camvid --data-root CamVid --out runs/quality-camvid

It runs S searches (``python -m rspnet.search --seed s``, default settings)
and draws R architectures uniformly from the same space (``python -m
rspnet.search --random R``), trains every one with the same default recipe
(``python -m rspnet.train``), trains the first searched architecture with
``--noise-seeds`` training seeds to show how much the training seed alone moves
the score, and trains torchvision's LRASPP-MobileNetV3-Large from scratch
through the same trainer as the hand-designed reference (needs torchvision:
``pip install -e .[bench]``). ``--jobs`` processes run at a time (one thread
each). Finished runs are reused, so an interrupted benchmark continues.

On the synthetic scenes (a smoke test of the method) the score of a run is
its final validation mIoU (the recipe's last epoch, not the best one).

``--data camvid`` is the benchmark on real street scenes: the searches run
the ``camvid`` search preset on CamVid's train split only (architecture split
B carved out of train), every network is trained with the ``camvid-cpu``
training preset on train, its best epoch chosen on val (``best.pt``), and the
score is its mIoU on the **test** split, at the labels' resolution, with the
per-class IoU (the same computation as ``python -m rspnet.evaluate --split
test --size 192x256``). It adds LRASPP under ``--lraspp-seeds`` training
seeds and, with ``--transfer`` (default on), the transfer question: the
architecture the same search finds on the synthetic scenes, trained alike on
CamVid. ``--budgeted-random R`` adds R random architectures drawn only within
the searches' FLOPs / latency budgets (kind ``budgeted``, ``python -m
rspnet.search --random R --within-budgets``), and the searched mean against
theirs: with a budget the random baseline of the whole space is the weaker
test, since in a short recipe cheaper networks train further. Parts may run separately: ``--stage searches`` runs the searches and
the random draws only, ``--stage train`` also trains (``--only KIND,...``
restricts which: searched, random, noise, lraspp, transfer), ``--stage
report`` (default ``all``) scores what is finished. It writes ``quality.md`` (table and summary), ``quality.json``
and ``quality.png`` (mIoU against parameters, searched / random / LRASPP) into
``--out``: per architecture its mIoU, parameters, FLOPs at the training size
and one-thread CPU latency at 512x1024 (CamVid: 384x480, CamVid's frames padded
to 32); in the summary the searched and random
means ± std, their difference with its standard error, the training-seed std,
the genotype overlap between search seeds and the skip connections per cell.
On CamVid also every network in its inference form (BatchNorms folded), timed
against LRASPP's folded form in interleaved rounds
(``benchmarks/latency_vs_lraspp.py``), a plot panel of test mIoU against that
latency, and the pass criteria: the searched architectures against random
(>= 2 points and > 2 standard errors, each above the random median), and
the searched architecture trained under several seeds against LRASPP (test
mIoU, at most a quarter of its parameters, no more FLOPs or folded latency,
test IoU above 0 on pole, sign, pedestrian and bicyclist, mean class accuracy).
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

    trainer_module.Trainer.build_model = lambda self: lraspp_model(self.classes.num_classes)
    return main(["--arch", arch, "--out", out, "--seed", str(seed), "--no-progress", *train_args])


def lraspp_model(num_classes: int = 19):
    """torchvision's LRASPP-MobileNetV3-Large for ``num_classes``, no pretrained
    weights, returning the class scores as a tensor (the reference of
    ``benchmarks/latency_vs_lraspp.py`` too)."""
    from rspnet.models.reference import lraspp_mobilenet_v3

    return lraspp_mobilenet_v3(num_classes)


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


def folded_latency(archs: dict[str, str], classes: int, size, quick: bool = False) -> dict[str, dict]:
    """The networks of ``archs`` (name -> architecture file) and LRASPP, each in
    its inference form (BatchNorms folded; rspnet's whole ``inference_form``),
    timed at ``size`` on one CPU thread in interleaved rounds
    (``benchmarks/latency_vs_lraspp.py``: every round runs each network once,
    so a drifting load falls on all alike). By name (``"lraspp"`` too): the
    folded median ms and, for an RSPNet, the median over rounds of its time
    divided by LRASPP's in the same round."""
    import types

    import torch

    import latency_vs_lraspp as lvl   # a sibling: benchmarks/ is on sys.path when this script runs
    files = sorted(set(archs.values()))
    settings = dict(lvl.QUICK if quick else {"warmup": 3, "iters": 7, "rounds": 15})
    settings["size"] = tuple(size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        networks = lvl.compare(files, types.SimpleNamespace(classes=classes, device="cpu", dtype="fp32",
                                                            memory_format="auto", **settings))
    finally:
        torch.set_num_threads(threads)
    ref = networks[lvl.REFERENCE_NAME]["interleaved"]
    found = {"lraspp": {"folded_ms": ref["median_ms"], "rounds": settings["rounds"]}}
    for name, arch in archs.items():
        inter = networks[arch]["interleaved"]
        found[name] = {"folded_ms": inter["median_ms"], "vs_lraspp": inter["median_ratio"],
                       "faster_rounds": inter["faster_rounds"], "rounds": settings["rounds"]}
    return found


# ------------------------------------------------------------ test scores
def test_scores(model, root: str, size, images: int | None = None) -> dict:
    """``model``'s single-scale scores on CamVid's test split: each image fed
    at ``size`` (the training size) through the one inference path
    (``rspnet.engine.scoring.class_probabilities``, what ``python -m
    rspnet.evaluate --split test --size HxW`` runs), scored at the labels' own
    resolution; ``summarize``'s dict (miou, mean class accuracy, per class)."""
    import torch

    from rspnet import data
    from rspnet.engine.scoring import class_probabilities
    from rspnet.metrics import ConfusionMatrix, summarize as summarize_confusion

    dataset = data.get_dataset("camvid", "test", root=root, size=None, length=images)
    confusion = ConfusionMatrix(data.CAMVID.num_classes, data.IGNORE_INDEX)
    model = model.eval()
    with torch.inference_mode():
        for images_, labels in torch.utils.data.DataLoader(dataset, batch_size=4):
            probs = class_probabilities(model, images_, tuple(labels.shape[-2:]), size=tuple(size))
            confusion.update(probs.argmax(1), labels)
    return summarize_confusion(confusion.matrix, data.CAMVID.names)


def _cached_test_scores(kind: str, arch: str, run_dir: str, num_classes: int, args, size) -> dict:
    """``test_scores`` of a run's ``best.pt``, kept beside it in
    ``test_scores.json`` (the benchmark's own file) for as long as that
    checkpoint and the test set asked for are the same: a report run again,
    or another benchmark directory linking the run, does not score it again."""
    best = os.stat(os.path.join(run_dir, "best.pt"))
    key = {"best_pt": [best.st_size, best.st_mtime_ns], "data_root": args.data_root,
           "images": args.test_images, "size": list(size)}
    path = os.path.join(run_dir, "test_scores.json")
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return cached["scores"]
    scores = test_scores(_best_model(kind, arch, run_dir, num_classes), args.data_root, size, args.test_images)
    with open(path, "w") as f:
        json.dump({"key": key, "scores": scores}, f)
    return scores


def _best_model(kind: str, arch: str, run_dir: str, num_classes: int):
    """The network of a training run with its best-on-val weights (``best.pt``)."""
    import torch

    from rspnet.models import RSPNet
    model = lraspp_model(num_classes) if kind == "lraspp" else RSPNet(arch, num_classes)
    state = torch.load(os.path.join(run_dir, "best.pt"), map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"], strict=True)
    return model


# -------------------------------------------------------------- summary
def _overlap(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _std(xs):
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def summarize(rows: list[dict], searches: list[str]) -> dict:
    from rspnet.architecture import Architecture

    def scores(kind):
        return [r["miou"] for r in rows if r["kind"] == kind]
    searched, random_, budgeted = scores("searched"), scores("random"), scores("budgeted")
    # the training-seed noise: the first searched architecture under every training seed
    noise = [r["miou"] for r in rows if r["kind"] == "noise" or r["name"] == "searched-0"]
    lraspp = scores("lraspp")
    diff = statistics.mean(searched) - statistics.mean(random_) if searched and random_ else float("nan")
    se = math.sqrt(_std(searched) ** 2 / len(searched) + _std(random_) ** 2 / len(random_)) \
        if len(searched) > 1 and len(random_) > 1 else float("nan")
    archs = [Architecture.load(p) for p in searches if os.path.exists(p)]
    cells = [set(a.cell.normal) for a in archs]
    paths = [{(n.node, s) for n in a.nodes or () for s, _ in n.paths} for a in archs]
    median_random = statistics.median(random_) if random_ else float("nan")
    budgeted_diff = statistics.mean(searched) - statistics.mean(budgeted) if searched and budgeted else None
    budgeted_se = math.sqrt(_std(searched) ** 2 / len(searched) + _std(budgeted) ** 2 / len(budgeted)) \
        if len(searched) > 1 and len(budgeted) > 1 else None
    return {
        "budgeted_mean": statistics.mean(budgeted) if budgeted else None, "budgeted_std": _std(budgeted),
        "budgeted_runs": len(budgeted), "difference_budgeted": budgeted_diff, "difference_budgeted_se": budgeted_se,
        "budgeted_median": statistics.median(budgeted) if budgeted else None,
        "searched_mean": statistics.mean(searched) if searched else None, "searched_std": _std(searched),
        "random_mean": statistics.mean(random_) if random_ else None, "random_std": _std(random_),
        "random_median": median_random,
        "difference": diff, "difference_se": se,
        "training_seed_std": _std(noise), "searched_0_seed_mean": statistics.mean(noise) if noise else None,
        "training_seeds": len(noise),
        "lraspp_mean": statistics.mean(lraspp) if lraspp else None, "lraspp_std": _std(lraspp),
        "lraspp_seeds": len(lraspp),
        "transfer": [r["miou"] for r in rows if r["kind"] == "transfer"],
        "searched_beating_random_median": sum(s > median_random for s in searched),
        "cell_overlap": statistics.mean([_overlap(a, b) for a, b in itertools.combinations(cells, 2)])
        if len(cells) > 1 else None,
        "path_overlap": statistics.mean([_overlap(a, b) for a, b in itertools.combinations(paths, 2)])
        if len(paths) > 1 else None,
        "skip_connections_per_cell": [sum(op == "skip_connect" for op, _, _ in a.cell.normal) for a in archs],
    }


SMALL_CLASSES = ("Pole", "SignSymbol", "Pedestrian", "Bicyclist")   # CamVid's hardest, where rspnet scored 0


def done_when(rows: list[dict], summary: dict) -> list[tuple[str, str, bool]]:
    """The CamVid benchmark's pass criteria, each (what, measured, passed):
    the search against random (>= 2 points and > 2 standard errors, every
    searched architecture above the random median), and the same two against
    the random draws within the searches' budgets where there are any; the searched
    architecture trained under several seeds (``searched-0``, its mean over
    them) against LRASPP's mean — test mIoU at least LRASPP's with at most a
    quarter of its parameters, no more FLOPs, no more folded one-thread
    latency (interleaved); its test IoU above 0 on each of ``SMALL_CLASSES``
    under every training seed, and its mean class accuracy (mean over the
    seeds) at least LRASPP's."""
    s = summary
    checks = []
    searched = [r for r in rows if r["kind"] == "searched"]
    checks += _selection_checks("random", "the random median", s["difference"], s["difference_se"],
                                s["random_median"], searched)
    if s.get("budgeted_runs"):
        # the same two against random draws within the searches' budgets: does the search select beyond
        # what the budget alone does?
        checks += _selection_checks("random within the budgets", "the within-budget random median",
                                    s["difference_budgeted"], s["difference_budgeted_se"], s["budgeted_median"],
                                    searched)
    seeds = [r for r in rows if r["kind"] == "noise" or r["name"] == "searched-0"]
    lraspp = [r for r in rows if r["kind"] == "lraspp"]
    if not seeds or not lraspp:
        return checks
    first, ref = seeds[0], lraspp[0]
    mean = statistics.mean(r["miou"] for r in seeds)
    ref_mean = statistics.mean(r["miou"] for r in lraspp)
    checks.append((f"searched-0 ({len(seeds)} seeds) test mIoU ≥ LRASPP's ({len(lraspp)} seeds)",
                   f"{_pct(mean)} % vs {_pct(ref_mean)} %", mean >= ref_mean))
    checks.append(("parameters ≤ ¼ LRASPP's", f"{first['params'] / ref['params']:.3f}×",
                   first["params"] <= ref["params"] / 4))
    checks.append(("FLOPs ≤ LRASPP's", f"{first['flops'] / ref['flops']:.3f}×", first["flops"] <= ref["flops"]))
    if "vs_lraspp" in first:
        checks.append(("folded 1-thread latency ≤ LRASPP's (interleaved)",
                       f"{first['vs_lraspp']:.3f}× ({first['folded_ms']:.0f} vs {ref['folded_ms']:.0f} ms)",
                       first["vs_lraspp"] <= 1))
    if "per_class" in first:
        # under every training seed: a class one seed hits with a handful of pixels is not learnt
        small = {c: min(r["per_class"][c]["iou"] or 0.0 for r in seeds)
                 for c in SMALL_CLASSES if c in first["per_class"]}
        checks.append((f"test IoU > 0 on {', '.join(small)}, every seed",
                       "lowest over the seeds: " + ", ".join(f"{c} {100 * v:.3f}" for c, v in small.items()),
                       all(v > 0 for v in small.values())))
        mca = statistics.mean(r["mean_class_accuracy"] for r in seeds)
        ref_mca = statistics.mean(r["mean_class_accuracy"] for r in lraspp)
        checks.append(("mean class accuracy ≥ LRASPP's", f"{_pct(mca)} % vs {_pct(ref_mca)} %", mca >= ref_mca))
    return checks


def _selection_checks(against: str, median_name: str, diff, se, median, searched: list[dict]) -> list:
    """The two selection criteria against one set of random draws: the mean
    difference at least 2 points and more than twice its standard error, and
    every searched architecture above the draws' median."""
    above = sum(r["miou"] > median for r in searched)
    return [(f"searched − {against} ≥ 2 points and > 2 SE", f"{_pct(diff)} points, SE {_pct(se)}",
             bool(diff is not None and se is not None and diff >= 0.02 and diff > 2 * se)),
            (f"every searched architecture above {median_name}", f"{above} of {len(searched)} (median {_pct(median)} %)",
             bool(searched) and above == len(searched))]


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def per_class_table(rows: list[dict]) -> list[str]:
    """One line per run: its test IoU per class and its mean class accuracy."""
    names = list(rows[0]["per_class"])
    lines = ["| run | kind | " + " | ".join(names) + " | mIoU | mean class acc. |",
             "|---|---|" + "---|" * (len(names) + 2)]
    for r in rows:
        ious = [r["per_class"][n]["iou"] for n in names]
        lines.append(f"| {r['name']} | {r['kind']} | " + " | ".join(_pct(v) for v in ious)
                     + f" | {_pct(r['miou'])} | {_pct(r['mean_class_accuracy'])} |")
    return lines


def report(rows: list[dict], summary: dict, out: str, command: str, machine: str,
           latency_size=LATENCY_SIZE, metric: str = "val mIoU") -> str:
    lat = f"CPU latency {latency_size[0]}x{latency_size[1]}, 1 thread (ms)"
    test = metric.startswith("test")
    folded = any("folded_ms" in r for r in rows)
    lines = [f"Command: `{command}`", "", f"Machine: {machine}", "",
             f"| run | kind | {metric} % | {'best val mIoU % | ' if test else ''}params (M) | "
             f"GFLOPs (train size) | {lat} | {'folded ms (× LRASPP, interleaved) | ' if folded else ''}"
             f"train s | genotype / source |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if test else "") + ("---|" if folded else "")]
    for r in rows:
        best = f"{_pct(r['best_miou'])} | " if test else ""
        fold = ""
        if folded:
            fold = "— | " if "folded_ms" not in r else (
                f"{r['folded_ms']:.0f} ({r['vs_lraspp']:.2f}×) | " if "vs_lraspp" in r else f"{r['folded_ms']:.0f} | ")
        lines.append(f"| {r['name']} | {r['kind']} | {_pct(r['miou'])} | {best}{r['params'] / 1e6:.3f} | "
                     f"{r['flops'] / 1e9:.3f} | {r['latency_ms']:.0f} | {fold}{r['train_seconds']:.0f} | "
                     f"{r.get('describe', '')} |")
    s = summary
    lines += ["", f"- searched: {_pct(s['searched_mean'])} ± {_pct(s['searched_std'])} % (mean ± std)",
              f"- random: {_pct(s['random_mean'])} ± {_pct(s['random_std'])} % (median {_pct(s['random_median'])} %)",
              f"- searched − random: {_pct(s['difference'])} points, standard error {_pct(s['difference_se'])}",
              f"- training-seed std (searched-0, {s['training_seeds']} seeds): {_pct(s['training_seed_std'])} "
              f"points; its mean {_pct(s['searched_0_seed_mean'])} %",
              f"- LRASPP ({s['lraspp_seeds']} seeds): {_pct(s['lraspp_mean'])} ± {_pct(s['lraspp_std'])} %",
              f"- searched architectures above the random median: {s['searched_beating_random_median']}",
              f"- genotype overlap between search seeds (Jaccard): cell edges {s['cell_overlap']}, "
              f"kept paths {s['path_overlap']}",
              f"- skip connections per searched cell: {s['skip_connections_per_cell']}"]
    if s.get("budgeted_runs"):
        lines += [f"- random within the searches' budgets ({s['budgeted_runs']}): {_pct(s['budgeted_mean'])} ± "
                  f"{_pct(s['budgeted_std'])} %; searched − those: {_pct(s['difference_budgeted'])} points, "
                  f"standard error {_pct(s['difference_budgeted_se'])}"]
    if s["transfer"]:
        lines.append(f"- transfer (searched on the synthetic scenes, trained alike): "
                     f"{', '.join(_pct(v) for v in s['transfer'])} %")
    if rows and "per_class" in rows[0]:
        lines += ["", f"Per class ({metric.split()[0]} IoU %):", "", *per_class_table(rows)]
    if s.get("done_when"):
        lines += ["", "Pass criteria (CamVid test, this recipe):", "", "| criterion | measured | passed |",
                  "|---|---|---|", *(f"| {c['criterion']} | {c['measured']} | {'yes' if c['passed'] else 'no'} |"
                                     for c in s["done_when"])]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "quality.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "quality.json"), "w") as f:
        json.dump({"rows": rows, "summary": summary, "command": command, "machine": machine,
                   "metric": metric}, f, indent=1)
    return text


KIND_STYLES = (("random", dict(color="tab:gray", marker="o")),
               ("budgeted", dict(color="tab:olive", marker="D")),
               ("searched", dict(color="tab:blue", marker="*", s=120)),
               ("noise", dict(color="tab:cyan", marker="x")),
               ("transfer", dict(color="tab:green", marker="^")),
               ("lraspp", dict(color="tab:red", marker="s")))
KIND_LABELS = {"noise": "searched #0, other training seeds", "lraspp": "LRASPP-MobileNetV3-Large",
               "transfer": "searched on the synthetic scenes", "budgeted": "random within the search's budgets"}


def plot(rows: list[dict], path: str, metric: str = "val mIoU") -> None:
    """mIoU against parameters per kind; with per-class scores, a second
    panel: each kind's mean IoU per class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = bool(rows) and "per_class" in rows[0]
    folded = bool(rows) and all("folded_ms" in r for r in rows)
    scatters = [("params", 1e-6, "parameters (M)")]
    if folded:
        scatters.append(("folded_ms", 1, "folded latency, 1 CPU thread (ms)"))
    ratios = [1] * len(scatters) + ([1.6] if per_class else [])
    fig, axes = plt.subplots(1, len(ratios), figsize=(5.5 * len(scatters) + (7 if per_class else 0), 4),
                             gridspec_kw={"width_ratios": ratios}, squeeze=False)
    axes = axes[0]
    for ax, (key, scale, label) in zip(axes, scatters):
        for kind, style in KIND_STYLES:
            pts = [(r[key] * scale, 100 * r["miou"]) for r in rows if r["kind"] == kind]
            if pts:
                ax.scatter(*zip(*pts), label=KIND_LABELS.get(kind, kind), **style)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if per_class:
        bars = axes[-1]
        names = list(rows[0]["per_class"])
        kinds = [k for k, _ in KIND_STYLES if any(r["kind"] == k for r in rows)]
        width = 0.8 / len(kinds)
        for i, kind in enumerate(kinds):
            mine = [r for r in rows if r["kind"] == kind]
            means = [100 * statistics.mean(r["per_class"][n]["iou"] or 0.0 for r in mine) for n in names]
            bars.bar([j + i * width for j in range(len(names))], means, width,
                     color=dict(KIND_STYLES)[kind]["color"], label=KIND_LABELS.get(kind, kind))
        bars.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=45, ha="right",
                        fontsize=8)
        bars.set_ylabel(f"{metric.split()[0]} IoU (%), mean over runs")
        bars.grid(alpha=0.3, axis="y")
        bars.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main
# --quick: a smoke run of the whole pipeline on tiny settings (one search, two
# random architectures, no extra training seeds), what tests/test_benchmarks.py runs
QUICK_COUNTS = {"searches": 1, "random": 2, "noise_seeds": 1, "lraspp_seeds": 1}
QUICK_SEARCH = ["--epochs", "2", "--images", "8", "--size", "32x64", "--channels", "8", "--layers", "3"]
QUICK_TRAIN = ["--epochs", "1", "--train-images", "8", "--val-images", "4", "--size", "32x64"]
CAMVID_SEARCH = ["--config", "camvid"]        # rspnet/presets/search/camvid.json
CAMVID_TRAIN = ["--config", "camvid-cpu"]     # rspnet/presets/train/camvid-cpu.json
QUICK_CAMVID_TRAIN = ["--crop", "32x64"]       # the preset's crops do not fit QUICK_TRAIN's size
# CamVid's 360x480 as the one inference path runs it: padded to multiples of 32
# (rspnet.engine.scoring), which the trellis needs; LRASPP is timed at the same size
CAMVID_LATENCY_SIZE = (384, 480)
KINDS = ("searched", "random", "budgeted", "noise", "lraspp", "transfer")
STAGES = ("searches", "train", "report", "all")


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="default runs/quality (synthetic), runs/quality-camvid (camvid)")
    p.add_argument("--data", choices=("synthetic", "camvid"), default="synthetic")
    p.add_argument("--data-root", help="--data camvid: the SegNet tutorial's CamVid/ folder")
    p.add_argument("--test-images", type=int, help=argparse.SUPPRESS)   # the smoke test's small trees
    p.add_argument("--searches", type=int, help="S: search seeds 0..S-1 (default 3)")
    p.add_argument("--random", type=int, help="R: random architectures (default 6)")
    p.add_argument("--random-seed", type=int, default=1000)
    p.add_argument("--budgeted-random", type=int, default=0, metavar="R",
                   help="also R random architectures drawn within the searches' FLOPs / latency budgets "
                        "(python -m rspnet.search --random R --within-budgets; kind 'budgeted'): does the "
                        "search select within its budget, or does the budget do the work? (default 0)")
    p.add_argument("--noise-seeds", type=int, help="training seeds of the first searched architecture (default 3)")
    p.add_argument("--lraspp-seeds", type=int, help="training seeds of LRASPP (default 3 on camvid, else 1)")
    p.add_argument("--transfer", action=argparse.BooleanOptionalAction, default=None,
                   help="camvid: also search the synthetic scenes with the same settings and train that "
                        "architecture on CamVid alike (default on for camvid)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-lraspp", action="store_true")
    p.add_argument("--stage", choices=STAGES, default="all",
                   help="searches: only the searches and the random draws; train: also the trainings; "
                        "report: only score and report what is finished; all (default)")
    p.add_argument("--only", default=",".join(KINDS),
                   help=f"--stage train: the kinds of trainings to run, comma-separated ({','.join(KINDS)})")
    p.add_argument("--search-args", default="",
                   help="extra flags of every search, e.g. --search-args=--path-norm (with '=' when they start with -)")
    p.add_argument("--train-args", default="", help="extra flags of every training run, as --search-args")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny searches and trainings, {QUICK_COUNTS} unless given: checks the pipeline only")
    p.add_argument("--train-lraspp", nargs=3, metavar=("OUT", "SEED", "ARCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    camvid = args.data == "camvid"
    if camvid and not args.data_root and not args.train_lraspp:
        p.error("--data camvid needs --data-root (the SegNet tutorial's CamVid/ folder)")
    if args.data_root:
        args.data_root = os.path.abspath(args.data_root)
    args.only = set(args.only.split(","))
    if not args.only <= set(KINDS):
        p.error(f"--only: kinds among {','.join(KINDS)}, got {','.join(sorted(args.only))}")
    full = {"searches": 3, "random": 6, "noise_seeds": 3, "lraspp_seeds": 3 if camvid else 1}
    for name, default in full.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK_COUNTS[name] if args.quick else default)
    if args.transfer is None:
        args.transfer = camvid
    if args.out is None:
        args.out = "runs/quality-camvid" if camvid else "runs/quality"
    data_flags = ["--data", "camvid", "--data-root", args.data_root] if camvid else []
    # the space and schedule flags of every search (the transfer search: the same, on the synthetic scenes)
    args.space_args = (CAMVID_SEARCH if camvid else []) + (QUICK_SEARCH if args.quick else []) + args.search_args.split()
    args.search_args = data_flags + args.space_args
    args.train_args_list = (data_flags + (CAMVID_TRAIN if camvid else []) + (QUICK_TRAIN if args.quick else [])
                            + (QUICK_CAMVID_TRAIN if args.quick and camvid else []) + args.train_args.split())
    if args.train_lraspp:   # the flags arrive whole from the parent
        args.train_args_list = args.train_args.split()
    return args


def _search_jobs(args, out: str, logs: str) -> tuple[list, list[str], list[str], list[str]]:
    """The searches and the random baseline still to run; the search
    directories, the random architecture files and the transfer searches."""
    jobs = []

    def search(name, d, seed, flags):
        if not os.path.exists(os.path.join(d, "architecture.json")):
            extra = ["--resume", "auto"] if os.path.exists(d) else []   # an interrupted search: continue it
            jobs.append((name, ["-m", "rspnet.search", "--seed", str(seed), "--out", d, "--no-progress",
                                *extra, *flags], os.path.join(logs, f"{os.path.basename(d)}.log")))
    searches = [os.path.join(out, f"search-{s}") for s in range(args.searches)]
    for s, d in enumerate(searches):
        search(f"search seed {s}", d, s, args.search_args)
    transfers = [os.path.join(out, "search-synthetic-0")] if args.transfer else []
    for d in transfers:
        search("search seed 0 on the synthetic scenes", d, 0, [*args.space_args, "--data", "synthetic"])
    random_dir = os.path.join(out, "random")
    randoms = [os.path.join(random_dir, f"random-{i:03d}.json") for i in range(args.random)]
    if args.random and not all(os.path.exists(r) for r in randoms):
        jobs.append(("random baseline", ["-m", "rspnet.search", "--random", str(args.random), "--seed",
                                         str(args.random_seed), "--out", random_dir, *args.search_args],
                     os.path.join(logs, "random.log")))
    if args.budgeted_random:
        budget_dir = os.path.join(out, "random-budgeted")
        randoms += [os.path.join(budget_dir, f"random-{i:03d}.json") for i in range(args.budgeted_random)]
        if not all(os.path.exists(r) for r in randoms[args.random:]):
            jobs.append(("random baseline within the budgets",
                         ["-m", "rspnet.search", "--random", str(args.budgeted_random), "--within-budgets", "--seed",
                          str(args.random_seed), "--out", budget_dir, *args.search_args],
                         os.path.join(logs, "random-budgeted.log")))
    return jobs, searches, randoms, transfers


def _train_jobs(args, out: str, logs: str, searches: list[str], randoms: list[str],
                transfers: list[str]) -> tuple[list, list]:
    """Every architecture trained with the same recipe: the (name, kind,
    architecture, seed) runs and the trainings still to run."""
    runs = [(f"searched-{s}", "searched", os.path.join(d, "architecture.json"), 0) for s, d in enumerate(searches)]
    runs += [(f"random-{i}", "random", r, 0) for i, r in enumerate(randoms[:args.random])]
    runs += [(f"budgeted-{i}", "budgeted", r, 0) for i, r in enumerate(randoms[args.random:])]
    if searches:
        runs += [(f"searched-0-seed{k}", "noise", os.path.join(searches[0], "architecture.json"), k)
                 for k in range(1, args.noise_seeds)]
    runs += [(f"transfer-{i}", "transfer", os.path.join(d, "architecture.json"), 0) for i, d in enumerate(transfers)]
    if not args.no_lraspp:
        arch = os.path.join(searches[0], "architecture.json") if searches else randoms[0]
        runs += [("lraspp" if k == 0 else f"lraspp-seed{k}", "lraspp", arch, k) for k in range(args.lraspp_seeds)]
    jobs = []
    for name, kind, arch, seed in runs:
        d = os.path.join(out, "train", name)
        if _trained(d) or kind not in args.only:
            continue
        if os.path.exists(d):
            import shutil
            shutil.rmtree(d)   # an unfinished run: train it again from the start
        if kind == "lraspp":
            cmd = [os.path.abspath(__file__), "--train-lraspp", d, str(seed), arch,
                   f"--train-args={' '.join(args.train_args_list)}"]
        else:
            cmd = ["-m", "rspnet.train", "--arch", arch, "--out", d, "--seed", str(seed), "--no-progress",
                   *args.train_args_list]
        jobs.append((f"train {name}", cmd, os.path.join(logs, f"train-{name}.log")))
    return runs, jobs


def _measure(args, runs: list, out: str, latency: dict) -> list[dict]:
    """One row per finished run: its score (synthetic: final val mIoU; camvid:
    test mIoU of its best-on-val weights, per class) and its network's costs."""
    from rspnet.architecture import Architecture, format_cell
    from rspnet.models import RSPNet
    rows, measured = [], {}
    camvid = args.data == "camvid"
    for name, kind, arch, seed in runs:
        run_dir = os.path.join(out, "train", name)
        metrics = _trained(run_dir)
        if metrics is None:
            print(f"{name:>20}  not trained yet: left out", flush=True)
            continue
        size = tuple(metrics["config"]["size"])
        classes = len(metrics["final_val"]["per_class"])
        key = "lraspp" if kind == "lraspp" else Architecture.load(arch).fingerprint()
        if key not in measured:   # one cost measurement per network (the noise runs share one)
            measured[key] = costs(lraspp_model(classes) if kind == "lraspp" else RSPNet(arch, classes),
                                  size, **latency)
        describe = "torchvision, from scratch" if kind == "lraspp" else format_cell(Architecture.load(arch).cell)
        row = {"name": name, "kind": kind, "architecture": arch, "train_seed": seed,
               "miou": metrics["final_val"]["miou"], "best_miou": metrics["best_val_miou"],
               "best_epoch": metrics["best_epoch"],
               "train_seconds": metrics["train_seconds"], **measured[key], "describe": describe}
        if camvid:
            scores = _cached_test_scores(kind, arch, run_dir, classes, args, size)
            row.update(miou=scores["miou"], mean_class_accuracy=scores["mean_class_accuracy"],
                       per_class={n: {"iou": v["iou"], "accuracy": v["accuracy"]}
                                  for n, v in scores["per_class"].items()})
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
    jobs, searches, randoms, transfers = _search_jobs(args, out, logs)   # 1. searches and the random baseline
    if args.stage != "report":
        _run_all(jobs, args.jobs)
    runs, jobs = _train_jobs(args, out, logs, searches, randoms, transfers)   # 2. every architecture trained alike
    if args.stage in ("train", "all"):
        _run_all(jobs, args.jobs)
    if args.stage in ("searches", "train"):
        return 0

    import torch   # 3. costs, table, plot, summary
    torch.set_num_threads(min(args.jobs, os.cpu_count() or 1))
    latency = QUICK_LATENCY if args.quick else {}
    if args.data == "camvid" and not args.quick:
        latency = {"latency_size": CAMVID_LATENCY_SIZE}
    rows = _measure(args, runs, out, latency)
    if args.data == "camvid" and rows:   # the folded networks against LRASPP, interleaved in one run
        classes = len(rows[0]["per_class"])
        timed = folded_latency({r["name"]: r["architecture"] for r in rows if r["kind"] != "lraspp"}, classes,
                               QUICK_LATENCY["latency_size"] if args.quick else CAMVID_LATENCY_SIZE, args.quick)
        for r in rows:
            r.update(timed["lraspp" if r["kind"] == "lraspp" else r["name"]])
    summary = summarize(rows, [os.path.join(d, "architecture.json") for d in searches])
    if args.data == "camvid" and rows:
        summary["done_when"] = [{"criterion": c, "measured": m, "passed": ok} for c, m, ok in done_when(rows, summary)]
    machine = (f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.jobs} runs at a time, one thread "
               f"each; benchmark wall time {time.perf_counter() - started:.0f} s")
    command = "python benchmarks/search_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    metric = "test mIoU" if args.data == "camvid" else "val mIoU"
    text = report(rows, summary, out, command, machine, latency.get("latency_size", LATENCY_SIZE), metric)
    plot(rows, os.path.join(out, "quality.png"), metric)
    print(text)
    print(f"written: {os.path.join(out, 'quality.md')}, quality.json, quality.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
