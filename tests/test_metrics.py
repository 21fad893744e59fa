"""rspnet.metrics against hand-computed confusion matrices and against the
official Cityscapes evaluation (cityscapesscripts) on generated predictions."""
import glob
import io
import contextlib
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rspnet import data
from rspnet.metrics import (ConfusionMatrix, class_accuracy, confusion_matrix, format_table,
                            iou_per_class, mean_iou, pixel_accuracy, summarize)

# 3 classes, one ignored pixel (255)
TARGET = torch.tensor([[0, 0, 1, 1],
                       [2, 2, 2, 255]])
PRED = torch.tensor([[0, 1, 1, 1],
                     [2, 0, 1, 0]])
# rows = target, cols = prediction, the 255 pixel left out:
#   target 0: pred 0, 1            -> [1, 1, 0]
#   target 1: pred 1, 1            -> [0, 2, 0]
#   target 2: pred 2, 0, 1         -> [1, 1, 1]
EXPECTED = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 1, 1]])


def test_confusion_matrix_by_hand():
    m = confusion_matrix(PRED, TARGET, 3)
    assert m.dtype == torch.int64
    assert torch.equal(m, EXPECTED)
    # numpy input, other ignore label
    t = TARGET.numpy().copy()
    t[t == 255] = 7
    assert torch.equal(confusion_matrix(PRED.numpy(), t, 3, ignore_index=7), EXPECTED)


def test_iou_accuracy_by_hand():
    # class 0: tp 1, fp 1 (row 2), fn 1 -> 1/3
    # class 1: tp 2, fp 1 + 1, fn 0   -> 2/4
    # class 2: tp 1, fp 0, fn 2       -> 1/3
    iou = iou_per_class(EXPECTED)
    np.testing.assert_allclose(iou, [1 / 3, 1 / 2, 1 / 3], rtol=0, atol=1e-15)
    assert mean_iou(EXPECTED) == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3, abs=1e-15)
    assert pixel_accuracy(EXPECTED) == pytest.approx(4 / 7, abs=1e-15)
    np.testing.assert_allclose(class_accuracy(EXPECTED), [1 / 2, 1, 1 / 3], atol=1e-15)


def test_absent_class_has_no_iou_and_is_left_out_of_the_mean():
    # class 3 never occurs (neither labelled nor predicted); class 2 is only
    # predicted (IoU 0, counted); class 1 is labelled but never predicted (IoU 0)
    m = torch.tensor([[5, 0, 1, 0],
                      [2, 0, 0, 0],
                      [0, 0, 0, 0],
                      [0, 0, 0, 0]])
    iou = iou_per_class(m)
    assert iou[0] == pytest.approx(5 / 8)
    assert iou[1] == 0 and iou[2] == 0 and math.isnan(iou[3])
    assert mean_iou(m) == pytest.approx((5 / 8) / 3)
    assert math.isnan(mean_iou(torch.zeros(3, 3, dtype=torch.int64)))
    s = summarize(m, ["a", "b", "c", "d"])
    assert s["per_class"]["d"]["iou"] is None and s["classes_evaluated"] == 3
    json.dumps(s)  # JSON-ready: no NaN
    table = format_table(s, "title")
    assert "n/a" in table and "mIoU" in table and table.startswith("title")


def test_accumulator_equals_one_big_matrix():
    gen = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 5, (4, 6, 7), generator=gen)
    targets = torch.randint(0, 6, (4, 6, 7), generator=gen)
    targets[targets == 5] = 255
    acc = ConfusionMatrix(5)
    for p, t in zip(preds, targets):
        acc.update(p, t)
    assert torch.equal(acc.matrix, confusion_matrix(preds, targets, 5))
    assert acc.matrix.sum() == (targets != 255).sum()
    acc.reset()
    assert acc.matrix.sum() == 0


@pytest.mark.parametrize("pred, target, message", [
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), "shape"),
    (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), "integer"),
    (torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 3), "target value 3"),
    (torch.full((2, 2), 4), torch.zeros(2, 2, dtype=torch.long), "prediction value 4"),
])
def test_bad_inputs_are_rejected(pred, target, message):
    with pytest.raises((ValueError, TypeError), match=message):
        confusion_matrix(pred, target, 3)


