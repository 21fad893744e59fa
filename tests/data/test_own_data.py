"""Your own data: a folder data set and a CamVid tree through search, train,
evaluate and predict; the class count from classes.json to the head and the
tables; evaluate's mIoU against a confusion matrix computed here; every bad
input a one-line error with nothing written; predict at the image's own size.

The trees are synthetic scenes with their classes merged (``rspnet.data.layouts``),
small enough that every command runs in a second or two."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import rspnet
from rspnet import data
from rspnet.architecture import Architecture
from rspnet.evaluate import main as evaluate_main
from rspnet.models import RSPNet
from rspnet.predict.__main__ import main as predict_main
from rspnet.search.__main__ import main as search_main
from rspnet.train import load_train_checkpoint
from rspnet.train.__main__ import main as train_main
from tests.helpers.architectures import make_architecture

SEARCH = ["--size", "32x32", "--images", "4", "--batch-size", "2", "--epochs", "1", "--channels", "4",
          "--layers", "2", "--no-progress", "--threads", "1"]
TRAIN = ["--size", "32x32", "--batch-size", "2", "--epochs", "1", "--no-progress", "--threads", "1"]
SIZE = (64, 96)          # multiples of 32: evaluate feeds them to the network as they are
FOLDER_IGNORE = 250      # not 255, so that the mapping to rspnet's internal void is exercised


def write_tree(kind, root):
    if kind == "folder":
        data.write_folder_layout(root, {"train": 4, "val": 2}, size=SIZE, seed=1, ignore_index=FOLDER_IGNORE)
    else:   # the SegNet copy's void 11
        data.write_camvid_layout(root, {"train": 4, "val": 2, "test": 2}, size=SIZE, seed=2, void=11)
    return str(root)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(kind)``: search -> train on a small tree of that kind, once per module."""
    done = {}

    def get(kind):
        if kind not in done:
            done[kind] = _pipeline(kind, tmp_path_factory.mktemp(kind))
        return done[kind]
    return get


def _pipeline(kind, base):
    root = write_tree(kind, base / "data")
    common = ["--data", kind, "--data-root", root]
    assert search_main([*common, *SEARCH, "--out", str(base / "search")]) == 0
    arch = str(base / "search" / "architecture.json")
    assert train_main(["--arch", arch, *common, *TRAIN, "--out", str(base / "train")]) == 0
    return {"kind": kind, "root": root, "common": common, "arch": arch, "base": base,
            "checkpoint": str(base / "train" / "best.pt"),
            "classes": (data.FOLDER_DEMO_CLASSES if kind == "folder" else data.CAMVID.names)}


# ------------------------------------------------------------ end to end
@pytest.mark.parametrize("kind", ["folder", "camvid"])
def test_class_count_flows_from_the_data_to_head_and_tables(kind, runs, tmp_path, capsys):
    pipeline = runs(kind)
    names = list(pipeline["classes"])
    summary = json.loads((pipeline["base"] / "search" / "summary.json").read_text())
    assert summary["classes"]["names"] == names
    assert summary["derived"]["params"] == sum(
        p.numel() for p in RSPNet(pipeline["arch"], len(names)).parameters())
    state = load_train_checkpoint(pipeline["checkpoint"])
    assert state["num_classes"] == len(names) and state["classes"]["names"] == names
    assert state["model"]["head.classifier.weight"].shape[0] == len(names)
    assert state["config"]["augment"] is True             # real images: augmented by default
    log = (pipeline["base"] / "train" / "train.log").read_text()
    assert f"{pipeline['kind']} data ({len(names)} classes)" in log

    report = tmp_path / "eval.json"
    split = ["--split", "test"] if pipeline["kind"] == "camvid" else []
    capsys.readouterr()
    assert evaluate_main(["--arch", pipeline["arch"], "--checkpoint", pipeline["checkpoint"],
                          *pipeline["common"], *split, "--report", str(report), "--no-progress",
                          "--save-predictions", str(tmp_path / "preds")]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in names) and "mIoU" in out
    result = json.loads(report.read_text())
    assert list(result["per_class"]) == names and result["images"] == 2
    masks = sorted(os.listdir(tmp_path / "preds" / "masks" / ("test" if split else "val")))
    assert masks == ["scene_0000.png", "scene_0001.png"]


