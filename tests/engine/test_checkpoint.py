"""rspnet.engine.checkpoint (and the RNG states of rspnet.engine.seeding), the
one checkpoint mechanism of the search and the training: RNG round trip,
atomic writes, checksums, rotation and fallback."""
import os
import random

import numpy as np
import pytest
import torch

from rspnet.engine.checkpoint import CheckpointError, CheckpointSeries, load_checkpoint, save_checkpoint
from rspnet.engine.seeding import rng_state, set_rng_state
from rspnet.files import atomic_open


def _draw():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"rng": rng_state(), "epoch": 3, "history": [{"a": None, "b": [1.5]}]}, path)
    expected = _draw()
    state = load_checkpoint(path)   # torch.load(weights_only=True)
    set_rng_state(state["rng"])
    assert _draw() == expected
    assert state["epoch"] == 3 and state["history"] == [{"a": None, "b": [1.5]}]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write(b"partial")
            raise RuntimeError("crash")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(64, 64, generator=g), "n": torch.tensor(3)},
            "epoch": seed, "lr": 0.025, "betas": (0.5, 0.999), "rng": rng_state()}


def test_checksum_detects_a_flipped_byte_and_truncation(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(_state(1), path)
    assert load_checkpoint(path)["epoch"] == 1
    raw = bytearray(path.read_bytes())
    good = bytes(raw)
    # flip one byte in the middle of the tensor data: still a readable zip, wrong numbers
    start = raw.index(b"data/0") + 200
    raw[start + 1000] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is corrupt: its content does not match its checksum"):
        load_checkpoint(path)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt and cannot be read"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(path)
    torch.save({"model": {}}, path)      # a plain torch.save: no checksum to verify
    with pytest.raises(CheckpointError, match="has no checksum"):
        load_checkpoint(path)
    save_checkpoint(_state(1), path)
    with pytest.raises(CheckpointError, match="expected 'rspnet-x/1'"):
        load_checkpoint(path, format="rspnet-x/1")


def test_series_keeps_the_newest_and_falls_back_past_damaged_files(tmp_path):
    series = CheckpointSeries(tmp_path, "checkpoint-stage1-step", keep=3)
    (tmp_path / "best.pt").write_bytes(b"other")
    for step in (2, 4, 6, 8, 10):
        series.save(_state(step), step)
    assert [n for n, _ in series.list()] == [6, 8, 10]
    assert (tmp_path / "best.pt").exists()
    path, state = series.latest_valid(warn=lambda m: None)
    assert path.endswith("checkpoint-stage1-step00000010.pt") and state["epoch"] == 10
    newest = series.path(10)
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) - 100)
    warnings = []
    path, state = series.latest_valid(warn=warnings.append)
    assert state["epoch"] == 8 and path == series.path(8)
    assert len(warnings) == 1 and "checkpoint-stage1-step00000010.pt" in warnings[0]
    assert "truncated or corrupt" in warnings[0] and "falling back" in warnings[0]
    for n in (6, 8):
        open(series.path(n), "wb").close()
    with pytest.raises(CheckpointError, match="none of the 3 checkpoints"):
        series.latest_valid(warn=warnings.append)
    assert CheckpointSeries(tmp_path / "empty", "x").latest_valid() is None
    keep_all = CheckpointSeries(tmp_path / "all", "c", keep=0)
    os.makedirs(keep_all.directory)
    for step in range(5):
        keep_all.save({"s": step}, step)
    assert len(keep_all.list()) == 5
