"""Fault tolerance of training: a run interrupted and resumed ends like the
uninterrupted one, after a stop between epochs, SIGTERM mid-epoch (also to
every process of the job), SIGKILL mid-epoch, or a truncated checkpoint;
a NaN loss stops with the last good checkpoint kept. Same weights, momentum,
schedule and history, bit for bit (CPU, one thread)."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from rspnet.engine.session import EXIT_DIVERGED, EXIT_STOPPED
from rspnet.train import Trainer, checkpoint_series
from rspnet.train import load_train_checkpoint as load_checkpoint
from rspnet.train.__main__ import main
from tests.helpers import ROOT
from tests.helpers.training import TINY


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
    root = ROOT
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

    def poisoned(config, *args, **kwargs):
        loss_fn, calls = real(config, *args, **kwargs), []

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
    root = ROOT
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
