"""rspnet.train: loss, schedule, a training smoke test, exact resumption,
checkpoint safety and CLI errors. Tiny shapes: every test runs in seconds."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from rspnet import data
from rspnet.architecture import Architecture
from rspnet.engine.checkpoint import CheckpointError
from rspnet.engine.session import EXIT_DIVERGED, EXIT_STOPPED
from rspnet.search import MacroSupernet, SinglePathSupernet
from rspnet.train import TrainConfig, Trainer, build_datasets, check_architecture, checkpoint_series, \
    ohem_cross_entropy, poly_lambda
from rspnet.train import load_train_checkpoint as load_checkpoint
from rspnet.train.__main__ import main


def architecture_fingerprint(architecture):
    return Architecture.load(architecture).fingerprint()

CHANNELS, LAYERS = 8, 2


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spin
    against each other and against other jobs (10x slower); the CLI's
    --threads 1 does the same, and the count is restored for other tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_architecture(seed: int = 0) -> dict:
    """A derived architecture from the search package's own supernets and
    derivation: random architecture weights (seeded), cheap to build, the
    same code path as a real search's ``architecture.json``."""
    torch.manual_seed(seed)
    stage1 = SinglePathSupernet(data.NUM_CLASSES, channels=CHANNELS, scales=4, steps=4)
    with torch.no_grad():
        for p in stage1.arch_parameters():
            p.normal_()
    cell = stage1.genotype()
    stage2 = MacroSupernet(data.NUM_CLASSES, cell, CHANNELS, 4, LAYERS, 0.5, 1, 2 * CHANNELS)
    with torch.no_grad():
        for p in stage2.arch_parameters():
            p.normal_()
    nodes = stage2.paths(2)
    return Architecture(cell=cell, channels=CHANNELS, scales=4, head_channels=2 * CHANNELS,
                        layers=LAYERS, nodes=nodes, search={"test_seed": seed}).to_dict()


@pytest.fixture(scope="session")
def arch_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "architecture.json"
    path.write_text(json.dumps(make_architecture(0)))
    return str(path)


@pytest.fixture(scope="session")
def other_arch_file(tmp_path_factory, arch_file):
    with open(arch_file) as f:
        arch = json.load(f)
    first = arch["cell"]["normal"][0]
    first["op"] = "sep_conv_3x3" if first["op"] != "sep_conv_3x3" else "dil_conv_3x3"
    path = tmp_path_factory.mktemp("arch") / "other.json"
    path.write_text(json.dumps(arch))
    return str(path)


# tiny runs: 4 training images of 64x64, batches of 2 -> 2 steps per epoch;
# checkpoints are named by step: checkpoint-step00000002.pt ends epoch 1
TINY = ["--size", "64x64", "--train-images", "4", "--val-images", "2", "--batch-size", "2",
        "--no-progress", "--threads", "1"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, arch_file):
    """A 2-epoch run kept whole (--keep 0): the reference for resumption and
    the checkpoint that the evaluate/export tests use."""
    out = tmp_path_factory.mktemp("run")
    assert main(["--arch", arch_file, "--out", str(out), "--epochs", "2", "--val-every", "1",
                 "--keep", "0", *TINY]) == 0
    return out


# ---------------------------------------------------------------- pieces
def test_poly_schedule():
    lam = poly_lambda(100, 0.9)
    assert lam(0) == 1.0 and lam(100) == 0.0 and lam(150) == 0.0
    assert lam(50) == pytest.approx(0.5 ** 0.9)


def test_ohem_limits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 8, 8, generator=gen)
    target = torch.randint(0, 19, (2, 8, 8), generator=gen)
    target[0, 0] = 255
    plain = F.cross_entropy(logits, target, ignore_index=255)
    # every pixel is "hard" when the threshold probability is ~1: plain CE
    assert ohem_cross_entropy(logits, target, thresh=1 - 1e-7, min_kept=1) == pytest.approx(plain.item(), rel=1e-6)
    # nothing is hard enough at a ~0 threshold: only the min_kept hardest pixels
    losses = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[target != 255]
    hardest = losses.topk(5).values.mean()
    assert ohem_cross_entropy(logits, target, thresh=1e-30, min_kept=5) == pytest.approx(hardest.item(), rel=1e-6)
    # only ignored pixels: zero loss that still back-propagates
    logits.requires_grad_(True)
    loss = ohem_cross_entropy(logits, torch.full_like(target, 255))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None


