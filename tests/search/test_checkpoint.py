import random

import numpy as np
import pytest
import torch

from rspnet.search.atomic import atomic_open
from rspnet.search.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


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
