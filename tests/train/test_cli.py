"""``python -m rspnet.train``: what a run writes, what --resume auto and
--keep-checkpoints do, and bad input refused (exit 2) with nothing
overwritten. Tiny shapes: every test runs in seconds."""
import json
import os

import pytest
import torch

from rspnet.architecture import Architecture
from rspnet.train import checkpoint_series
from rspnet.train import load_train_checkpoint as load_checkpoint
from rspnet.train.__main__ import main
from tests.helpers.architectures import architecture_fingerprint
from tests.helpers.training import TINY


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


def test_keep_checkpoints_keeps_the_newest_and_best(arch_file, tmp_path):
    out = tmp_path / "keep"
    assert main(["--arch", arch_file, "--out", str(out), "--epochs", "3", "--val-every", "1",
                 "--keep-checkpoints", "2", *TINY]) == 0
    assert [n for n, _ in checkpoint_series(out).list()] == [4, 6]
    assert (out / "best.pt").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--size", "100x100"], "multiples of 32"),
    (["--epochs", "0"], "positive integer"),
    (["--batch-size", "1"], "at least 2"),
    (["--data", "cityscapes"], "--data-root"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--ohem-thresh", "1.5"], "--ohem-thresh"),
    (["--ema", "1"], "--ema is a decay in [0, 1)"),
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