def test_loss_falls_on_a_tiny_set(arch_file):
    config = TrainConfig(size=(64, 64), train_images=4, val_images=2, batch_size=2, epochs=8, lr=0.05)
    trainer = Trainer(config, Architecture.load(arch_file), out_dir="unused", log=lambda s: None,
                      progress=False)
    losses = []
    for _ in range(config.epochs):
        losses.append(trainer.train_epoch())
        trainer.epoch += 1
    assert trainer.step == 16
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.6 * losses[0], losses
    assert sum(losses[-2:]) < sum(losses[:2]), losses


# ----------------------------------------------------------- the CLI run
def test_run_writes_checkpoints_metrics_and_curves(trained_run, arch_file):
    names = set(os.listdir(trained_run))
    assert {"checkpoint-step00000002.pt", "checkpoint-step00000004.pt", "best.pt", "metrics.json",
            "curves.png", "train.log"} <= names
    assert not [n for n in names if n.startswith(".tmp")]          # no temporary file left
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert all(0 <= r["val_miou"] <= 1 for r in metrics["history"])
    assert metrics["final_val"]["per_class"]["road"]["pixels"] > 0
    assert metrics["architecture_fingerprint"] == architecture_fingerprint(Architecture.load(arch_file))
    log = (trained_run / "train.log").read_text()
    assert "epoch   2/2  loss" in log and "val mIoU" in log and "lr" in log
    state = load_checkpoint(trained_run / "checkpoint-step00000004.pt")
    for key in ("model", "optimizer", "scheduler", "epoch", "batch", "step", "rng", "architecture"):
        assert key in state
    assert state["epoch"] == 2 and state["step"] == 4 and state["batch"] == 0
    assert len(state["rng"]) == 1 and set(state["rng"][0]) >= {"torch", "numpy", "python", "cuda"}


def _weights(path):
    state = load_checkpoint(path)
    return state["model"], state["optimizer"]["state"], state


def test_resume_continues_exactly(trained_run, arch_file, tmp_path):
    """Interrupted after epoch 1 and resumed == the uninterrupted run."""
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(trained_run / "checkpoint-step00000002.pt", out / "checkpoint-step00000002.pt")
    assert main(["--arch", arch_file, "--out", str(out), "--resume", "auto", "--epochs", "2",
                 "--val-every", "1", "--keep", "0", *TINY]) == 0
    model_a, momentum_a, state_a = _weights(trained_run / "checkpoint-step00000004.pt")
    model_b, momentum_b, state_b = _weights(out / "checkpoint-step00000004.pt")
    assert model_a.keys() == model_b.keys()
    for name in model_a:
        assert torch.equal(model_a[name], model_b[name]), name
    for k in momentum_a:
        assert torch.equal(momentum_a[k]["momentum_buffer"], momentum_b[k]["momentum_buffer"])
    assert state_a["step"] == state_b["step"] == 4
    assert state_a["history"][1]["train_loss"] == state_b["history"][1]["train_loss"]
    assert state_a["scheduler"]["last_epoch"] == state_b["scheduler"]["last_epoch"]
    assert "resumed from" in (out / "train.log").read_text()


def test_resume_auto_without_checkpoint_starts_afresh_and_finished_run_is_refused(arch_file, tmp_path, capsys):
    out = tmp_path / "fresh"
    assert main(["--arch", arch_file, "--out", str(out), "--resume", "auto", "--epochs", "1",
                 "--keep", "1", *TINY]) == 0
    assert [n for n, _ in checkpoint_series(out).list()] == [2]
    assert "no checkpoint in" in (out / "train.log").read_text()
    with pytest.raises(SystemExit) as exc:
        main(["--arch", arch_file, "--out", str(out), "--resume", "auto", "--epochs", "1", *TINY])
    assert exc.value.code == 2
    assert "already trained 1 epochs" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(trained_run, arch_file, capsys):
    before = {n: os.path.getmtime(trained_run / n) for n in os.listdir(trained_run)}
    with pytest.raises(SystemExit) as exc:
        main(["--arch", arch_file, "--out", str(trained_run), "--epochs", "1", *TINY])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--out {trained_run} already holds files (best.pt," in err and "new training run" in err
    assert {n: os.path.getmtime(trained_run / n) for n in os.listdir(trained_run)} == before


def test_resume_never_overwrites_later_checkpoints(trained_run, arch_file, capsys):
    before = (trained_run / "checkpoint-step00000004.pt").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["--arch", arch_file, "--resume", str(trained_run / "checkpoint-step00000002.pt"),
              "--epochs", "2", "--val-every", "1", "--keep", "0", *TINY])
    assert exc.value.code == 2
    assert "checkpoint-step00000004.pt" in capsys.readouterr().err
    assert (trained_run / "checkpoint-step00000004.pt").read_bytes() == before