@pytest.mark.parametrize("kind", ["folder", "camvid"])
def test_predict_a_folder_keeps_its_file_names(kind, runs, tmp_path):
    pipeline = runs(kind)
    images = os.path.join(pipeline["root"], "images", "val") if pipeline["kind"] == "folder" \
        else os.path.join(pipeline["root"], "val")
    # a nested copy: relative paths are kept
    inputs = tmp_path / "in"
    shutil.copytree(images, inputs / "sub")
    shutil.copy(os.path.join(images, "scene_0000.png"), inputs / "top.png")
    out = tmp_path / "out"
    assert predict_main(["--arch", pipeline["arch"], "--checkpoint", pipeline["checkpoint"], str(inputs),
                         "--out", str(out), "--no-progress", "--batch-size", "2", "--flip"]) == 0
    expected = ["sub/scene_0000.png", "sub/scene_0001.png", "top.png"]
    for kind in ("classes", "overlay"):
        found = sorted(os.path.relpath(os.path.join(d, f), out / kind) for d, _, fs in os.walk(out / kind) for f in fs)
        assert found == expected, kind
    classes = np.array(Image.open(out / "classes" / "top.png"))
    assert classes.shape == SIZE and classes.max() < len(pipeline["classes"])
    assert np.array_equal(classes, np.array(Image.open(out / "classes" / "sub" / "scene_0000.png")))
    assert np.array(Image.open(out / "overlay" / "top.png").convert("RGB")).shape == (*SIZE, 3)


def test_folder_miou_equals_an_independent_confusion_matrix(runs, tmp_path):
    pipeline = runs("folder")
    report = tmp_path / "eval.json"
    assert evaluate_main(["--arch", pipeline["arch"], "--checkpoint", pipeline["checkpoint"],
                          *pipeline["common"], "--report", str(report), "--no-progress"]) == 0
    result = json.loads(report.read_text())

    # the network straight from the checkpoint's weights, the files read here
    state = torch.load(pipeline["checkpoint"], map_location="cpu", weights_only=False)
    model = RSPNet(Architecture.load(pipeline["arch"]), 5)
    model.load_state_dict(state["model"])
    model.eval()
    mean, std = np.array(data.MEAN), np.array(data.STD)
    confusion = np.zeros((5, 5), np.int64)
    for name in ("scene_0000", "scene_0001"):
        image = np.array(Image.open(os.path.join(pipeline["root"], "images", "val", name + ".png")))
        mask = np.array(Image.open(os.path.join(pipeline["root"], "masks", "val", name + ".png")))
        x = torch.from_numpy(((image / 255.0 - mean) / std).transpose(2, 0, 1)).float()[None]
        with torch.no_grad():
            pred = model(x)[0].argmax(0).numpy()
        keep = mask != FOLDER_IGNORE
        assert keep.sum() < mask.size and mask[keep].max() < 5     # void present, the rest classes
        confusion += np.bincount(mask[keep].astype(np.int64) * 5 + pred[keep], minlength=25).reshape(5, 5)
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    assert result["labelled_pixels"] == confusion.sum()
    assert result["miou"] == pytest.approx(iou.mean(), abs=1e-12)
    assert result["confusion_matrix"] == confusion.tolist()