def test_prediction_outside_classes_is_allowed_on_ignored_pixels():
    m = confusion_matrix(torch.tensor([0, 99]), torch.tensor([0, 255]), 3)
    assert m.sum() == 1


# ------------------------------------------------- official Cityscapes evaluation
def run_official(root, prediction_dir):
    """The official script, configured through its module-level ``args`` as
    its own main() does, minus instance scores (no *_instanceIds.png here),
    console output and the JSON file."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = official.args
    saved = dict(vars(args))
    try:
        args.cityscapesPath = str(root)
        args.groundTruthSearch = os.path.join(str(root), "gtFine", "val", "*", "*_gtFine_labelIds.png")
        args.predictionPath = str(prediction_dir)
        args.predictionWalk = None
        args.evalInstLevelScore = False
        args.JSONOutput = False
        args.quiet = True
        ground_truth = sorted(glob.glob(args.groundTruthSearch))
        assert ground_truth
        with contextlib.redirect_stdout(io.StringIO()):
            predictions = [official.getPrediction(args, gt) for gt in ground_truth]
            return official.evaluateImgLists(predictions, ground_truth, args), ground_truth
    finally:
        vars(args).clear()
        vars(args).update(saved)


def _perturb(train_ids, rng):
    pred = train_ids.copy()
    pred[pred == 255] = rng.integers(0, 19, size=int((pred == 255).sum()))  # model predicts everywhere
    noise = rng.random(pred.shape) < 0.25
    pred[noise] = rng.integers(0, 19, size=int(noise.sum()))
    pred = np.roll(pred, 3, axis=1)                       # a shifted boundary
    pred[pred == 13] = 14                                 # car always called truck: car IoU 0
    return pred.astype(np.uint8)


def test_miou_matches_official_cityscapes_evaluation(tmp_path):
    root = tmp_path / "cityscapes"
    data.write_cityscapes_layout(root, {"val": 3}, size=(64, 128), seed=1)
    pred_dir = tmp_path / "pred"
    rng = np.random.default_rng(0)
    confusion = ConfusionMatrix(data.NUM_CLASSES)
    gt_paths = sorted(glob.glob(str(root / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    labels = [data.labelid_to_trainid(np.array(Image.open(p))) for p in gt_paths]
    absent = sorted(set(range(data.NUM_CLASSES)) - set(np.unique(np.stack(labels)).tolist()))
    assert absent, "the scenes contain every class: pick a smaller tree"
    for gt_path, train_ids in zip(gt_paths, labels):
        pred = _perturb(train_ids, rng)
        pred[np.isin(pred, absent)] = 0    # never predicted and never labelled: no IoU
        confusion.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(train_ids.astype(np.int64)))
        city = os.path.basename(os.path.dirname(gt_path))
        stem = os.path.basename(gt_path)[:-len("_gtFine_labelIds.png")]
        os.makedirs(pred_dir / city, exist_ok=True)
        Image.fromarray(data.trainid_to_labelid(pred)).save(pred_dir / city / f"{stem}_leftImg8bit.png")

    result, ground_truth = run_official(root, pred_dir)
    assert len(ground_truth) == 3
    ours = summarize(confusion.matrix, data.CLASS_NAMES)
    nan_classes = 0
    for name in data.CLASS_NAMES:
        official = result["classScores"][name]
        mine = ours["per_class"][name]["iou"]
        if math.isnan(official):
            nan_classes += 1
            assert mine is None, name
        else:
            assert mine == pytest.approx(official, abs=1e-6), name
    assert nan_classes >= 1                            # the absent-class path is exercised
    assert ours["per_class"]["car"]["iou"] == 0.0      # and the zero-IoU one
    assert ours["miou"] == pytest.approx(result["averageScoreClasses"], abs=1e-6)
    # the confusion matrix agrees cell by cell on the evaluated classes
    labelids = [int(data.trainid_to_labelid(np.array([t]))[0]) for t in range(data.NUM_CLASSES)]
    official_matrix = np.array(result["confMatrix"])[np.ix_(labelids, labelids)]
    np.testing.assert_array_equal(official_matrix, confusion.matrix.numpy())
