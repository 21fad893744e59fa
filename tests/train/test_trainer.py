"""rspnet.train's Trainer and data sets: the loss falls on a tiny set, the
data sets are cached and deterministic, a run on a Cityscapes tree, and mixed
precision on the GPU. Tiny shapes: every test runs in seconds."""
import math

import pytest
import torch

from rspnet import data
from rspnet.architecture import Architecture
from rspnet.train import TrainConfig, Trainer, build_datasets
from rspnet.train import load_train_checkpoint as load_checkpoint
from rspnet.train.__main__ import main
from tests.helpers.training import TINY


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


def test_datasets_are_cached_and_deterministic():
    config = TrainConfig(size=(64, 64), train_images=3, val_images=2, augment=True)
    train, val = build_datasets(config)
    a, b = train[1], train[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    train.set_epoch(1)
    assert not torch.equal(train[1][0], a[0])  # augmentation changes per epoch
    assert len(val) == 2 and val[0][0].shape == (3, 64, 64)


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
