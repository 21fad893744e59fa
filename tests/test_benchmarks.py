"""Benchmarks that cannot rot: every script of benchmarks/ runs in its quick
form, as a subprocess (outputs under tmp_path, nothing written into the
repository), and its rows and files are checked, not only its exit status.

GPU-only scripts (gpu_suite.py, gpu_fusion.py, device_check.sh) cannot measure
anything here: without CUDA the tests run their argument parsing and check the
clear "needs a CUDA device" exit, run the suite's reporting on given rows (a
failed benchmark must end the run with exit status 1 and its name, not as a row
of the table), and run device_check.sh with a stand-in interpreter to check that
a failed step is named and fails the script. With CUDA, the DARTS-cell workload
runs on the device (``gpu`` marker).
"""
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
HAS_CUDA = torch.cuda.is_available()

# in-process tests on one thread: tiny tensors, and the smoke runs share the cores
pytestmark = pytest.mark.usefixtures("one_thread")


def _env() -> dict:
    """The scripts run as a user runs them: no Triton interpreter (the CPU test
    run switches it on), no bytecode written into the repository, one thread
    (tiny shapes; other processes share the cores)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    return env


def _run(args: list[str], cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python args...`` (a script of benchmarks/ first) in ``cwd``; its output, for the assertion messages."""
    if args[0].endswith(".py"):
        args = [os.path.join(BENCH, args[0]), *args[1:]]
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    done.log = f"exit {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    return done


def _bench(name: str):
    """A module of benchmarks/, imported in this process (no bytecode written there)."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        return importlib.import_module(name)
    finally:
        sys.dont_write_bytecode = writes


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory):
    """A small RSPNet architecture file (the fixed cell of search_memory.py)."""
    from rspnet.architecture import Architecture
    path = tmp_path_factory.mktemp("arch") / "architecture.json"
    Architecture(cell=_bench("search_memory").CELL, channels=8, scales=4, head_channels=16).save(path)
    return str(path)


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory):
    """A tiny CamVid tree (SegNet layout, void 11) of synthetic scenes."""
    from rspnet import data
    root = tmp_path_factory.mktemp("camvid") / "CamVid"
    data.write_camvid_layout(root, {"train": 8, "val": 4, "test": 4}, size=(64, 96), seed=3, void=11)
    return str(root)


def _jobs(arch: str, camvid: str) -> dict:
    """The subprocess runs, longest first: job name -> (the test that reads
    it, the command's arguments, with @OUT@ for the job's own directory)."""
    jobs = {
        "search_quality_camvid": ("test_search_quality_camvid_quick",
                                  ["search_quality.py", "--quick", "--data", "camvid", "--data-root", camvid,
                                   "--budgeted-random", "1", "--out", "@OUT@/quality"]),
        "search_quality": ("test_search_quality_quick", ["search_quality.py", "--quick", "--out", "@OUT@/quality"]),
        "search_memory": ("test_search_memory_quick", ["search_memory.py", "--quick", "--json", "@OUT@/memory.json"]),
        "bench": ("test_cpu_micro_benchmarks_quick",
                  ["-m", "pytest", BENCH, "-q", "-p", "no:cacheprovider", "--rootdir", ROOT, "--quick",
                   "--benchmark-enable", "--benchmark-json=@OUT@/bench.json"]),
        "cell_workload": ("test_cell_workload_quick_rows_and_agreement",
                          ["cell_workload.py", "--quick", "--device", "cpu", "--json", "@OUT@/cell.json"]),
        "cost_vs_lraspp": ("test_cost_vs_lraspp_quick", ["cost_vs_lraspp.py", "--quick", "@OUT@/costs.json", arch]),
        "latency_vs_lraspp": ("test_latency_vs_lraspp_quick",
                              ["latency_vs_lraspp.py", "--quick", "--json", "@OUT@/latency.json", arch]),
    }
    if not HAS_CUDA:
        jobs["gpu_suite.py"] = ("test_gpu_only_scripts_exit_clearly_without_cuda",
                                ["gpu_suite.py", "--quick", "--out", "@OUT@/out"])
        jobs["gpu_fusion.py"] = ("test_gpu_only_scripts_exit_clearly_without_cuda",
                                 ["gpu_fusion.py", "--quick", "--json", "@OUT@/out"])
    return jobs


@pytest.fixture(scope="module", autouse=True)
def smoke(request, tmp_path_factory, arch_file, camvid_root):
    """``smoke(job)``: the finished run of a job and its directory. The runs of
    every selected test start with this module's first test, two at a time
    (each script runs one thread: one at a time would leave a core idle), while
    the in-process tests run."""
    wanted = {item.originalname for item in request.session.items}
    base = tmp_path_factory.mktemp("smoke")
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {}
    for name, (test, args) in _jobs(arch_file, camvid_root).items():
        if test in wanted:
            out = base / name.replace(".", "_")
            out.mkdir()
            runs[name] = (pool.submit(_run, [a.replace("@OUT@", str(out)) for a in args], out), out)
    yield lambda name: (runs[name][0].result(), runs[name][1])
    pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------ the DARTS cell
def test_cell_workload_quick_rows_and_agreement(smoke):
    cw = _bench("cell_workload")
    done, out = smoke("cell_workload")
    assert done.returncode == 0, done.log
    result = json.loads((out / "cell.json").read_text())
    variants = ("eager", "checkpoint", "rspnet_store", "rspnet_recompute")
    for name in variants:
        assert result[name]["ms"] > 0, name
        assert f"cell {name} " in done.stdout
    assert result["workload"]["skip_bn"] == cw.SKIP_BN   # built as the search builds it
    # the peer and rspnet's cell compute one function: output, α and input gradients
    assert set(result["rel_diff"]) == set(variants)
    assert all(d <= cw.TOLERANCE for d in result["rel_diff"].values()), result["rel_diff"]
    assert all(d <= cw.TOLERANCE for d in result["alpha_grad_rel_diff"].values())


@pytest.mark.parametrize("skip_bn", [True, False])
def test_cell_workload_variants_load_one_state_and_agree(skip_bn):
    """Either skip-BN setting: every variant loads the peer's state dict
    strictly and computes the peer's function."""
    cw = _bench("cell_workload")
    cells = cw._cells(4, skip_bn)   # load_state_dict is strict: a missing BatchNorm raises
    diffs = cw.agreement(cells, *cw._inputs(1, 4, 8, 8, "cpu"))
    assert all(d <= cw.TOLERANCE for d in diffs.values()), diffs


