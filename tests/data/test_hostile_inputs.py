"""Hostile inputs to the data readers (issues 20, 21): truncated files, images
over the pixel limit, FIFOs and devices, 16-bit and float images, EXIF
orientation, classes.json's BOM, too many classes, control characters in class
names, and CamVid copies with other splits.

Every tree is written here from numpy arrays, so each expectation is computed
from the pixels the test wrote (numpy: rounding, rot90), never a stored result.
"""
import json
import os
import shutil
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from rspnet import data
from rspnet.data import CamVid, Cityscapes, FolderDataset
from tests.helpers.architectures import make_architecture
from tests.helpers.threads import single_thread

SIZE = (32, 32)
WRITTEN = {}                  # path -> the array write_tree saved there
CITY_VALUES = (7, 8, 11)      # Cityscapes labelIds of trainIds 0, 1, 2


def _paths(kind, root, split, i):
    if kind == "folder":
        return f"{root}/images/{split}/p{i}.png", f"{root}/masks/{split}/p{i}.png"
    if kind == "camvid":
        return f"{root}/{split}/p{i}.png", f"{root}/{split}annot/p{i}.png"
    stem = f"c_000000_{i:06d}"
    return (f"{root}/leftImg8bit/{split}/c/{stem}_leftImg8bit.png",
            f"{root}/gtFine/{split}/c/{stem}_gtFine_labelIds.png")


def write_tree(kind, root, counts=None, size=SIZE, seed=0):
    """A ``kind`` tree of random images and 3-class masks; returns
    {split: [(image path, mask path)]}."""
    root = str(root)
    counts = {"train": 4, "val": 2} if counts is None else counts
    rng = np.random.default_rng(seed)
    if kind == "folder":
        os.makedirs(root, exist_ok=True)
        with open(f"{root}/classes.json", "w") as f:
            json.dump({"classes": ["a", "b", "c"]}, f)
    pairs = {}
    for split, count in counts.items():
        pairs[split] = []
        for i in range(count):
            image_path, mask_path = _paths(kind, root, split, i)
            for p in (image_path, mask_path):
                os.makedirs(os.path.dirname(p), exist_ok=True)
            values = np.array(CITY_VALUES if kind == "cityscapes" else (0, 1, 2), np.uint8)
            WRITTEN[image_path] = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            WRITTEN[mask_path] = values[rng.integers(0, 3, size)]
            Image.fromarray(WRITTEN[image_path]).save(image_path)
            Image.fromarray(WRITTEN[mask_path]).save(mask_path)
            pairs[split].append((image_path, mask_path))
    return pairs


def build(kind, root, split="train", **kw):
    return {"folder": FolderDataset, "camvid": CamVid, "cityscapes": Cityscapes}[kind](root, split, **kw)


