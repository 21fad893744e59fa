"""Fault tolerance of the search: SIGKILL mid-epoch, SIGTERM, NaN, damaged
checkpoints. The reference is an uninterrupted run with the same seed; a
resumed run must end bit for bit where it ends (CPU, one thread,
``--deterministic``)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rspnet.architecture import Architecture
from rspnet.engine.session import EXIT_DIVERGED, EXIT_STOPPED
from rspnet.search.__main__ import main
from rspnet.search.architect import Architect
from rspnet.search.stage import StageSearch, checkpoint_series, load_search_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 16 images: halves of 8, batches of 2 -> 4 steps per epoch, 8 in all; warm-up 1 epoch
ARGS = ["--stage", "1", "--size", "32x32", "--images", "16", "--batch-size", "2", "--epochs", "2",
        "--channels", "4", "--no-progress", "--deterministic", "--checkpoint-every", "1"]


@pytest.fixture(autouse=True)
def _restore_determinism():
    flag, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(flag, warn_only=warn)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    flag, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("reference")
    assert main(ARGS + ["--out", str(out)]) == 0
    torch.use_deterministic_algorithms(flag, warn_only=warn)
    torch.set_num_threads(threads)
    return out


def _strip(state):
    history = [{k: v for k, v in h.items() if k != "elapsed"} for h in state["history"]]
    return {**state, "history": history}


def assert_same_search(reference, out):
    """Same newest checkpoint (weights, α, BN statistics, both optimisers, the
    scheduler, the logged history) and the same architecture file."""
    (na, pa), (nb, pb) = checkpoint_series(reference, 1).list()[-1], checkpoint_series(out, 1).list()[-1]
    assert na == nb == 8
    a, b = load_search_checkpoint(pa), load_search_checkpoint(pb)
    for key in ("epoch", "batch", "step", "scheduler", "history"):
        assert _strip(a)[key] == _strip(b)[key], key
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for opt in ("w_optimizer", "a_optimizer"):
        for index, slots in a[opt]["state"].items():
            for slot, value in slots.items():
                assert torch.equal(value, b[opt]["state"][index][slot]), (opt, index, slot)
    assert Architecture.load(reference / "architecture.json") == Architecture.load(out / "architecture.json")


def _launch(out):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.Popen([sys.executable, "-m", "rspnet.search", *ARGS, "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"the search ended before {path} appeared:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.01)


def test_sigkill_mid_epoch_then_resume_auto_ends_bit_identical(reference, tmp_path):
    out = tmp_path / "killed"
    proc = _launch(out)
    # step 5 is batch 1 of epoch 2 (architecture updates on): kill as soon as its checkpoint exists
    _wait_for(checkpoint_series(out, 1).path(5), proc)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stdout.close()
    newest = load_search_checkpoint(checkpoint_series(out, 1).list()[-1][1])
    assert newest["epoch"] == 1 and 0 < newest["batch"] < 4, "the kill was meant to land mid-epoch"
    assert main(ARGS + ["--out", str(out), "--resume", "auto"]) == 0
    log = (out / "search.log").read_text()
    assert f"resumed from {checkpoint_series(out, 1).path(newest['step'])} at epoch 2, batch {newest['batch']}/4" in log
    assert_same_search(reference, out)


def test_sigterm_writes_a_checkpoint_and_exits_resumable(reference, tmp_path):
    out = tmp_path / "terminated"
    proc = _launch(out)
    _wait_for(checkpoint_series(out, 1).path(1), proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, output   # not 0: `search && train` must not carry on
    newest_step, newest_path = checkpoint_series(out, 1).list()[-1]
    state = load_search_checkpoint(newest_path)
    assert state["step"] == newest_step < 8
    line = [ln for ln in (out / "search.log").read_text().splitlines() if ln.startswith("stopped by")]
    assert line == [f"stopped by SIGTERM at stage 1 step {newest_step} (epoch {state['epoch'] + 1}, batch "
                    f"{state['batch']}/4): checkpoint written to {newest_path}; continue with "
                    f"--resume auto --out {out}"]
    assert not (out / "architecture.json").exists()
    assert main(ARGS + ["--out", str(out), "--resume"]) == 0
    assert_same_search(reference, out)


def test_truncated_checkpoint_is_rejected_and_auto_falls_back(reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(ARGS + ["--out", str(out)]) == 0
    assert [n for n, _ in checkpoint_series(out, 1).list()] == [6, 7, 8]   # --keep-checkpoints 3
    final = checkpoint_series(out, 1).path(8)
    size = os.path.getsize(final)
    with open(final, "r+b") as f:
        f.truncate(size // 2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(ARGS + ["--out", str(out), "--resume", final])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--resume: checkpoint {final!r} is truncated or corrupt and cannot be read" in err
    assert "Traceback" not in err
    assert main(ARGS + ["--out", str(out), "--resume", "auto"]) == 0
    log = (out / "search.log").read_text()
    assert f"warning: checkpoint {final!r} is truncated or corrupt" in log and "falling back" in log
    assert f"resumed from {checkpoint_series(out, 1).path(7)} at epoch 2, batch 3/4" in log
    assert_same_search(reference, out)   # step 8 redone from step 7, identically


def _poison_images(step):
    real = StageSearch._to

    def to(self, batch):
        images, labels = real(self, batch)
        return (images * float("nan") if self.step == step else images), labels
    return to


def _poison_alpha(step):
    real = Architect.step

    def arch_step(self, *args, **kwargs):
        loss = real(self, *args, **kwargs)
        if self.model.training and _poison_alpha.search.step == step:
            with torch.no_grad():
                self.model.alphas[3, 1] = float("inf")
        return loss
    return arch_step


def _poison_arch_loss(step):
    real = Architect.arch_loss

    def arch_loss(self, images, labels):
        loss = real(self, images, labels)
        return loss * float("nan") if _poison_alpha.search.step == step else loss
    return arch_loss


@pytest.mark.parametrize("target, poison, message", [
    (StageSearch, "_to", "the weight loss (split A) is nan at stage 1 step 3 (epoch 1, batch 3/4)"),
    (Architect, "step", "the architecture parameter alpha is inf (1 of 80 entries) at stage 1 step 7 "
                        "(epoch 2, batch 3/4)"),
    (Architect, "arch_loss", "the architecture loss (split B) is nan at stage 1 step 7 (epoch 2, batch 3/4)"),
])
def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, capsys, target, poison, message):
    step = 2 if poison == "_to" else 6           # steps counted from 0: the 3rd / the 7th
    make = {"_to": _poison_images, "step": _poison_alpha, "arch_loss": _poison_arch_loss}[poison]
    init = StageSearch.__init__

    def remember(self, *args, **kwargs):          # lets the architect patches see the step
        init(self, *args, **kwargs)
        _poison_alpha.search = self
    monkeypatch.setattr(StageSearch, "__init__", remember)
    monkeypatch.setattr(target, poison, make(step))
    out = tmp_path / "nan"
    assert main(ARGS + ["--out", str(out), "--keep-checkpoints", "0"]) == EXIT_DIVERGED
    err = capsys.readouterr().err
    last = checkpoint_series(out, 1).path(step)
    assert message in err, err
    assert f"Nothing was written after the last good checkpoint, {last}" in err
    assert message in (out / "search.log").read_text()
    assert [n for n, _ in checkpoint_series(out, 1).list()] == list(range(1, step + 1))
    state = load_search_checkpoint(last)               # intact and verified
    assert state["step"] == step and all(torch.isfinite(v).all() for v in state["model"].values()
                                         if v.is_floating_point())
    assert not (out / "architecture.json").exists()
