"""rspnet.evaluate: the CLI's mIoU equals the official Cityscapes evaluation
on the PNGs it saves; multi-scale/flip inference; checkpoint checks."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rspnet import data
from rspnet.evaluate import main, official_evaluation
from rspnet.architecture import Architecture
from rspnet.train.__main__ import main as train_main
from tests.helpers.architectures import architecture_fingerprint, make_architecture
from tests.helpers.training import TINY


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An architecture, a 2-epoch checkpoint, and a small Cityscapes tree."""
    base = tmp_path_factory.mktemp("evaluate")
    arch = base / "architecture.json"
    arch.write_text(json.dumps(make_architecture(0)))
    other = make_architecture(0)
    other["widths"]["head_channels"] = 24
    (base / "other.json").write_text(json.dumps(other))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_main(["--arch", str(arch), "--out", str(base / "train"), "--epochs", "2",
                           *TINY]) == 0
    finally:
        torch.set_num_threads(threads)
    root = base / "cityscapes"
    data.write_cityscapes_layout(root, {"val": 3}, size=(64, 128), seed=3)
    return {"arch": str(arch), "other": str(base / "other.json"),
            "checkpoint": str(base / "train" / "best.pt"), "root": str(root), "base": base}


def test_cityscapes_miou_equals_official_evaluation(run, tmp_path, capsys):
    preds = tmp_path / "preds"
    report_path = tmp_path / "report.json"
    assert main(["--arch", run["arch"], "--checkpoint", run["checkpoint"], "--data", "cityscapes",
                 "--data-root", run["root"], "--save-predictions", str(preds), "--official",
                 "--report", str(report_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "official cityscapesscripts mIoU" in out and "road" in out
    report = json.loads(report_path.read_text())
    assert report["images"] == 3 and report["labelled_pixels"] > 0

    # the official script, run by the CLI on its own PNGs ...
    assert report["official"]["miou"] == pytest.approx(report["miou"], abs=1e-6)
    for name in data.CLASS_NAMES:
        official = report["official"]["per_class_iou"][name]
        ours = report["per_class"][name]["iou"]
        assert (official is None) == (ours is None), name
        if ours is not None:
            assert ours == pytest.approx(official, abs=1e-6), name

    # ... and run again here, independently of the CLI's bookkeeping
    gt_files = sorted(
        os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(run["root"], "gtFine", "val"))
        for f in fs if f.endswith("_gtFine_labelIds.png"))
    result = official_evaluation(gt_files, str(preds / "labelIds"))
    assert result["averageScoreClasses"] == pytest.approx(report["miou"], abs=1e-6)

    # file names: the official stem, one labelId PNG and one overlay per image
    images = sorted(os.path.basename(p) for p in
                    (os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(run["root"], "leftImg8bit"))
                     for f in fs))
    written = sorted(os.path.basename(p) for p in
                     (os.path.join(dp, f) for dp, _, fs in os.walk(preds / "labelIds") for f in fs))
    assert written == images
    overlays = [f for _, _, fs in os.walk(preds / "overlay") for f in fs]
    assert len(overlays) == 3 and all(f.endswith("_overlay.png") for f in overlays)
    png = np.array(Image.open(next(
        os.path.join(dp, f) for dp, _, fs in os.walk(preds / "labelIds") for f in fs)))
    assert png.dtype == np.uint8 and png.ndim == 2 and png.shape == (64, 128)
    assert set(np.unique(png).tolist()) <= set(data.trainid_to_labelid(np.arange(19)).tolist())


def test_synthetic_multiscale_flip_report(run, tmp_path, capsys):
    report_path = tmp_path / "ms.json"
    assert main(["--arch", run["arch"], "--checkpoint", run["checkpoint"], "--images", "2",
                 "--scales", "0.75", "1.0", "1.25", "--flip", "--batch-size", "2",
                 "--report", str(report_path), "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    assert report["scales"] == [0.75, 1.0, 1.25] and report["flip"] is True
    assert report["input_size"] == [64, 64]           # the checkpoint's training size
    assert report["seed"] == 0
    assert 0 <= report["miou"] <= 1 and 0 <= report["pixel_accuracy"] <= 1
    assert report["architecture_fingerprint"] == architecture_fingerprint(Architecture.load(run["arch"]))
    assert "scales 0.75 1 1.25 + flip" in capsys.readouterr().out


def test_wrong_architecture_and_bad_input_are_argparse_errors(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--arch", run["other"], "--checkpoint", run["checkpoint"]])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert architecture_fingerprint(Architecture.load(run["other"])) in err
    assert architecture_fingerprint(Architecture.load(run["arch"])) in err
    assert "widths.head_channels" in err

    corrupt = tmp_path / "corrupt.pt"
    with open(run["checkpoint"], "rb") as f:
        corrupt.write_bytes(f.read()[:1000])
    for argv, message in [
        (["--checkpoint", str(corrupt)], "truncated or corrupt"),
        (["--checkpoint", str(tmp_path / "missing.pt")], "no such file"),
        (["--checkpoint", run["checkpoint"], "--scales", "0"], "--scales"),
        (["--checkpoint", run["checkpoint"], "--official"], "--save-predictions"),
        (["--checkpoint", run["checkpoint"], "--data", "cityscapes", "--data-root", str(tmp_path / "nope")],
         "--data-root"),
        (["--checkpoint", run["checkpoint"], "--size", "33x64"], "multiples of 32"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["--arch", run["arch"], *argv])
        assert exc.value.code == 2, argv
        assert message in capsys.readouterr().err, argv


def test_evaluate_and_predict_give_the_same_class_map_for_the_same_image(tmp_path):
    """One inference path: an image whose size is no multiple of 32 is fed to
    the network the same way by both commands (padded, not resized)."""
    from rspnet.predict.__main__ import main as predict_main
    from rspnet.search.__main__ import main as search_main
    from rspnet.train.__main__ import main as train_main

    root = tmp_path / "data"
    images = data.write_folder_layout(root, {"train": 2, "val": 1}, size=(45, 70), seed=3)
    assert search_main(["--random", "1", "--channels", "8", "--layers", "2", "--out", str(tmp_path / "a"),
                        "--no-progress"]) == 0
    arch = str(tmp_path / "a" / "random-000.json")
    assert train_main(["--arch", arch, "--data", "folder", "--data-root", str(root), "--size", "32x32",
                       "--batch-size", "2", "--epochs", "1", "--no-progress", "--threads", "1",
                       "--out", str(tmp_path / "t")]) == 0
    checkpoint = str(tmp_path / "t" / "best.pt")
    assert main(["--arch", arch, "--checkpoint", checkpoint, "--data", "folder", "--data-root", str(root),
                 "--no-progress", "--save-predictions", str(tmp_path / "e"),
                 "--report", str(tmp_path / "e.json")]) == 0
    val = [p for p in images if os.sep + "val" + os.sep in p]
    assert predict_main(["--arch", arch, "--checkpoint", checkpoint, val[0], "--out", str(tmp_path / "p"),
                         "--no-progress"]) == 0
    stem = os.path.splitext(os.path.basename(val[0]))[0]
    evaluated = np.array(Image.open(tmp_path / "e" / "masks" / "val" / f"{stem}.png"))
    predicted = np.array(Image.open(tmp_path / "p" / "classes" / f"{stem}.png"))
    assert evaluated.shape == predicted.shape == (45, 70)
    np.testing.assert_array_equal(evaluated, predicted)