def test_cell_workload_check_catches_a_different_function():
    """The check the benchmark relies on: a peer without the skip BatchNorm
    beside rspnet's cell with it is reported, not timed."""
    from rspnet.nn import MixedOp
    cw = _bench("cell_workload")
    torch.manual_seed(0)
    peer = cw.PeerSearchCell(4)
    rspnet = cw.PeerSearchCell(4, edge=lambda c: MixedOp(c, "store", skip_bn=True))
    missing = rspnet.load_state_dict(peer.state_dict(), strict=False).missing_keys
    assert missing and all(".ops.3.1.running_" in k for k in missing)
    diffs = cw.agreement({"eager": peer, "rspnet_store": rspnet}, *cw._inputs(1, 4, 8, 8, "cpu"))
    assert diffs["rspnet_store"] > cw.TOLERANCE


@pytest.mark.gpu
def test_cell_workload_on_cuda():
    cw = _bench("cell_workload")
    result = cw.run("cuda", quick=True)
    for name in ("eager", "checkpoint", "rspnet_store", "rspnet_recompute"):
        assert result[name]["ms"] > 0 and result[name]["peak_mib"] is not None
    assert all(d <= cw.TOLERANCE for d in result["rel_diff"].values())


# ------------------------------------------------------- the CPU micro-benchmarks
@pytest.mark.slow   # torch.compile of three peers: 10-40 s on 2 shared cores
def test_cpu_micro_benchmarks_quick(smoke):
    """``make bench``'s collection (the directory), in the quick form, with the
    timings written: one row per op and method, each with its peak memory."""
    done, out = smoke("bench")
    assert done.returncode == 0, done.log
    rows = {b["name"]: b for b in json.loads((out / "bench.json").read_text())["benchmarks"]}
    for test in ("test_mixed_sum_fwd_bwd", "test_path_fusion_fwd_bwd", "test_channel_merge_fwd_bwd"):
        for method in ("rspnet_cpp", "eager", "torch_compile"):
            row = rows[f"{test}[{method}]"]
            assert row["stats"]["rounds"] >= 1 and row["stats"]["median"] > 0
            assert isinstance(row["extra_info"]["peak_extra_mib"], float)