def truncate(path):
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[:len(content) // 2])


def one_line_error(call, *names):
    with pytest.raises(ValueError) as exc:
        call()
    message = str(exc.value)
    assert "\n" not in message, message
    for name in names:
        assert name in message, message
    return message


# ------------------------------------------------------------ 1. truncated files
@pytest.mark.parametrize("kind", ["folder", "camvid", "cityscapes"])
def test_a_truncated_image_fails_the_pre_check(kind, tmp_path):
    pairs = write_tree(kind, tmp_path)
    build(kind, tmp_path)                       # the intact tree passes
    image, mask = pairs["train"][2]
    truncate(image)
    one_line_error(lambda: build(kind, tmp_path), image, "decode")
    shutil.copy(pairs["train"][0][0], image)
    truncate(mask)
    one_line_error(lambda: build(kind, tmp_path), mask)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A folder tree and a 1-epoch checkpoint trained on it."""
    from rspnet.train.__main__ import main as train_main
    base = tmp_path_factory.mktemp("hostile")
    write_tree("folder", base / "data")
    arch = base / "arch.json"
    arch.write_text(json.dumps(make_architecture(0)))
    with single_thread():
        assert train_main(["--arch", str(arch), "--data", "folder", "--data-root", str(base / "data"),
                           *TRAIN, "--out", str(base / "train")]) == 0
    return {"root": str(base / "data"), "arch": str(arch), "checkpoint": str(base / "train" / "best.pt")}


TRAIN = ["--size", "32x32", "--batch-size", "2", "--epochs", "1", "--no-progress", "--threads", "1",
         "--no-augment"]
SEARCH = ["--size", "32x32", "--images", "4", "--batch-size", "2", "--epochs", "1", "--channels", "4",
          "--layers", "2", "--no-progress", "--threads", "1"]


@pytest.mark.parametrize("command", ["train", "search", "evaluate"])
def test_the_clis_refuse_a_truncated_image_before_anything_is_written(command, checkpoint, tmp_path, capsys):
    from rspnet.evaluate import main as evaluate_main
    from rspnet.search.__main__ import main as search_main
    from rspnet.train.__main__ import main as train_main
    root = str(tmp_path / "data")
    shutil.copytree(checkpoint["root"], root)
    bad = f"{root}/images/{'val' if command == 'evaluate' else 'train'}/p1.png"
    truncate(bad)
    out = tmp_path / "out"
    common = ["--data", "folder", "--data-root", root]
    with pytest.raises(SystemExit) as exc:
        if command == "train":
            train_main(["--arch", checkpoint["arch"], *common, *TRAIN, "--out", str(out)])
        elif command == "search":
            search_main([*common, *SEARCH, "--out", str(out)])
        else:
            evaluate_main(["--arch", checkpoint["arch"], "--checkpoint", checkpoint["checkpoint"], *common,
                           "--no-progress", "--save-predictions", str(out), "--report", str(out / "r.json")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert bad in err.strip().splitlines()[-1], err
    assert not out.exists()


# ------------------------------------------------------------ 2. pixel limit
def png_header(path, width, height):
    """A PNG of the given size that holds only its header (no pixel data)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IEND", b""))
    return str(path)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)    # Pillow itself raises for this one
    for read in (data.read_image, data.image_size):
        one_line_error(lambda: read(bomb), bomb, "20000x20000")
    # just over the limit but under Pillow's own: refused from the header (there is nothing to decode)
    over = png_header(tmp_path / "over.png", data.MAX_PIXELS // 8192 + 1, 8192)
    message = one_line_error(lambda: data.read_image(over), over, f"{data.MAX_PIXELS // 8192 + 1}x8192")
    assert "decode" not in message
    # at the limit: the size is accepted, and the missing pixel data is what is refused
    at = png_header(tmp_path / "at.png", data.MAX_PIXELS // 8192, 8192)
    assert data.image_size(at) == (8192, data.MAX_PIXELS // 8192)
    one_line_error(lambda: data.read_image(at), at, "decode")
    # in a data set: the pre-check names the file
    pairs = write_tree("folder", tmp_path / "tree")
    image = pairs["train"][1][0]
    shutil.copy(bomb, image)
    one_line_error(lambda: FolderDataset(tmp_path / "tree"), image, "20000x20000")


# ------------------------------------------------------------ 3. FIFOs, devices, links
def _without_blocking(call):
    """``call()``'s exception (None if it returned); a call still blocked on
    a FIFO after 10 s is released by writing to the FIFOs and fails the test."""
    outcome = {}

    def target():
        try:
            call()
        except BaseException as exc:   # noqa: BLE001 (handed to the test)
            outcome["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    return thread, outcome.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("which", [0, 1], ids=["image", "mask"])
def test_a_fifo_in_a_data_folder_is_refused_by_name(which, tmp_path):
    pairs = write_tree("folder", tmp_path)
    fifo = pairs["val"][1][which]
    os.remove(fifo)
    os.mkfifo(fifo)
    thread, error = _without_blocking(lambda: FolderDataset(tmp_path, "val"))
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))   # lets the blocked open return
        thread.join(10)
        pytest.fail(f"the pre-check blocked on the FIFO {fifo}")
    assert isinstance(error, ValueError) and "\n" not in str(error), error
    assert fifo in str(error) and "not a regular file" in str(error)
    # a device is refused the same way
    os.remove(fifo)
    os.symlink(os.devnull, fifo)
    one_line_error(lambda: FolderDataset(tmp_path, "val"), fifo, "not a regular file")


def test_symlinks_to_regular_files_are_read(tmp_path):
    pairs = write_tree("folder", tmp_path / "tree")
    image, mask = pairs["train"][0]
    for i, path in enumerate((image, mask)):
        target = str(tmp_path / f"target{i}.png")
        shutil.move(path, target)
        os.symlink(target, path)
    raw_image, classes = FolderDataset(tmp_path / "tree").sample(0)
    np.testing.assert_array_equal(raw_image, WRITTEN[image])
    np.testing.assert_array_equal(classes, WRITTEN[mask])          # classes a, b, c are the values 0, 1, 2


# ------------------------------------------------------------ 4. bit depths
def _rgb(grey):
    return np.repeat(grey[:, :, None], 3, axis=2)


def test_16_bit_images_decode_by_the_range_of_their_type(tmp_path):
    rng = np.random.default_rng(1)
    values = np.concatenate([[0, 65535, 128, 129, 257 * 100 + 128, 257 * 100 + 129],
                             rng.integers(0, 65536, 58)]).astype(np.uint16).reshape(8, 8)
    expected = _rgb(np.rint(values.astype(np.float64) / 257).astype(np.uint8))
    png = str(tmp_path / "grey16.png")
    Image.fromarray(values).save(png)
    big = str(tmp_path / "grey16b.tiff")
    Image.frombytes("I;16B", (8, 8), values.astype(">u2").tobytes()).save(big)
    wide = str(tmp_path / "grey32.tiff")
    Image.fromarray(values.astype(np.int32)).save(wide)
    for path, mode in ((png, "I;16"), (big, "I;16B"), (wide, "I")):
        with Image.open(path) as image:
            assert image.mode == mode                 # the case the test means
        np.testing.assert_array_equal(data.read_image(path), expected, err_msg=mode)
    out_of_range = str(tmp_path / "negative.tiff")
    Image.fromarray(np.full((4, 4), -1, np.int32)).save(out_of_range)
    one_line_error(lambda: data.read_image(out_of_range), out_of_range, "0..65535")


def test_float_images_in_0_1_decode_to_0_255_and_others_are_refused(tmp_path):
    rng = np.random.default_rng(2)
    values = np.concatenate([[0.0, 1.0, 0.5 / 255, 0.4], rng.random(60)]).astype(np.float32).reshape(8, 8)
    path = str(tmp_path / "float.tiff")
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode == "F"
    expected = _rgb(np.rint(values.astype(np.float64) * 255).astype(np.uint8))
    np.testing.assert_array_equal(data.read_image(path), expected)
    for name, bad in (("over", values * 2), ("nan", np.where(values > 0.5, np.nan, values))):
        bad_path = str(tmp_path / f"{name}.tiff")
        Image.fromarray(bad.astype(np.float32)).save(bad_path)
        one_line_error(lambda: data.read_image(bad_path), bad_path, "0..1")


# ------------------------------------------------------------ 5. EXIF orientation
def _save_oriented(path, array, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif.tobytes())
    return str(path)


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1)])   # 6: rotate 90 clockwise; 8: counter-
def test_exif_orientation_is_applied_to_images_and_masks_alike(orientation, turns, tmp_path):
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    png = _save_oriented(tmp_path / "image.png", stored, orientation)
    np.testing.assert_array_equal(data.read_image(png), np.rot90(stored, turns))
    assert data.image_size(png) == (6, 4)
    jpeg = _save_oriented(tmp_path / "image.jpg", stored, orientation)
    with Image.open(jpeg) as image:
        raw = np.array(image)                            # the decoded pixels, not turned
    np.testing.assert_array_equal(data.read_image(jpeg), np.rot90(raw, turns))
    assert data.image_size(jpeg) == (6, 4)
    labels = rng.integers(0, 3, (4, 6), dtype=np.uint8)
    mask = _save_oriented(tmp_path / "mask.png", labels, orientation)
    np.testing.assert_array_equal(data.read_mask(mask), np.rot90(labels, turns))
    plain = str(tmp_path / "plain.png")
    Image.fromarray(labels).save(plain)
    np.testing.assert_array_equal(data.read_mask(plain), labels)


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_of_tiffs_is_applied_once_or_refused(orientation, turns, tmp_path):
    """Pillow turns TIFFs itself as it decodes them: the reader turns them no
    second time, and where Pillow's result is not the size its header
    promises (Pillow 13 scrambles turned single-channel TIFFs) it refuses."""
    from PIL import TiffImagePlugin
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[0x0112] = orientation
    rng = np.random.default_rng(orientation)
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    wide = rng.integers(0, 65536, (4, 6)).astype(np.uint16)
    for stored, expected in ((rgb, rgb), (grey, _rgb(grey)), (wide, _rgb(np.rint(wide / 257).astype(np.uint8)))):
        path = str(tmp_path / f"{stored.dtype}{stored.ndim}.tiff")
        Image.fromarray(stored).save(path, tiffinfo=tags)
        turned = np.rot90(expected, turns)
        with Image.open(path) as image:
            image.load()
            pillow_size = image.size[::-1]
        assert data.image_size(path) == turned.shape[:2]
        if pillow_size == turned.shape[:2]:
            np.testing.assert_array_equal(data.read_image(path), turned, err_msg=path)
        else:
            one_line_error(lambda: data.read_image(path), path, "orientation")


