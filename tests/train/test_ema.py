"""``--ema``: the moving average of the weights. Each step's average is the
formula's (against the previous checkpoint's average and this step's trained
weights, in float64), the optimisation itself is the run without it, bit for
bit, validation and ``best.pt`` are the average's, and a resumed run ends like
the uninterrupted one."""
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from rspnet import data
from rspnet.architecture import Architecture
from rspnet.models import RSPNet
from rspnet.train import TrainConfig, build_datasets, load_train_checkpoint
from rspnet.train.__main__ import main
from rspnet.train.validation import validate
from tests.helpers.training import TINY

DECAY = 0.2   # below the warm-up's (1 + t) / (10 + t) from the third step on: both branches run
RUN = ["--epochs", "2", "--val-every", "1", "--keep", "0", "--ema", str(DECAY), *TINY]


def _state(out, step):
    return load_train_checkpoint(out / f"checkpoint-step{step:08d}.pt")


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, arch_file):
    out = tmp_path_factory.mktemp("ema")
    assert main(["--arch", arch_file, "--out", str(out), "--checkpoint-every", "1", *RUN]) == 0
    return out


def test_each_step_is_the_formula_and_the_training_is_unchanged(ema_run, trained_run):
    for step in (2, 3, 4):
        before, now = _state(ema_run, step - 1), _state(ema_run, step)
        decay = min(DECAY, step / (9 + step))   # t = step - 1 earlier steps: (1 + t) / (10 + t)
        for name, avg in now["model"].items():
            trained = now["trained_model"][name]
            if avg.is_floating_point():
                expected = decay * before["model"][name].double() + (1 - decay) * trained.double()
                torch.testing.assert_close(avg.double(), expected, rtol=1e-6, atol=1e-7, msg=name)
            else:
                assert torch.equal(avg, trained), name
    # the optimiser saw the same weights as the run without --ema (same flags otherwise)
    plain, averaged = _state(trained_run, 4), _state(ema_run, 4)
    for name, w in plain["model"].items():
        assert torch.equal(w, averaged["trained_model"][name]), name
    assert any(not torch.equal(averaged["model"][n], averaged["trained_model"][n])
               for n in averaged["model"] if averaged["model"][n].is_floating_point())


def test_validation_and_best_are_the_averages(ema_run, arch_file):
    state = _state(ema_run, 4)
    config = TrainConfig(**{**state["config"], "size": tuple(state["config"]["size"])})
    _, val = build_datasets(config)
    names = data.class_table(config.data, config.data_root).names
    losses = {}
    for key in ("model", "trained_model"):
        model = RSPNet(Architecture.load(arch_file), state["num_classes"])
        model.load_state_dict(state[key])
        losses[key] = validate(model, DataLoader(val, batch_size=2), torch.device("cpu"), names)["loss"]
    assert state["history"][-1]["val_loss"] == losses["model"] != losses["trained_model"]
    best = load_train_checkpoint(ema_run / "best.pt")
    source = _state(ema_run, 2 * best["best_epoch"])
    for name, w in best["model"].items():
        assert torch.equal(w, source["model"][name]), name


def test_resume_with_the_average_continues_exactly(ema_run, arch_file, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(ema_run / "checkpoint-step00000002.pt", out / "checkpoint-step00000002.pt")
    assert main(["--arch", arch_file, "--out", str(out), "--resume", "auto", *RUN]) == 0
    a, b = _state(ema_run, 4), _state(out, 4)
    for key in ("model", "trained_model"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