def test_resume_with_changed_settings_is_refused(trained_run, arch_file, capsys):
    with pytest.raises(SystemExit):
        main(["--arch", arch_file, "--resume", str(trained_run / "checkpoint-step00000002.pt"),
              "--out", str(trained_run), "--epochs", "2", "--lr", "0.2", *TINY])
    assert "lr: 0.05 -> 0.2" in capsys.readouterr().err


# ------------------------------------------------------- checkpoint safety
def test_wrong_architecture_is_rejected(trained_run, arch_file, other_arch_file, capsys):
    state = load_checkpoint(trained_run / "best.pt")
    other = Architecture.load(other_arch_file)
    with pytest.raises(CheckpointError) as exc:
        check_architecture(state, other, data.NUM_CLASSES, "ckpt", "--arch other.json")
    message = str(exc.value)
    assert architecture_fingerprint(Architecture.load(arch_file)) in message
    assert architecture_fingerprint(other) in message
    assert "cell.normal[0].op" in message and arch_file in message
    with pytest.raises(SystemExit) as exc:
        main(["--arch", other_arch_file, "--resume", str(trained_run / "checkpoint-step00000002.pt"),
              "--out", str(trained_run), "--epochs", "2", *TINY])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "other.json" in err and architecture_fingerprint(other) in err
    with pytest.raises(CheckpointError, match="19 classes"):
        check_architecture(state, Architecture.load(arch_file), 5)


def test_truncated_and_garbage_checkpoints_give_clear_errors(trained_run, tmp_path):
    good = (trained_run / "best.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not an rspnet training checkpoint"):
        load_checkpoint(other)


class _Payload:
    """Unpickling this would create a file: the proof that nothing was unpickled."""
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    payload = _Payload()
    payload.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    torch.save({"format": "rspnet-train-checkpoint/2", "model": {}, "architecture": {},
                "num_classes": 19, "x": payload}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)
    assert not os.path.exists(payload.marker)


def test_keep_checkpoints_keeps_the_newest_and_best(arch_file, tmp_path):
    out = tmp_path / "keep"
    assert main(["--arch", arch_file, "--out", str(out), "--epochs", "3", "--val-every", "1",
                 "--keep-checkpoints", "2", *TINY]) == 0
    assert [n for n, _ in checkpoint_series(out).list()] == [4, 6]
    assert (out / "best.pt").is_file()


