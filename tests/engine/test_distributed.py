"""Data parallelism (rspnet.engine.distributed) with two CPU processes and gloo,
launched by ``torchrun --standalone --nproc_per_node=2`` (a free port) on
``tests/helpers/dist_worker.py``, which runs the CLIs' own ``main`` and has every rank
dump its final state (see its docstring for the test-only hooks).

One torchrun launch runs several searches in one process group, to pay the
start-up of two Python processes once."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from rspnet.engine import distributed
from rspnet.engine.faults import StopSignal
from rspnet.engine.sampler import ShardSampler
from rspnet.search.stage import checkpoint_series, load_search_checkpoint
from tests.helpers import ROOT, dist_worker

WORKER = os.path.join(ROOT, "tests", "helpers", "dist_worker.py")

# global batch 4 = 2 per rank; 16 images: halves of 8 -> 2 steps per epoch
SEARCH = ["--size", "32x32", "--images", "16", "--batch-size", "4", "--epochs", "2", "--channels", "4",
          "--layers", "2", "--no-progress", "--deterministic"]
# 8 images: 1 step per epoch; the second-order architect and both stages
EXACT = ["--size", "32x32", "--images", "8", "--batch-size", "4", "--epochs", "2", "--channels", "4",
         "--layers", "2", "--no-progress", "--order", "second", "--param-penalty", "0.1"]

# the derived network of the "exact" search; global batch 4: 2 steps per epoch
TRAIN = ["--size", "32x32", "--train-images", "8", "--val-images", "4", "--batch-size", "4", "--epochs", "2",
         "--val-every", "1", "--no-progress", "--threads", "1"]
# the stopped and resumed training, and its reference, also keep the weights' moving average
EMA = ["--ema", "0.5"]


def torchrun(specs, directory, nproc=2, timeout=400):
    spec = directory / "spec.json"
    spec.write_text(json.dumps(specs))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", WORKER, str(spec)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return proc


def _flat(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flat(v, f"{prefix}/{i}")


def load_dump(path):
    return dict(_flat(torch.load(path, weights_only=True)))


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    runs = {name: base / name for name in ("bn", "stopped", "exact", "single", "train-bn", "train-stopped",
                                           "train-exact", "train-single")}
    for d in runs.values():
        (d / "dump").mkdir(parents=True)
    specs = [
        # plain BatchNorm, stage 1 uninterrupted
        {"cli": "search", "argv": SEARCH + ["--stage", "1", "--out", str(runs["bn"] / "out")],
         "dump": str(runs["bn"] / "dump")},
        # the same, rank 1 alone asks to stop in step 3 (epoch 2, batch 1 of 2) ...
        {"cli": "search", "argv": SEARCH + ["--stage", "1", "--checkpoint-every", "1",
                                            "--out", str(runs["stopped"] / "out")],
         "stop_at": {"rank": 1, "stage": 1, "step": 3}},
        # ... and the run resumes with --resume auto
        {"cli": "search", "argv": SEARCH + ["--stage", "1", "--checkpoint-every", "1", "--resume", "auto",
                                            "--out", str(runs["stopped"] / "out")],
         "dump": str(runs["stopped"] / "dump")},
        # both stages, second order, in float64 without batch coupling (dist_worker's docstring)
        {"cli": "search", "argv": EXACT + ["--out", str(runs["exact"] / "out")],
         "dump": str(runs["exact"] / "dump"), "exact": True},
    ]
    arch = ["--arch", str(runs["exact"] / "out" / "architecture.json")]
    specs += [
        # training the derived network: plain BN, uninterrupted
        {"cli": "train", "argv": arch + TRAIN + EMA + ["--out", str(runs["train-bn"] / "out")],
         "dump": str(runs["train-bn"] / "dump")},
        # rank 1 asks to stop in step 3 (epoch 2, batch 1 of 2); then --resume auto
        {"cli": "train", "argv": arch + TRAIN + EMA + ["--checkpoint-every", "1", "--out",
                                                 str(runs["train-stopped"] / "out")],
         "stop_at": {"rank": 1, "step": 3}},
        {"cli": "train", "argv": arch + TRAIN + EMA + ["--checkpoint-every", "1", "--resume", "auto", "--out",
                                                 str(runs["train-stopped"] / "out")],
         "dump": str(runs["train-stopped"] / "dump")},
        {"cli": "train", "argv": arch + TRAIN + ["--out", str(runs["train-exact"] / "out")],
         "dump": str(runs["train-exact"] / "dump"), "exact": True},
    ]
    proc = torchrun(specs, base)
    threads = torch.get_num_threads()
    # one process, the same global batch
    assert dist_worker.run_one({"cli": "search", "argv": EXACT + ["--out", str(runs["single"] / "out")],
                                "dump": str(runs["single"] / "dump"), "exact": True}) == 0
    assert dist_worker.run_one({"cli": "train", "argv": arch + TRAIN + ["--out", str(runs["train-single"] / "out")],
                                "dump": str(runs["train-single"] / "dump"), "exact": True}) == 0
    torch.set_num_threads(threads)
    return runs, proc


def test_ranks_hold_identical_parameters_and_only_rank_0_writes(searches):
    runs, proc = searches
    for run, names in (("bn", ["stage1"]), ("exact", ["stage1", "stage2"]), ("train-bn", ["train"]),
                       ("train-exact", ["train"])):
        for name in names:
            a = load_dump(runs[run] / "dump" / f"rank0-{name}.pt")
            b = load_dump(runs[run] / "dump" / f"rank1-{name}.pt")
            assert a.keys() == b.keys() and any("running_mean" in k for k in a)
            assert name == "train" or any("alphas" in k or "betas" in k for k in a)
            for key in a:   # weights, α / β, BatchNorm statistics, momentum, Adam moments
                assert torch.equal(a[key], b[key]), (run, name, key)
    log = (runs["bn"] / "out" / "search.log").read_text()
    assert "device cpu, 2 processes (gloo)" in log
    assert log.count("[stage 1] epoch 2/2") == 1          # rank 1 is quiet
    assert proc.stdout.count("derived network") == 3       # rank 0 alone prints (3 finished searches)
    assert (runs["train-bn"] / "out" / "train.log").read_text().count("epoch   2/2") == 1
    state = load_search_checkpoint(checkpoint_series(runs["bn"] / "out", 1).list()[-1][1])
    assert state["world_size"] == 2 and len(state["rng"]) == 2   # every rank's generators


def test_two_processes_equal_one_process_with_the_same_global_batch(searches):
    runs, _ = searches
    for two_dir, one_dir, name in (("exact", "single", "stage1"), ("exact", "single", "stage2"),
                                   ("train-exact", "train-single", "train")):
        two = load_dump(runs[two_dir] / "dump" / f"rank0-{name}.pt")
        one = load_dump(runs[one_dir] / "dump" / f"rank0-{name}.pt")
        assert two.keys() == one.keys()
        for key, value in two.items():
            if not value.is_floating_point():
                assert torch.equal(value, one[key]), key
                continue
            assert value.dtype == torch.float64, key
            # float64; only the order of the sums differs (measured: below 2e-15 of each tensor's largest entry)
            scale = one[key].abs().max().clamp_min(1e-300)
            assert ((value - one[key]).abs().max() / scale).item() < 1e-12, key
    assert (runs["exact"] / "out" / "architecture.json").read_text() == \
        (runs["single"] / "out" / "architecture.json").read_text()


def test_training_stop_on_one_rank_checkpoints_mid_epoch_and_resumes_exactly(searches):
    runs, _ = searches
    out = runs["train-stopped"] / "out"
    log = (out / "train.log").read_text()
    path = out / "checkpoint-step00000003.pt"
    assert f"stopped by request at step 3 (epoch 2, batch 1/2): checkpoint written to {path}" in log
    assert f"resumed from {path}: epoch 2, batch 1/2, step 3" in log
    a = load_dump(runs["train-bn"] / "dump" / "rank0-train.pt")
    assert any(k.startswith("/average/") and "running_mean" in k for k in a)   # --ema's average compared too
    for rank in (0, 1):
        b = load_dump(runs["train-stopped"] / "dump" / f"rank{rank}-train.pt")
        for key in a:
            assert torch.equal(a[key], b[key]), (rank, key)


def test_stop_on_one_rank_checkpoints_mid_epoch_and_resumes_exactly(searches):
    runs, _ = searches
    out = runs["stopped"] / "out"
    log = (out / "search.log").read_text()
    path = checkpoint_series(out, 1).path(3)
    assert (f"stopped by request at stage 1 step 3 (epoch 2, batch 1/2): checkpoint written to {path}"
            in log)
    assert f"resumed from {path} at epoch 2, batch 1/2, step 3" in log
    a = load_dump(runs["bn"] / "dump" / "rank0-stage1.pt")
    for rank in (0, 1):
        b = load_dump(runs["stopped"] / "dump" / f"rank{rank}-stage1.pt")
        for key in a:
            assert torch.equal(a[key], b[key]), (rank, key)
    assert (runs["bn"] / "out" / "architecture.json").read_text() == (out / "architecture.json").read_text()


# ------------------------------------------------------------- single process
@pytest.mark.parametrize("n, world, batch", [(16, 2, 2), (17, 2, 2), (18, 4, 1), (20, 3, 2)])
def test_shards_of_a_global_batch_are_the_single_process_batch(n, world, batch):
    """Global batch k (every rank's batch k together) is the same set of
    samples for any number of ranks, and set_start skips whole batches."""
    def batches(world_, start=0):
        per_rank = []
        for r in range(world_):
            s = ShardSampler(range(n), world_, r, shuffle=True, seed=7, drop_last=True)
            s.set_epoch(3)
            s.set_start(start * (batch * world // world_))
            idx = list(s)
            b = batch * world // world_
            per_rank.append([idx[i:i + b] for i in range(0, len(idx) - b + 1, b)])
        return [sorted(sum((p[k] for p in per_rank), [])) for k in range(len(per_rank[0]))]

    single = batches(1)
    assert len(single) == n // (batch * world)
    assert batches(world) == single
    assert batches(world, start=1) == single[1:]


def test_helpers_are_no_ops_in_one_process():
    assert not distributed.is_initialized() and distributed.world_size() == 1 and distributed.is_main()
    t = [torch.tensor([1.0, 2.0])]
    assert distributed.all_reduce_mean_(t)[0].tolist() == [1.0, 2.0]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.gather_object(3) == [3]
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(module, torch.device("cpu")) is module
    assert distributed.convert_sync_batchnorm(module, torch.device("cpu")) is module
    ctx = distributed.init("cpu")
    assert not ctx.distributed and ctx.is_main and ctx.backend is None


def test_stop_signal_sets_a_flag_and_a_second_ctrl_c_interrupts():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignal() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.name == "SIGTERM"
    with StopSignal() as stop:
        assert not stop()   # the loop has polled: a signal is now a request (before, it stops set-up)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
