"""Class-weighted training (``--class-weights``): the weights against the
published formulas computed here with numpy, the weighted loss against
``F.cross_entropy(weight=)``, and the weights kept with the run."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rspnet.nn import labelled_cross_entropy
from rspnet.train.losses import class_pixel_counts, class_weights


class Masks(torch.utils.data.Dataset):
    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return torch.zeros(3, *self.masks[i].shape), torch.from_numpy(self.masks[i].astype(np.int64))


def _masks():
    rng = np.random.default_rng(0)
    a = rng.choice([0, 1, 255], size=(6, 8), p=[0.7, 0.2, 0.1]).astype(np.uint8)
    b = rng.choice([0, 2], size=(6, 8), p=[0.5, 0.5]).astype(np.uint8)
    return [a, b]


def test_weights_follow_the_published_formulas():
    masks = _masks()
    pixels, present = class_pixel_counts(Masks(masks), 4)
    labelled = np.concatenate([m[m != 255] for m in masks])
    expected_pixels = np.array([(labelled == c).sum() for c in range(4)])
    np.testing.assert_array_equal(pixels, expected_pixels)
    enet = class_weights("enet", pixels, present)
    p = expected_pixels / expected_pixels.sum()
    np.testing.assert_allclose(enet[:3], 1 / np.log(1.02 + p[:3]))
    assert enet[3] == 0.0                                   # never seen
    freq = np.array([expected_pixels[c] / sum(m.size for m in masks if (m == c).any()) for c in range(3)])
    np.testing.assert_allclose(class_weights("median", pixels, present)[:3], np.median(freq) / freq)
    sqrt = class_weights("sqrt", pixels, present)
    np.testing.assert_allclose(sqrt[:3], p[:3] ** -0.5)
    assert sqrt[3] == 0.0
    assert class_weights("none", pixels, present) is None


def test_the_weighted_loss_is_torchs_weighted_mean():
    torch.manual_seed(0)
    scores = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 5, 5))
    labels[0, 0] = 255
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(labelled_cross_entropy(scores, labels, 255, weight),
                               F.cross_entropy(scores, labels, weight=weight, ignore_index=255))
    assert labelled_cross_entropy(scores, torch.full_like(labels, 255), 255, weight).item() == 0.0


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory):
    from rspnet.search.__main__ import main as search_main

    out = tmp_path_factory.mktemp("weights") / "a"
    assert search_main(["--random", "1", "--channels", "8", "--layers", "2", "--out", str(out), "--no-progress"]) == 0
    return str(out / "random-000.json")


def test_a_run_keeps_its_weights_and_resumes_with_them(tmp_path, arch_file):
    from rspnet.train import load_train_checkpoint
    from rspnet.train.__main__ import main as train_main

    args = ["--arch", arch_file, "--size", "64x64", "--train-images", "4",
            "--val-images", "2", "--batch-size", "2", "--no-progress", "--threads", "1", "--class-weights", "enet",
            "--out", str(tmp_path / "t")]
    assert train_main([*args, "--epochs", "1"]) == 0
    report = json.loads((tmp_path / "t" / "metrics.json").read_text())
    weights = report["class_weights"]
    assert len(weights) == 19 and any(w > 0 for w in weights) and report["config"]["class_weights"] == "enet"
    state = load_train_checkpoint(sorted((tmp_path / "t").glob("checkpoint-*.pt"))[-1])
    assert state["class_weights"] == weights
    assert train_main([*args, "--epochs", "2", "--resume", "auto"]) == 0
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["class_weights"] == weights


def test_class_weights_and_ohem_do_not_combine(capsys, arch_file):
    from rspnet.train.__main__ import main as train_main

    with pytest.raises(SystemExit) as exc:
        train_main(["--arch", arch_file, "--class-weights", "enet", "--ohem"])
    assert exc.value.code == 2 and "--class-weights and --ohem do not combine" in capsys.readouterr().err