# ------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("extra, message", [
    (["--size", "100x100"], "multiples of 32"),
    (["--epochs", "0"], "positive integer"),
    (["--batch-size", "1"], "at least 2"),
    (["--data", "cityscapes"], "--data-root"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--ohem-thresh", "1.5"], "--ohem-thresh"),
    (["--resume", "/nonexistent/ckpt.pt"], "no such file"),
    (["--lr", "-1"], "positive number"),
])
def test_bad_cli_input_is_an_argparse_error(arch_file, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        main(["--arch", arch_file, "--out", str(tmp_path / "x"), *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_architecture_file_is_an_argparse_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        main(["--arch", str(bad)])
    assert exc.value.code == 2 and "not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--arch", str(tmp_path / "missing.json")])
    assert "no such file" in capsys.readouterr().err


def test_datasets_are_cached_and_deterministic():
    config = TrainConfig(size=(64, 64), train_images=3, val_images=2, augment=True)
    train, val = build_datasets(config)
    a, b = train[1], train[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    train.set_epoch(1)
    assert not torch.equal(train[1][0], a[0])  # augmentation changes per epoch
    assert len(val) == 2 and val[0][0].shape == (3, 64, 64)


# -------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_gpu_amp_channels_last_run_resumes_on_cpu(arch_file, tmp_path, amp):
    out = tmp_path / amp
    assert main(["--arch", arch_file, "--out", str(out), "--epochs", "1", "--device", "cuda",
                 "--amp", amp, *TINY]) == 0
    state = load_checkpoint(out / "best.pt")               # mapped to CPU
    assert state["config"]["amp"] == amp and state["config"]["channels_last"] == "auto"
    assert math.isfinite(state["history"][0]["train_loss"])
    if amp == "fp16":
        assert state["scaler"]["scale"] > 0                # the GradScaler was active and saved
    # a GPU checkpoint continues on the CPU (device may change on resume)
    assert main(["--arch", arch_file, "--out", str(out), "--resume", "auto", "--epochs", "2",
                 "--device", "cpu", "--amp", "off", *TINY]) == 0


def test_cityscapes_layout_run_with_augmentation(arch_file, tmp_path):
    root = tmp_path / "cityscapes"
    data.write_cityscapes_layout(root, {"train": 4, "val": 2}, size=(64, 128), seed=2)
    out = tmp_path / "run"
    assert main(["--arch", arch_file, "--out", str(out), "--data", "cityscapes", "--data-root", str(root),
                 "--size", "64x64", "--batch-size", "2", "--epochs", "1", "--no-progress", "--threads", "1"]) == 0
    state = load_checkpoint(out / "best.pt")
    assert state["config"]["augment"] is True            # on by default for Cityscapes
    assert state["config"]["data"] == "cityscapes" and state["step"] == 2


def test_flipped_bit_inside_a_tensor_is_detected(trained_run, tmp_path):
    state = load_checkpoint(trained_run / "best.pt")
    name, weight = next((k, v) for k, v in state["model"].items() if v.numel() >= 64 and v.is_floating_point())
    raw = bytearray((trained_run / "best.pt").read_bytes())
    needle = weight.contiguous().view(torch.uint8).reshape(-1)[:32].numpy().tobytes()
    at = bytes(raw).find(needle)
    assert at >= 0, "tensor bytes not found in the file"
    raw[at + 3] ^= 0x10
    damaged = tmp_path / "flipped.pt"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(damaged)


# ------------------------------------------------------------------ faults
def _same_training(reference, out, step=4):
    """Same weights, momentum, schedule and history at ``step``, bit for bit."""
    model_a, momentum_a, state_a = _weights(reference / f"checkpoint-step{step:08d}.pt")
    model_b, momentum_b, state_b = _weights(out / f"checkpoint-step{step:08d}.pt")
    for name in model_a:
        assert torch.equal(model_a[name], model_b[name]), name
    for k in momentum_a:
        assert torch.equal(momentum_a[k]["momentum_buffer"], momentum_b[k]["momentum_buffer"])
    assert state_a["scheduler"] == state_b["scheduler"]
    for a, b in zip(state_a["history"], state_b["history"]):
        assert (a["train_loss"], a["val_miou"], a["lr"]) == (b["train_loss"], b["val_miou"], b["lr"])


def test_sigterm_mid_epoch_checkpoints_and_resume_continues_exactly(trained_run, arch_file, tmp_path,
                                                                     monkeypatch):
    """SIGTERM during step 3 (epoch 2, batch 1 of 2): a checkpoint after that
    step, exit EXIT_STOPPED; --resume auto then ends exactly like the uninterrupted run."""
    real_step = Trainer._step

    def step(self, images, labels):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)   # caught by rspnet's handler: a stop request
        return real_step(self, images, labels)

    monkeypatch.setattr(Trainer, "_step", step)
    out = tmp_path / "stopped"
    args = ["--arch", arch_file, "--out", str(out), "--epochs", "2", "--val-every", "1", "--keep", "0", *TINY]
    assert main(args) == EXIT_STOPPED
    assert [n for n, _ in checkpoint_series(out).list()] == [2, 3]
    state = load_checkpoint(out / "checkpoint-step00000003.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 3)
    log = (out / "train.log").read_text()
    assert (f"stopped by SIGTERM at step 3 (epoch 2, batch 1/2): checkpoint written to "
            f"{out / 'checkpoint-step00000003.pt'}; continue with --resume auto --out {out}") in log
    monkeypatch.setattr(Trainer, "_step", real_step)
    assert main(args[:4] + ["--resume", "auto"] + args[4:]) == 0
    assert f"resumed from {out / 'checkpoint-step00000003.pt'}: epoch 2, batch 1/2, step 3" in \
        (out / "train.log").read_text()
    _same_training(trained_run, out)


def test_sigkill_mid_epoch_then_resume_auto_ends_bit_identical(arch_file, tmp_path):
    """A real process killed with SIGKILL right after a mid-epoch checkpoint."""
    args = ["--arch", arch_file, "--epochs", "2", "--val-every", "1", "--checkpoint-every", "1",
            "--deterministic", *TINY, "--train-images", "16"]   # 8 steps per epoch
    reference = tmp_path / "reference"
    assert main(args + ["--out", str(reference)]) == 0
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(1)
    out = tmp_path / "killed"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "rspnet.train", *args, "--out", str(out)], cwd=root,
                            env={**os.environ, "PYTHONPATH": root}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = out / "checkpoint-step00000010.pt"           # epoch 2, batch 2 of 8
    deadline = time.monotonic() + 120
    while not target.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.005)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    newest = load_checkpoint(checkpoint_series(out).list()[-1][1])
    assert newest["epoch"] == 1 and 0 < newest["batch"] < 8, "the kill was meant to land mid-epoch"
    assert main(args + ["--out", str(out), "--resume", "auto"]) == 0
    torch.use_deterministic_algorithms(False)
    _same_training(reference, out, step=16)


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(arch_file, tmp_path, monkeypatch,
                                                                          capsys):
    import rspnet.train.trainer as train_module
    real = train_module.segmentation_loss

    def poisoned(config):
        loss_fn, calls = real(config), []

        def fn(logits, target):
            calls.append(1)
            return loss_fn(logits, target) * (float("nan") if len(calls) == 3 else 1.0)
        return fn

    monkeypatch.setattr(train_module, "segmentation_loss", poisoned)
    out = tmp_path / "nan"
    assert main(["--arch", arch_file, "--out", str(out), "--epochs", "2", "--checkpoint-every", "1",
                 "--keep", "0", *TINY]) == EXIT_DIVERGED
    err = capsys.readouterr().err
    last = out / "checkpoint-step00000002.pt"
    assert (f"error: the training diverged: the training loss is nan at step 3 (epoch 2, batch 1/2). "
            f"Nothing was written after the last good checkpoint, {last}") in err
    assert [n for n, _ in checkpoint_series(out).list()] == [1, 2]
    state = load_checkpoint(last)                      # intact and verified
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values()
                                      if v.is_floating_point())


