"""The real-data recipe's settings: ``--crop`` (random crops smaller than the
validation size), ``--optimizer adam``, ``--train-split trainval`` and the
CamVid presets, each against what it must compute, and their refusals."""
import os

import numpy as np
import pytest
import torch

from rspnet import data
from rspnet.engine.settings import load_config
from rspnet.train import TrainConfig, build_datasets, check_config
from rspnet.train.losses import class_pixel_counts
from tests.helpers.architectures import fixed_architecture


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe") / "CamVid"
    data.write_camvid_layout(root, {"train": 4, "val": 2, "test": 2}, size=(64, 96), seed=5, void=11)
    return str(root)


def _config(camvid, **kw):
    return TrainConfig(**{"data": "camvid", "data_root": camvid, "size": (64, 96), "augment": True,
                          "batch_size": 2, **kw})


def test_crops_train_at_the_crop_and_validate_at_the_size(camvid):
    train, val = build_datasets(_config(camvid, crop=(32, 64)))
    image, label = train[0]
    assert image.shape == (3, 32, 64) and label.shape == (32, 64)
    image, label = val[0]
    assert image.shape == (3, 64, 96) and label.shape == (64, 96)


def test_trainval_trains_on_both_splits_and_weighs_by_both(camvid):
    config = _config(camvid, train_split="trainval", augment=False)
    train, val = build_datasets(config)
    alone = data.get_dataset("camvid", "train", root=camvid, size=(64, 96))
    held = data.get_dataset("camvid", "val", root=camvid, size=(64, 96))
    assert len(train) == len(alone) + len(held) and len(val) == len(held)
    assert [os.path.basename(p) for p in train.images] == \
        [os.path.basename(p) for p in alone.images + held.images]
    # the class counts of the merged set are those of the two splits added
    both = [class_pixel_counts(d, data.CAMVID.num_classes) for d in (alone, held)]
    merged = class_pixel_counts(train, data.CAMVID.num_classes)
    np.testing.assert_array_equal(merged[0], both[0][0] + both[1][0])
    # and its items are the splits' own, in order
    for i, d in ((0, alone), (len(alone), held)):
        torch.testing.assert_close(train[i][1], d[i - (0 if d is alone else len(alone))][1])