# ------------------------------------------------------------ search benchmarks
@pytest.mark.slow   # four processes (each imports torch): 15-40 s on 2 shared cores
def test_search_memory_quick(smoke):
    sm = _bench("search_memory")
    done, out = smoke("search_memory")
    assert done.returncode == 0, done.log
    result = json.loads((out / "memory.json").read_text())
    assert result["config"]["batch_size"] == sm.QUICK["batch_size"]
    assert result["config"]["size"] == list(sm.QUICK["size"])
    assert set(result["results"]) == set(sm.MODES)
    assert all(r["peak_bytes"] > 0 and r["tensor_peak_bytes"] > 0 for r in result["results"].values())
    assert result["max_relative_grad_difference"] <= sm.GRADIENT_TOLERANCE
    assert "recompute / store" in done.stdout


def test_search_memory_stage2_step_and_gradients():
    """Stage 2's own code (the trellis supernet around the fixed cell, β's
    step), both modes in this process: one step runs and the gradients agree.
    The subprocess run above covers the rest (workers, measurement) on stage 1."""
    sm = _bench("search_memory")
    grads = {}
    for mode in ("store", "recompute"):
        torch.manual_seed(0)
        step, gradients = sm._search_step(sm._parse(["--quick", "--stage", "2", "--mode", mode]), torch.device("cpu"))
        grads[mode] = gradients()
        step()
    assert grads["store"] and set(grads["store"]) == set(grads["recompute"])
    assert sm.check_gradients(grads) <= sm.GRADIENT_TOLERANCE