# ------------------------------------------------------------- predict
def test_predict_odd_size_equals_the_argmax_of_the_logits(runs, tmp_path):
    pipeline = runs("camvid")
    rng = np.random.default_rng(0)
    picture = (rng.random((333, 517, 3)) * 255).astype(np.uint8)
    path = tmp_path / "odd.jpg"
    Image.fromarray(picture).save(path, quality=95)
    out = tmp_path / "out"
    assert predict_main(["--arch", pipeline["arch"], "--checkpoint", pipeline["checkpoint"], str(path),
                         "--out", str(out), "--no-progress"]) == 0
    written = np.array(Image.open(out / "classes" / "odd.png"))
    assert written.shape == (333, 517)
    with Image.open(out / "overlay" / "odd.png") as overlay:
        assert overlay.size == (517, 333)

    state = torch.load(pipeline["checkpoint"], map_location="cpu", weights_only=False)
    model = RSPNet(Architecture.load(pipeline["arch"]), 11)
    model.load_state_dict(state["model"])
    model.eval()
    decoded = np.array(Image.open(path).convert("RGB"))
    x = torch.from_numpy(((decoded / 255.0 - np.array(data.MEAN)) / np.array(data.STD)).transpose(2, 0, 1))
    padded = torch.zeros(1, 3, 352, 544)          # the next multiples of 32, zero = the mean colour
    padded[0, :, :333, :517] = x.float()
    with torch.no_grad():
        logits = model(padded)[0, :, :333, :517]
    assert np.array_equal(written, logits.argmax(0).numpy())
    # the same from Python: rspnet.predict(model, image)
    assert np.array_equal(rspnet.predict(model, decoded), written)
    assert np.array_equal(rspnet.predict(model, str(path)), written)


# ------------------------------------------------------------ bad input
def _pristine(tmp_path_factory, kind):
    return write_tree(kind, tmp_path_factory.mktemp("pristine") / kind)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return {kind: _pristine(tmp_path_factory, kind) for kind in ("folder", "camvid")}


def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"this is not an image")