def test_adam_is_built_with_its_own_default_learning_rate(camvid, tmp_path):
    from rspnet.train.__main__ import main

    arch = tmp_path / "a.json"
    fixed_architecture().save(arch)
    out = tmp_path / "run"
    assert main(["--arch", str(arch), "--data", "camvid", "--data-root", camvid, "--size", "32x64",
                 "--optimizer", "adam", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    import json
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["optimizer"] == "adam" and config["lr"] == 1e-3
    state = torch.load(out / "best.pt", weights_only=True)
    assert "exp_avg" in next(iter(state["optimizer"]["state"].values()))   # Adam's moments, not SGD's


@pytest.mark.parametrize("changes, message", [
    ({"crop": (128, 64)}, "--crop 128x64 is larger than --size 64x96"),
    ({"crop": (32, 32), "augment": False}, "--crop needs --augment"),
    ({"optimizer": "adam", "nesterov": True}, "--nesterov is for --optimizer sgd"),
    ({"class_crops": 1.5}, r"--class-crops is a fraction in \[0, 1\], got 1.5"),
    ({"class_crops": float("nan")}, r"--class-crops is a fraction in \[0, 1\], got nan"),
    ({"class_crops": 0.5, "augment": False}, "--class-crops needs --augment"),
])
def test_recipe_settings_that_cannot_train_are_refused(camvid, changes, message):
    with pytest.raises(ValueError, match=message):
        check_config(_config(camvid, **changes))


def test_with_crops_the_validation_size_need_not_be_a_multiple_of_32(camvid, tmp_path):
    """CamVid's own 360x480: crops of multiples of 32 train, validation pads
    (the one inference path); without --crop such a size is refused."""
    from rspnet.train.__main__ import main

    arch = tmp_path / "a.json"
    fixed_architecture().save(arch)
    out = tmp_path / "run"
    assert main(["--arch", str(arch), "--data", "camvid", "--data-root", camvid, "--size", "72x100",
                 "--crop", "64x96", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    with pytest.raises(ValueError, match="without --crop the training crops are --size"):
        check_config(_config(camvid, size=(72, 100)))


def test_trainval_is_refused_on_the_synthetic_scenes():
    with pytest.raises(ValueError, match="--train-split trainval is for --data camvid or folder"):
        check_config(TrainConfig(train_split="trainval"))


@pytest.mark.parametrize("name", ["camvid-cpu", "camvid-gpu"])
def test_the_camvid_presets_are_valid_settings(name, camvid):
    values = load_config(TrainConfig, name, "train")
    assert values["data"] == "camvid" and values["class_weights"] == "enet"
    config = TrainConfig(**{**values, "data_root": camvid, "device": "cpu"})
    check_config(config)
    if name == "camvid-gpu":
        assert config.train_split == "trainval" and config.size == (360, 480) and config.crop == (352, 480)


@pytest.mark.parametrize("flags, expected", [
    ([], ("sgd", 0.05, "none")),                                     # the synthetic smoke run
    (["--data", "camvid"], ("adam", 1e-3, "enet")),                  # real images: what won on CamVid
    (["--data", "camvid", "--ohem"], ("adam", 1e-3, "none")),        # OHEM chooses pixels, no weights
    (["--data", "camvid", "--optimizer", "sgd"], ("sgd", 0.05, "enet")),
    (["--data", "camvid", "--class-weights", "none", "--lr", "0.01"], ("adam", 0.01, "none")),
])
def test_the_command_line_defaults_follow_the_data(flags, expected, camvid):
    from rspnet.cli import config_of
    from rspnet.train.__main__ import build_parser

    parser = build_parser()
    args = parser.parse_args(["--arch", "a.json", *flags, *(["--data-root", camvid] if flags else [])])
    config = config_of(parser, args, TrainConfig, "train")
    assert (config.optimizer, config.lr, config.class_weights) == expected


@pytest.mark.parametrize("flags, expected", [
    ([], ((64, 128), 16, 8, "concat", None)),                                  # the synthetic smoke search
    (["--data", "camvid"], ((96, 128), 24, 4, "detail", 32)),                  # real images: what won on CamVid
    (["--data", "folder"], ((64, 128), 24, 4, "detail", 32)),
    (["--data", "camvid", "--layers", "8", "--head", "concat", "--size", "64x64"], ((64, 64), 24, 8, "concat", 32)),
    (["--data", "camvid", "--channels", "16", "--head-channels", "48"], ((96, 128), 16, 4, "detail", 48)),
    (["--data", "camvid", "--head", "light"], ((96, 128), 24, 4, "light", 32)),
])
def test_the_search_space_defaults_follow_the_data(flags, expected, camvid, tmp_path):
    """``rspnet.search`` on real images defaults to the space that trained
    best on CamVid (4 layers, F = 24, the detail head at 32; CamVid's 3:4
    frames at 96x128); the synthetic scenes keep the smoke test's space; a flag
    given wins."""
    from rspnet.cli import config_of
    from rspnet.search import SearchConfig
    from rspnet.search.__main__ import build_parser

    folder = tmp_path / "own"
    data.write_folder_layout(folder, {"train": 2, "val": 1}, size=(32, 32), seed=0) \
        if "folder" in flags else None
    root = {"camvid": camvid, "folder": str(folder)}.get(flags[1] if flags else None)
    parser = build_parser()
    args = parser.parse_args([*flags, *(["--data-root", root] if root else [])])
    config = config_of(parser, args, SearchConfig, "search")
    assert (config.size, config.channels, config.layers, config.head, config.head_channels) == expected


def test_the_camvid_search_preset_is_the_benchmarked_cost_aware_search(camvid):
    """``rspnet.search --config camvid``: the space real images default to,
    CamVid's 96x128 frames and the FLOPs budget that won on CamVid's val
    (0.095 GFLOPs with the light head, plus the detail head's 0.00634:
    docs/design.md §17); valid settings on a CamVid tree."""
    from rspnet.search import SearchConfig
    from rspnet.search.config import REAL_IMAGE_SPACE, check_config as check_search

    values = load_config(SearchConfig, "camvid", "search")
    assert values["flops_budget"] == pytest.approx(0.10134e9) and tuple(values["size"]) == (96, 128)
    assert values["head"] == "detail"
    assert {k: values[k] for k in REAL_IMAGE_SPACE} == REAL_IMAGE_SPACE
    check_search(SearchConfig(**{**values, "size": tuple(values["size"]), "data_root": camvid, "device": "cpu"}))