def test_a_turned_image_pairs_with_a_mask_drawn_on_the_turned_picture(tmp_path):
    pairs = write_tree("folder", tmp_path, {"train": 1})
    image, mask = pairs["train"][0]
    shown = np.random.default_rng(3).integers(0, 256, (6, 4, 3), dtype=np.uint8)   # as a viewer shows it
    _save_oriented(image, np.rot90(shown, 1), 6)                                   # stored turned back
    labels = np.random.default_rng(4).integers(0, 3, (6, 4), dtype=np.uint8)
    Image.fromarray(labels).save(mask)
    raw_image, classes = FolderDataset(tmp_path).sample(0)
    np.testing.assert_array_equal(raw_image, shown)
    np.testing.assert_array_equal(classes, labels)


# ------------------------------------------------------------ 6-8. classes.json
def test_classes_json_may_start_with_a_bom(tmp_path):
    path = tmp_path / "classes.json"
    names = ["road", "b\u00e2timent"]
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"classes": names}, ensure_ascii=False).encode("utf-8"))
    assert data.load_classes(path).names == tuple(names)


@pytest.mark.parametrize("count, ignore", [(256, None), (256, 256), (300, None)])
def test_too_many_classes_is_one_clear_message(count, ignore, tmp_path):
    path = tmp_path / "classes.json"
    obj = {"classes": [f"c{i}" for i in range(count)]}
    if ignore is not None:
        obj["ignore_index"] = ignore
    path.write_text(json.dumps(obj))
    message = one_line_error(lambda: data.load_classes(path), str(path), "at most 255 classes", str(count))
    assert "is a class index" not in message and "must be an integer" not in message
    # 255 classes fit: 0..254 are classes, 255 is void
    obj = {"classes": [f"c{i}" for i in range(255)]}
    path.write_text(json.dumps(obj))
    table = data.load_classes(path)
    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(table.decode(values), np.where(values < 255, values, 255))