def _text(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def _mask(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


# (data set, change to the tree -> the path the message must name, words of the message)
BAD = {
    "image without mask": ("folder", lambda r: os.remove(f"{r}/masks/train/scene_0001.png")
                           or f"{r}/images/train/scene_0001.png", "has no mask"),
    "mask without image": ("folder", lambda r: os.remove(f"{r}/images/val/scene_0000.png")
                           or f"{r}/masks/val/scene_0000.png", "has no image"),
    "mask size": ("folder", lambda r: _mask(f"{r}/masks/train/scene_0002.png", np.zeros((64, 95)))
                  or f"{r}/masks/train/scene_0002.png", "differs from image size"),
    "mask value": ("folder", lambda r: _mask(f"{r}/masks/val/scene_0001.png", np.full(SIZE, 7))
                   or f"{r}/masks/val/scene_0001.png", "mask value 7 is neither a class"),
    "colour mask": ("folder", lambda r: _mask(f"{r}/masks/val/scene_0001.png", np.zeros((*SIZE, 3)))
                    or f"{r}/masks/val/scene_0001.png", "single-channel"),
    "unreadable image": ("folder", lambda r: _garbage(f"{r}/images/train/scene_0003.png")
                         or f"{r}/images/train/scene_0003.png", "cannot read"),
    "unreadable mask": ("folder", lambda r: _garbage(f"{r}/masks/train/scene_0000.png")
                        or f"{r}/masks/train/scene_0000.png", "cannot read"),
    "classes.json not JSON": ("folder", lambda r: _text(f"{r}/classes.json", "{\"classes\": ["),
                              "not valid JSON"),
    "classes.json ignore is a class": ("folder", lambda r: _text(f"{r}/classes.json", json.dumps(
        {"classes": ["a", "b", "c", "d", "e"], "ignore_index": 3})), "is a class index"),
    "classes.json colours": ("folder", lambda r: _text(f"{r}/classes.json", json.dumps(
        {"classes": ["a", "b", "c", "d", "e"], "colors": [[0, 0, 0]]})), "one [r, g, b] per class"),
    "classes.json missing": ("folder", lambda r: os.remove(f"{r}/classes.json") or f"{r}/classes.json",
                             "no such file"),
    "folder split missing": ("folder", lambda r: shutil.rmtree(f"{r}/masks/val") or f"{r}/masks/val",
                             "is missing"),
    "camvid annotations missing": ("camvid", lambda r: shutil.rmtree(f"{r}/valannot") or f"{r}/valannot",
                                   "is missing"),
    "camvid mask value": ("camvid", lambda r: _mask(f"{r}/trainannot/scene_0000.png", np.full(SIZE, 12))
                          or f"{r}/trainannot/scene_0000.png", "mask value 12"),
    "cityscapes without splits": ("cityscapes", lambda r: os.makedirs(f"{r}/leftImg8bit") or f"{r}/leftImg8bit/train",
                                  "is missing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_a_one_line_error_before_anything_is_written(case, pristine, tmp_path, capsys):
    kind, change, words = BAD[case]
    root = str(tmp_path / "data")
    if kind == "cityscapes":
        os.makedirs(root)
    else:
        shutil.copytree(pristine[kind], root)
    path = change(root)
    out = tmp_path / "out"
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(make_architecture(0)))
    with pytest.raises(SystemExit) as exc:
        train_main(["--arch", str(arch), "--data", kind, "--data-root", root, *TRAIN, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    message = err.strip().splitlines()[-1]
    assert "Traceback" not in err and words in message and path in message, err
    assert not out.exists()


@pytest.mark.parametrize("command", ["search", "evaluate"])
def test_search_and_evaluate_refuse_bad_data_too(command, runs, pristine, tmp_path, capsys):
    pipeline = runs("folder")
    root = str(tmp_path / "data")
    shutil.copytree(pristine["folder"], root)
    bad = f"{root}/masks/{'train' if command == 'search' else 'val'}/scene_0001.png"
    _mask(bad, np.full(SIZE, 9))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        if command == "search":
            search_main(["--data", "folder", "--data-root", root, *SEARCH, "--out", str(out)])
        else:
            evaluate_main(["--arch", pipeline["arch"], "--checkpoint", pipeline["checkpoint"], "--data", "folder",
                           "--data-root", root, "--save-predictions", str(out), "--report", str(out / "r.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and bad in err and "mask value 9" in err
    assert not out.exists()


def test_evaluate_refuses_a_checkpoint_of_other_classes(runs, pristine, capsys):
    pipeline, other = runs("folder"), "camvid"
    with pytest.raises(SystemExit) as exc:
        evaluate_main(["--arch", pipeline["arch"], "--checkpoint", pipeline["checkpoint"], "--data", other,
                       "--data-root", pristine[other]])
    assert exc.value.code == 2 and f"(--data {other})" in capsys.readouterr().err


def test_predict_bad_inputs_write_nothing(runs, tmp_path, capsys):
    pipeline = runs("folder")
    good = os.path.join(pipeline["root"], "images", "val", "scene_0000.png")
    garbage = tmp_path / "broken.png"
    _garbage(garbage)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a").mkdir()
    shutil.copy(good, tmp_path / "a" / "scene_0000.png")
    for inputs, words in (([good, str(garbage)], f"cannot read {garbage}"),
                          ([str(tmp_path / "missing.png")], "no such file or directory"),
                          ([str(tmp_path / "empty")], "no images"),
                          ([good, str(tmp_path / "a" / "scene_0000.png")], "would both be written as scene_0000")):
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as exc:
            predict_main(["--arch", pipeline["arch"], "--checkpoint", pipeline["checkpoint"], *inputs,
                          "--out", str(out)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and words in err and "Traceback" not in err, err
        assert not out.exists()


# ------------------------------------------------------------ class tables
def test_classes_json_forms():
    table = data.parse_classes({"classes": [{"name": "bg", "color": [1, 2, 3]}, "fg"], "ignore_index": 9})
    assert table.names == ("bg", "fg") and table.colours[0].tolist() == [1, 2, 3]
    assert table.decode(np.array([[0, 1, 9]], np.uint8)).tolist() == [[0, 1, 255]]
    assert table.encode(np.array([0, 1, 255])).tolist() == [0, 1, 9]
    with pytest.raises(ValueError, match="mask value 2"):
        table.decode(np.array([[2]], np.uint8), "m.png")
    for bad, words in (({"classes": []}, "non-empty"), ({"classes": ["a", "a"]}, "twice"),
                       ({"classes": ["a"], "ignore_index": 300}, "0..255"),
                       ({"classes": ["a"], "colors": [[0, 0, 256]]}, "integers 0..255"),
                       ({"names": ["a"]}, "unknown key"), ([1, 2], "JSON object")):
        with pytest.raises(ValueError, match=words):
            data.parse_classes(bad)
    assert data.ClassTable.from_dict(table.to_dict()).to_dict() == table.to_dict()
    # CamVid: both void conventions
    assert data.CAMVID.decode(np.array([[10, 11, 255]], np.uint8)).tolist() == [[10, 255, 255]]
