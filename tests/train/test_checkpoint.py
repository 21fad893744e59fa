"""Training checkpoints load safely: a checkpoint of another architecture or
class count, truncated, garbage, empty, missing or foreign files and a
flipped bit are refused with a clear error, and nothing is ever unpickled."""
import os

import pytest
import torch

from rspnet import data
from rspnet.architecture import Architecture
from rspnet.engine.checkpoint import CheckpointError
from rspnet.train import check_architecture
from rspnet.train import load_train_checkpoint as load_checkpoint
from rspnet.train.__main__ import main
from tests.helpers.architectures import architecture_fingerprint
from tests.helpers.training import TINY


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