def test_truncated_checkpoint_is_rejected_and_auto_falls_back(trained_run, arch_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--arch", arch_file, "--out", str(out), "--epochs", "2", "--val-every", "1",
            "--checkpoint-every", "1", *TINY]
    assert main(args) == 0
    assert [n for n, _ in checkpoint_series(out).list()] == [2, 3, 4]     # the newest 3
    final = out / "checkpoint-step00000004.pt"
    with open(final, "r+b") as f:
        f.truncate(os.path.getsize(final) - 1000)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args + ["--resume", str(final)])
    assert exc.value.code == 2
    assert f"--resume: checkpoint {str(final)!r} is truncated or corrupt" in capsys.readouterr().err
    assert main(args + ["--resume", "auto"]) == 0
    log = (out / "train.log").read_text()
    assert f"warning: checkpoint {str(final)!r} is truncated or corrupt" in log and "falling back" in log
    assert f"resumed from {out / 'checkpoint-step00000003.pt'}: epoch 2, batch 1/2, step 3" in log
    _same_training(trained_run, out)


def test_sigterm_to_every_process_of_the_job_with_dataloader_workers(arch_file, tmp_path):
    """A batch scheduler (or Ctrl-C in a terminal) signals every process of
    the job, DataLoader workers included: the workers ignore it, the main
    process checkpoints at the next step and exits 0."""
    out = tmp_path / "workers"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "rspnet.train", "--arch", arch_file, "--out", str(out),
                             "--epochs", "2", "--workers", "2", *TINY, "--train-images", "256"],
                            cwd=root, env={**os.environ, "PYTHONPATH": root}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "train.log").exists():                # written once training starts
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, output
    (step, path), = checkpoint_series(out).list()
    assert f"stopped by SIGTERM at step {step} " in output and f"checkpoint written to {path}" in output
    assert load_checkpoint(path)["step"] == step < 256