@pytest.mark.slow   # a search, the random baseline and four trainings as processes: 20-45 s on 2 shared cores
def test_search_quality_quick(smoke):
    sq = _bench("search_quality")
    done, out = smoke("search_quality")
    out = out / "quality"
    assert done.returncode == 0, done.log
    for name in ("quality.md", "quality.json", "quality.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "quality.json").read_text())
    kinds = [r["kind"] for r in data["rows"]]
    counts = sq.QUICK_COUNTS
    assert kinds.count("searched") == counts["searches"] and kinds.count("random") == counts["random"]
    assert kinds.count("noise") == counts["noise_seeds"] - 1 and kinds.count("lraspp") == 1
    for r in data["rows"]:
        assert 0 <= r["miou"] <= 1 and r["params"] > 0 and r["flops"] > 0 and r["latency_ms"] > 0, r
    assert data["summary"]["searched_mean"] is not None and data["summary"]["random_mean"] is not None
    h, w = sq.QUICK_LATENCY["latency_size"]
    assert f"CPU latency {h}x{w}" in (out / "quality.md").read_text()


@pytest.mark.slow   # two searches, the random baseline and five trainings as processes: 40-70 s on 2 cores
def test_search_quality_camvid_quick(smoke, camvid_root, tmp_path):
    """The real-data form: every kind of run (with the transfer search on the
    synthetic scenes), each scored on the test split per class, and that
    score is the one ``python -m rspnet.evaluate --split test`` reports."""
    sq = _bench("search_quality")
    done, out = smoke("search_quality_camvid")
    out = out / "quality"
    assert done.returncode == 0, done.log
    result = json.loads((out / "quality.json").read_text())
    assert result["metric"] == "test mIoU"
    kinds = sorted(r["kind"] for r in result["rows"])
    assert kinds == ["budgeted", "lraspp", "random", "random", "searched", "transfer"], kinds
    # the budgeted random draw: drawn within the search preset's FLOPs budget, summarised beside random
    budgeted = next(r for r in result["rows"] if r["kind"] == "budgeted")
    drawn = json.loads(Path(budgeted["architecture"]).read_text())
    assert Path(budgeted["architecture"]).parent.name == "random-budgeted" and "random" in drawn["search"]
    assert result["summary"]["budgeted_runs"] == 1
    assert result["summary"]["budgeted_mean"] == pytest.approx(budgeted["miou"])
    for r in result["rows"]:
        assert set(r["per_class"]) == set(_camvid_names()) and 0 <= r["miou"] <= 1, r
        ious = [v["iou"] for v in r["per_class"].values() if v["iou"] is not None]
        assert r["miou"] == pytest.approx(statistics.mean(ious)), r["name"]
    text = (out / "quality.md").read_text()
    assert "Per class (test IoU %)" in text and "Bicyclist" in text and "transfer" in text
    assert "random within the searches' budgets (1)" in text
    # the searches saw CamVid's train split only, the transfer search the synthetic scenes
    search = json.loads((out / "search-0" / "summary.json").read_text())["config"]
    assert search["data"] == "camvid" and search["head"] == "detail"
    transfer = json.loads((out / "search-synthetic-0" / "summary.json").read_text())["config"]
    assert transfer["data"] == "synthetic" and transfer["head"] == search["head"]
    # the benchmark's test score of a run is rspnet.evaluate's
    row = next(r for r in result["rows"] if r["kind"] == "searched")
    run_dir = out / "train" / row["name"]
    size = json.loads((run_dir / "metrics.json").read_text())["config"]["size"]
    report = tmp_path / "eval.json"
    ev = _run(["-m", "rspnet.evaluate", "--arch", row["architecture"], "--checkpoint", str(run_dir / "best.pt"),
               "--data", "camvid", "--data-root", camvid_root, "--split", "test", "--size", f"{size[0]}x{size[1]}",
               "--report", str(report), "--no-progress"], tmp_path)
    assert ev.returncode == 0, ev.log
    assert json.loads(report.read_text())["miou"] == pytest.approx(row["miou"], abs=1e-6)
    # the report again: every run's test score read back from beside its checkpoint, the same
    assert (run_dir / "test_scores.json").is_file()
    again = _run(["search_quality.py", "--quick", "--data", "camvid", "--data-root", camvid_root,
                  "--budgeted-random", "1", "--out", str(out), "--stage", "report"], tmp_path)
    assert again.returncode == 0, again.log
    rows = json.loads((out / "quality.json").read_text())["rows"]
    assert [(r["name"], r["miou"]) for r in rows] == [(r["name"], r["miou"]) for r in result["rows"]]
    # every network timed folded, the RSPNets against LRASPP in the same rounds; the pass criteria listed
    lraspp = next(r for r in result["rows"] if r["kind"] == "lraspp")
    for r in result["rows"]:
        assert r["folded_ms"] > 0 and (r["kind"] == "lraspp") != ("vs_lraspp" in r), r
    checks = {c["criterion"]: c["passed"] for c in result["summary"]["done_when"]}
    assert len(checks) == 10 and "Pass criteria" in text, checks   # 8, and 2 against the budgeted draw
    assert checks["parameters ≤ ¼ LRASPP's"] == (4 * row["params"] <= lraspp["params"])


def _row(name, kind, miou, params=1e5, flops=1e8, vs=0.9, small=0.01, mca=0.5):
    per_class = {c: {"iou": small, "accuracy": 0.5} for c in ("Sky", "Pole", "SignSymbol", "Pedestrian",
                                                              "Bicyclist")}
    return {"name": name, "kind": kind, "miou": miou, "params": params, "flops": flops, "folded_ms": 10 * vs,
            "vs_lraspp": vs, "per_class": per_class, "mean_class_accuracy": mca}


def test_search_quality_pass_criteria():
    """The CamVid pass criteria against hand-computed cases: the difference
    must clear both 2 points and twice its standard error, every searched
    architecture the random median, and the parity checks use the mean over
    searched-0's training seeds and LRASPP's."""
    sq = _bench("search_quality")
    lraspp = [_row("lraspp", "lraspp", 0.30, params=3.2e6, flops=7e8, mca=0.45),
              _row("lraspp-seed1", "lraspp", 0.32, params=3.2e6, flops=7e8, mca=0.47)]
    lraspp = [{k: v for k, v in r.items() if k != "vs_lraspp"} for r in lraspp]
    searched = [_row("searched-0", "searched", 0.34, mca=0.48), _row("searched-1", "searched", 0.33),
                _row("searched-2", "searched", 0.35)]
    noise = [_row("searched-0-seed1", "noise", 0.31, mca=0.46), _row("searched-0-seed2", "noise", 0.29)]
    random_ = [_row(f"random-{i}", "random", m) for i, m in enumerate((0.28, 0.29, 0.30, 0.31, 0.27, 0.30))]
    rows = searched + random_ + noise + lraspp
    summary = sq.summarize(rows, [])
    got = {c: ok for c, _, ok in sq.done_when(rows, summary)}
    # searched 0.34 ± 0.01, random 0.2917 ± 0.0147: difference 4.8 points, SE 0.70 points
    assert summary["difference"] == pytest.approx(0.34 - statistics.mean(r["miou"] for r in random_))
    assert list(got.values())[:2] == [True, True]
    # searched-0 over its 3 seeds: 0.3133 against LRASPP's 0.31; mean class accuracy 0.48 against 0.46
    assert got["searched-0 (3 seeds) test mIoU ≥ LRASPP's (2 seeds)"] is True
    noise[0]["miou"] = 0.29   # 0.3067 < 0.31
    assert not dict((c, ok) for c, _, ok in sq.done_when(rows, summary))[
        "searched-0 (3 seeds) test mIoU ≥ LRASPP's (2 seeds)"]
    noise[0]["miou"] = 0.31
    assert got["parameters ≤ ¼ LRASPP's"] and got["FLOPs ≤ LRASPP's"]
    assert got["folded 1-thread latency ≤ LRASPP's (interleaved)"] and got["mean class accuracy ≥ LRASPP's"]
    assert got["test IoU > 0 on Pole, SignSymbol, Pedestrian, Bicyclist, every seed"]
    # one searched architecture at the random median fails the second; a zero class fails the small-class check
    rows[1] = _row("searched-1", "searched", statistics.median(r["miou"] for r in random_))
    noise[1]["per_class"]["Bicyclist"]["iou"] = 0.0   # one seed of three never hits the class: not learnt
    rows[0]["vs_lraspp"] = 1.01
    got = {c: ok for c, _, ok in sq.done_when(rows, sq.summarize(rows, []))}
    assert not got["every searched architecture above the random median"]
    assert not got["test IoU > 0 on Pole, SignSymbol, Pedestrian, Bicyclist, every seed"]
    assert not got["folded 1-thread latency ≤ LRASPP's (interleaved)"]
    # a 1.9-point difference fails however small its standard error
    close = [dict(r, miou=0.30 + 0.019) if r["kind"] == "searched" else dict(r, miou=0.30) if r["kind"] == "random"
             else r for r in rows]
    got = {c: ok for c, _, ok in sq.done_when(close, sq.summarize(close, []))}
    assert not got["searched − random ≥ 2 points and > 2 SE"]
    assert not any("within the budgets" in c or "within-budget" in c for c in got)   # none drawn: no such check


def test_search_quality_criteria_against_random_within_the_budgets():
    """With random draws inside the searches' budgets, the two selection
    criteria are also judged against them (difference and its standard
    error by hand, the median of the budgeted draws)."""
    sq = _bench("search_quality")
    searched = [_row("searched-0", "searched", 0.34), _row("searched-1", "searched", 0.33),
                _row("searched-2", "searched", 0.35)]
    random_ = [_row(f"random-{i}", "random", m) for i, m in enumerate((0.33, 0.34, 0.32, 0.33, 0.35, 0.34))]
    budgeted = [_row(f"budgeted-{i}", "budgeted", m) for i, m in enumerate((0.30, 0.31, 0.29, 0.32, 0.30, 0.31))]
    rows = searched + random_ + budgeted
    summary = sq.summarize(rows, [])
    se = math.sqrt(statistics.stdev([0.34, 0.33, 0.35]) ** 2 / 3
                   + statistics.stdev([0.30, 0.31, 0.29, 0.32, 0.30, 0.31]) ** 2 / 6)
    assert summary["difference_budgeted"] == pytest.approx(0.34 - 0.305)
    assert summary["difference_budgeted_se"] == pytest.approx(se)
    assert summary["budgeted_median"] == pytest.approx(0.305)
    got = {c: ok for c, _, ok in sq.done_when(rows, summary)}
    assert not got["searched − random ≥ 2 points and > 2 SE"]          # +0.5 against the whole space
    assert got["searched − random within the budgets ≥ 2 points and > 2 SE"]   # +3.5, SE 0.72
    assert got["every searched architecture above the within-budget random median"]
    rows[1] = _row("searched-1", "searched", 0.305)                      # at the budgeted median: not above it
    got = {c: ok for c, _, ok in sq.done_when(rows, sq.summarize(rows, []))}
    assert not got["every searched architecture above the within-budget random median"]
    one = searched + budgeted[:1]                                        # one draw: no standard error, no pass
    assert not {c: ok for c, _, ok in sq.done_when(one, sq.summarize(one, []))}[
        "searched − random within the budgets ≥ 2 points and > 2 SE"]


def _camvid_names():
    from rspnet import data
    return data.CAMVID.names


# --------------------------------------------------------- against LRASPP
def test_cost_vs_lraspp_quick(smoke, arch_file):
    done, out = smoke("cost_vs_lraspp")
    assert done.returncode == 0, done.log
    rows = json.loads((out / "costs.json").read_text())
    assert len(rows["lraspp"]) == 2 and len(rows[arch_file]) == 1   # LRASPP first and last
    for row in rows["lraspp"] + rows[arch_file]:
        for key in ("params", "flops", "latency_ms"):
            assert row[key] > 0 and row[f"folded_{key}"] > 0, (key, row)
    assert rows[arch_file][0]["params"] < rows["lraspp"][0]["params"]


def test_latency_vs_lraspp_quick(smoke, arch_file):
    """The comparison the export report used to carry: every network as built
    and folded, against counts made here (torchvision's LRASPP built afresh),
    the ratios from those rows, and the interleaved rounds."""
    tv = pytest.importorskip("torchvision.models.segmentation")
    from rspnet.models import RSPNet, count_flops
    done, out = smoke("latency_vs_lraspp")
    assert done.returncode == 0, done.log
    result = json.loads((out / "latency.json").read_text())
    nets, ref = result["networks"], "LRASPP-MobileNetV3-Large"
    assert set(nets) == {ref, arch_file} and result["size"] == [64, 128] and result["threads"] == 1
    for name in (ref, f"{ref}, BN folded", arch_file, f"{arch_file}, BN folded", f"{arch_file} / LRASPP",
                 f"{arch_file} / LRASPP, both folded"):
        assert any(line.startswith(name + "  ") or line.startswith(name + " (") for line in
                   done.stdout.splitlines()), name
    lraspp = tv.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=19)
    ours = RSPNet(arch_file, 19)
    for name, model in ((ref, lraspp), (arch_file, ours)):
        row, bns = nets[name], [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        params = sum(p.numel() for p in model.parameters())
        assert row["unfolded"]["params"] == params
        assert row["folded"]["params"] == params - sum(bn.num_features for bn in bns)  # gamma, beta -> a bias
        assert (row["folded"]["bn_folded"], row["folded"]["bn_left"]) == (len(bns), 0)
        assert row["folded"]["max_abs_diff_vs_unfolded"] <= 1e-4 * max(1.0, row["folded"]["max_abs_output"])
        assert row["folded"]["flops"] <= row["unfolded"]["flops"] == count_flops(model.eval(), (64, 128))
        for key in ("unfolded", "folded"):
            assert row[key]["latency"]["median_ms"] > 0
            assert row[key]["latency"]["memory_format"] in ("contiguous", "channels_last")
        inter = row["interleaved"]
        assert len(inter["ms"]) == result["rounds"] and inter["median_ms"] > 0
        assert inter["layout"] == row["folded"]["latency"]["memory_format"]
    for key in ("unfolded", "folded"):
        mine, theirs, q = nets[arch_file][key], nets[ref][key], nets[arch_file]["ratios"][key]
        assert q["params"] == pytest.approx(mine["params"] / theirs["params"])
        assert q["flops"] == pytest.approx(mine["flops"] / theirs["flops"])
        assert q["latency"] == pytest.approx(mine["latency"]["median_ms"] / theirs["latency"]["median_ms"])
    inter = nets[arch_file]["interleaved"]
    paired = [a / b for a, b in zip(inter["ms"], nets[ref]["interleaved"]["ms"])]
    assert inter["median_ratio"] == pytest.approx(statistics.median(paired))
    assert inter["faster_rounds"] == sum(q < 1 for q in paired)
    assert "/ LRASPP in the same round" in done.stdout and "ratios" not in nets[ref]


def test_latency_vs_lraspp_interleaves_and_pairs_the_rounds(monkeypatch):
    """Each round runs every network once, the order rotated every round, and
    a ratio is taken within a round (an injected clock: ours costs 2 units,
    the reference 3, except in round 1 where the reference costs 1)."""
    from rspnet.ops import timing
    lv = _bench("latency_vs_lraspp")
    calls, now = [], [0.0]
    cost = {"ours": [2, 2, 2, 2], "reference": [3, 1, 3, 3], "third": [5, 5, 5]}

    def net(name):
        def run():
            calls.append(name)
            now[0] += cost[name][calls.count(name) - 1] / 1000
        return run

    monkeypatch.setattr(timing, "perf_counter", lambda: now[0])
    times = lv.interleaved({"reference": net("reference"), "ours": net("ours")}, rounds=4)
    assert calls == ["reference", "ours", "ours", "reference"] * 2
    assert times["ours"] == pytest.approx([2, 2, 2, 2]) and times["reference"] == pytest.approx([3, 1, 3, 3])
    v = lv.versus(times["ours"], times["reference"])
    assert v["median_ratio"] == pytest.approx(2 / 3) and v["faster_rounds"] == 3
    calls.clear()
    cost.update(ours=[2] * 3, reference=[3] * 3)
    lv.interleaved({n: net(n) for n in ("reference", "ours", "third")}, rounds=3)
    assert calls == ["reference", "ours", "third", "ours", "third", "reference", "third", "reference", "ours"]
    with pytest.raises(ValueError, match="rounds"):
        lv.interleaved({"ours": net("ours")}, rounds=0)


def test_latency_vs_lraspp_without_torchvision_says_how_to_install_it(monkeypatch, capsys, arch_file):
    lv = _bench("latency_vs_lraspp")
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")] + ["torchvision"]:
        monkeypatch.setitem(sys.modules, name, None)     # `import torchvision` fails
    with pytest.raises(SystemExit) as exc:
        lv.parse(["--quick", arch_file])
    assert exc.value.code == 2
    assert "LRASPP-MobileNetV3-Large reference skipped: torchvision is not installed; pip install -e .[bench]" \
        in capsys.readouterr().err


# ------------------------------------------------------------- GPU-only scripts
@pytest.mark.skipif(HAS_CUDA, reason="checks the exit without a CUDA device; device_check.sh runs these on one")
@pytest.mark.parametrize("script", ["gpu_suite.py", "gpu_fusion.py"])
def test_gpu_only_scripts_exit_clearly_without_cuda(smoke, script):
    """The arguments parse (``--quick`` and an output path), then a clear exit
    before anything is written."""
    done, out = smoke(script)
    assert done.returncode == 1, done.log
    assert f"{script} needs a CUDA device" in done.stderr
    assert not (out / "out").exists()


def _suite_info() -> dict:
    return {"gpu": "test", "torch": torch.__version__, "cuda": None, "triton": None, "nvcc": None, "date": "today"}


def test_gpu_suite_writes_the_table_when_every_benchmark_ran(tmp_path, capsys):
    gs = _bench("gpu_suite")
    rows = [{"workload": "mixed_sum K=8 float32", "method": "rspnet auto", "fwd+bwd ms": 1.0, "% copy": 90.0,
             "ideal ms": 0.9, "peak extra MiB": 0.0}]
    assert gs.finish(_suite_info(), 1000.0, rows, str(tmp_path)) == 0
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "| mixed_sum K=8 float32 | rspnet auto |" in table and "error" not in table
    assert json.loads((tmp_path / "gpu_suite.json").read_text())["rows"] == rows
    assert not (tmp_path / "gpu_suite.failed.json").exists()


def test_gpu_suite_fails_loudly_naming_the_failed_benchmark(tmp_path, capsys):
    gs = _bench("gpu_suite")
    (tmp_path / "gpu_suite.md").write_text("an earlier run's table")
    good = {"workload": "mixed_sum K=8 float32", "method": "rspnet auto", "fwd+bwd ms": 1.0}
    failed = gs.collect("cell_workload", lambda: (_ for _ in ()).throw(ValueError("peer differs")))
    missing = gs.optional_rows("no_such_benchmark_module", quick=True)   # an import error fails, it is not skipped
    rows = [good, *failed, *missing]
    assert gs.finish(_suite_info(), 1000.0, rows, str(tmp_path)) == 1
    captured = capsys.readouterr()
    assert "FAILED cell_workload" in captured.err and "peer differs" in captured.err
    assert "FAILED no_such_benchmark_module" in captured.err
    table = captured.out[captured.out.index("Device:"):]
    assert "peer differs" not in table and "no_such_benchmark_module" not in table   # no error row
    assert not (tmp_path / "gpu_suite.md").exists() and not (tmp_path / "gpu_suite.json").exists()
    report = json.loads((tmp_path / "gpu_suite.failed.json").read_text())
    assert report["rows"] == [good] and [r["workload"] for r in report["failed"]] == [
        "cell_workload", "no_such_benchmark_module"]


STUB = """#!/usr/bin/env bash
# a stand-in interpreter: logs its arguments, fails when asked to run $FAIL_ON
echo "$@" >> "$STUB_LOG"
case "$*" in *"$FAIL_ON"*) echo "stub: $FAIL_ON failed" >&2; exit 3;; esac
exit 0
"""


@pytest.mark.parametrize("fail_on", ["benchmarks/gpu_suite.py", ""])
def test_device_check_names_a_failed_step(tmp_path, fail_on):
    """Every step still runs; a failed one is named at the end and the exit
    status is 1 (the stand-in interpreter builds and measures nothing)."""
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    env = dict(_env(), PYTHON=str(stub), STUB_LOG=str(log), FAIL_ON=fail_on or "<nothing>")
    done = subprocess.run(["bash", os.path.join(BENCH, "device_check.sh"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120)
    calls = log.read_text()
    assert "benchmarks/gpu_suite.py --out" in calls and "benchmarks/search_memory.py --device cuda" in calls
    if fail_on:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "device_check.sh: FAILED: benchmarks/gpu_suite.py" in done.stdout
    else:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "every step passed" in done.stdout
    assert (tmp_path / "out" / "device_check.log").exists()


# ----------------------------------------------------------------------- peers
def test_peers_compute_rspnet_functions():
    """What the GPU suite times beside rspnet's ops computes the same values (CPU)."""
    from rspnet.ops import channel_merge, mixed_sum, path_fusion
    peers = _bench("peers")
    torch.manual_seed(0)
    xs = [torch.randn(2, 4, 8, 16) for _ in range(3)]
    w = torch.rand(3)
    torch.testing.assert_close(peers.weighted_sum_eager(w, *xs), mixed_sum(w, xs))
    torch.testing.assert_close(peers.weighted_sum_stacked(w, *xs), mixed_sum(w, xs))
    feats = [torch.randn(2, 4, 16, 32), torch.randn(2, 4, 8, 16), torch.randn(2, 4, 32, 64)]
    logits = torch.randn(3)
    torch.testing.assert_close(peers.path_fusion_eager(logits, *feats, size=(16, 32)),
                               path_fusion(logits, feats, (16, 32)))
    torch.testing.assert_close(peers.channel_merge_eager(*xs[:2], groups=2), channel_merge(xs[:2], 2))
