"""The Cityscapes loader on a generated official-layout tree, and the label tables."""
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rspnet.data import (CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, Cityscapes,
                         colorize, denormalize, get_dataset, labelid_to_trainid,
                         render_scene, trainid_to_labelid, write_cityscapes_layout)
from rspnet.data.labels import LABELID_TO_TRAINID, _fallback_table, _package_table
from rspnet.data.synthetic import scene_seed

SIZE = (32, 64)
SEED = 5


@pytest.fixture
def tree(tmp_path):
    write_cityscapes_layout(tmp_path, {"train": 3, "val": 2}, size=SIZE, seed=SEED)
    return tmp_path


# --- label tables -----------------------------------------------------------

@pytest.fixture(scope="module")
def official():
    return pytest.importorskip(
        "cityscapesscripts.helpers.labels",
        reason="cityscapesscripts is not installed: cannot compare with the official table")


def test_label_table_matches_cityscapesscripts(official):
    expected = np.full(256, 255, np.uint8)
    for label in official.labels:
        if label.id >= 0 and label.trainId not in (255, -1):
            expected[label.id] = label.trainId
    np.testing.assert_array_equal(_fallback_table(), expected)
    np.testing.assert_array_equal(LABELID_TO_TRAINID, expected)


def test_fallback_used_without_cityscapesscripts(monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", None)
    assert _package_table() is None


def test_class_names_palette_and_inverse_match_cityscapesscripts(official):
    for train_id in range(NUM_CLASSES):
        label = official.trainId2label[train_id]
        assert CLASS_NAMES[train_id] == label.name
        assert tuple(PALETTE[train_id]) == label.color
        assert trainid_to_labelid(np.array([train_id]))[0] == label.id
    assert trainid_to_labelid(np.array([IGNORE_INDEX]))[0] == official.name2label["unlabeled"].id


def test_label_round_trip_and_colorize():
    train_ids = np.array([[0, 5, 18], [255, 10, 13]], np.uint8)
    np.testing.assert_array_equal(labelid_to_trainid(trainid_to_labelid(train_ids)), train_ids)
    rgb = colorize(train_ids)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[1, 0]) == (0, 0, 0)


# --- loader ------------------------------------------------------------------

def test_layout_file_names(tree):
    pattern = re.compile(r"^(\w+)_\d{6}_\d{6}_leftImg8bit\.png$")
    for split, count in (("train", 3), ("val", 2)):
        root = tree / "leftImg8bit" / split
        names = [(city, name) for city in os.listdir(root) for name in os.listdir(root / city)]
        assert len(names) == count
        for city, name in names:
            assert pattern.match(name).group(1) == city
            label = tree / "gtFine" / split / city / name.replace("leftImg8bit", "gtFine_labelIds")
            assert label.is_file()


def test_items_round_trip_to_synthetic_trainids(tree):
    for split, count in (("train", 3), ("val", 2)):
        ds = Cityscapes(tree, split)
        assert len(ds) == count
        for index in range(count):
            image, train_ids = render_scene(scene_seed(SEED, split, index), *SIZE)
            raw_image, raw_label = ds.sample(index)
            np.testing.assert_array_equal(raw_image, image)
            np.testing.assert_array_equal(raw_label, train_ids)
            item_image, item_label = ds[index]
            assert item_image.dtype == torch.float32 and item_image.shape == (3, *SIZE)
            assert item_label.dtype == torch.int64
            np.testing.assert_array_equal(item_label.numpy(), train_ids)
            np.testing.assert_allclose(denormalize(item_image).astype(int), image.astype(int),
                                       atol=1)
    # The PNGs hold labelIds, not trainIds: road is labelId 7 on disk.
    on_disk = np.array(Image.open(Cityscapes(tree, "train").labels[0]))
    assert 7 in on_disk and 0 not in labelid_to_trainid(on_disk)[on_disk != 7]


def test_get_dataset_cityscapes(tree):
    val = get_dataset("cityscapes", "val", root=str(tree), size=None)
    assert len(val) == 2 and val[0][0].shape == (3, *SIZE)
    resized = get_dataset("cityscapes", "val", root=str(tree), size=(16, 32), length=1)
    image, label = resized[0]
    assert len(resized) == 1 and image.shape == (3, 16, 32) and label.shape == (16, 32)
    train = get_dataset("cityscapes", "train", root=str(tree), size=(24, 40), augment=True)
    assert train[2][0].shape == (3, 24, 40)


def test_missing_root_and_split(tmp_path, tree):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        Cityscapes(missing, "train")
    shutil.rmtree(tree / "gtFine" / "val")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tree / "gtFine" / "val"))):
        Cityscapes(tree, "val")
    with pytest.raises(ValueError, match="test.*no public labels"):
        Cityscapes(tree, "test")


def test_no_images(tmp_path):
    (tmp_path / "leftImg8bit" / "train" / "emptycity").mkdir(parents=True)
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no .*images found"):
        Cityscapes(tmp_path, "train")


def test_image_without_label(tree):
    label = Cityscapes(tree, "train").labels[1]
    os.remove(label)
    with pytest.raises(FileNotFoundError, match=re.escape(label)):
        Cityscapes(tree, "train")


def test_corrupt_png(tree):
    ds = Cityscapes(tree, "train")
    with open(ds.images[0], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with open(ds.labels[2], "wb") as f:
        f.write(b"not a png at all")
    with pytest.raises(ValueError, match=re.escape(ds.images[0])):
        ds[0]
    with pytest.raises(ValueError, match=re.escape(ds.labels[2])):
        ds[2]
    ds[1]   # the intact item still loads


def test_wrongly_sized_label(tree):
    ds = Cityscapes(tree, "val")
    Image.fromarray(np.full((SIZE[0] + 1, SIZE[1]), 7, np.uint8)).save(ds.labels[0])
    with pytest.raises(ValueError, match=re.escape(ds.labels[0]) + ".*differs"):
        ds[0]


def test_colour_label_rejected(tree):
    # A common mistake: pointing at *_gtFine_color.png content.
    ds = Cityscapes(tree, "val")
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(ds.labels[1])
    with pytest.raises(ValueError, match="single-channel"):
        ds[1]