@pytest.mark.parametrize("name", ["lane\nmarking", "car\rbus", "a\tb", "red\x1b[31m", "x\u2028y", "nul\x00"])
def test_a_class_name_with_a_control_character_is_refused(name, tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"classes": ["road", "sky", name]}))
    one_line_error(lambda: data.load_classes(path), str(path), "classes[2]", "control character")


# ------------------------------------------------------------ 9. CamVid's splits
SEGNET = {"train": 367, "val": 101, "test": 233}


def _camvid_tree(root, counts):
    """A CamVid tree of 1x1 pictures (the same bytes in every file)."""
    pairs = write_tree("camvid", root, {s: 1 for s in counts}, size=(1, 1))
    for split, count in counts.items():
        image, mask = pairs[split][0]
        for i in range(1, count):
            for source, (d, name) in ((image, (split, f"p{i}.png")), (mask, (split + "annot", f"p{i}.png"))):
                shutil.copy(source, os.path.join(root, d, name))


def _warnings(err):
    return [line for line in err.splitlines() if "CamVid" in line and "warning" in line.lower()]


def test_camvid_with_other_split_counts_warns_once(tmp_path, capsys):
    root = str(tmp_path / "camvid")
    _camvid_tree(root, SEGNET)
    capsys.readouterr()
    CamVid(root, "train", length=1)
    CamVid(root, "val", length=1)
    assert _warnings(capsys.readouterr().err) == []       # the SegNet copy: silent
    os.remove(f"{root}/test/p232.png")
    os.remove(f"{root}/testannot/p232.png")
    for split in ("train", "val", "test", "train"):
        CamVid(root, split, length=1)
    found = _warnings(capsys.readouterr().err)
    counts = [len(os.listdir(f"{root}/{s}")) for s in SEGNET]
    assert len(found) == 1, found
    assert "/".join(map(str, counts)) in found[0] and "367/101/233" in found[0]
    assert "not comparable" in found[0]
