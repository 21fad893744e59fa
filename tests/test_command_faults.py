"""Where the commands write (issue 21): every output path is checked before any
work starts; no command writes inside a data root or over an input, or
changes a file that existed before it unless the user named exactly that
file; an output that cannot be created is a one-line error (exit status 2),
never a traceback after the work. Also: a checkpoint whose class names differ
from the data set's, predict's decompression-bomb check, and a static ONNX
export (``--dynamic none``).

Every run is on a tiny folder data set and a one-epoch checkpoint written
here; each assertion is about behaviour: the exit status, the flag the
message names, and files unchanged byte for byte."""
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from rspnet import data
from rspnet.engine.checkpoint import load_checkpoint, save_checkpoint
from rspnet.evaluate import main as evaluate_main
from rspnet.export import main as export_main
from rspnet.predict.__main__ import main as predict_main
from rspnet.rescale import main as rescale_main
from rspnet.train.__main__ import main as train_main
from tests.helpers.architectures import make_architecture
from tests.helpers.threads import single_thread

SIZE = (32, 64)
UNWRITABLE = "/proc/rspnet-no-such-dir"     # /proc takes no new files, not even from root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder data set, an architecture and a one-epoch checkpoint trained on it."""
    base = tmp_path_factory.mktemp("faults")
    root = base / "data"
    data.write_folder_layout(root, {"train": 2, "val": 2}, size=SIZE, seed=1)
    arch = base / "architecture.json"
    arch.write_text(json.dumps(make_architecture(0)))
    with single_thread():
        assert train_main(["--arch", str(arch), "--data", "folder", "--data-root", str(root), "--size", "32x32",
                           "--batch-size", "2", "--epochs", "1", "--no-progress", "--threads", "1",
                           "--out", str(base / "train")]) == 0
    return {"root": str(root), "arch": str(arch), "checkpoint": str(base / "train" / "best.pt"),
            "images": str(root / "images" / "val")}


def snapshot(path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself), by relative path, with its bytes."""
    path = os.fspath(path)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return {"": f.read()}
    found = {}
    for parent, _, names in os.walk(path):
        for name in names:
            full = os.path.join(parent, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = f.read()
    return found


def refused(main, argv, capsys) -> str:
    """Run ``main(argv)``, expect exit status 2 and no traceback; the message's one line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    assert exc.value.code == 2, captured.err
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert lines and ": error: " in lines[-1], captured.err
    return lines[-1]


@pytest.fixture
def fresh(trained, tmp_path):
    """Copies of the data set, architecture and checkpoint, for the tests a
    command that wrote over its inputs would spoil."""
    base = tmp_path / "inputs"
    shutil.copytree(trained["root"], base / "data")
    for key in ("arch", "checkpoint"):
        shutil.copy(trained[key], base / os.path.basename(trained[key]))
    return {"root": str(base / "data"), "arch": str(base / "architecture.json"),
            "checkpoint": str(base / "best.pt"), "images": str(base / "data" / "images" / "val")}


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return str(path)


def _evaluate_argv(trained, *extra, root=None):
    return ["--arch", trained["arch"], "--checkpoint", trained["checkpoint"], "--data", "folder",
            "--data-root", root or trained["root"], "--no-progress", *extra]


# ------------------------------------------------------------------ evaluate
@pytest.mark.parametrize("flag, where", [("--save-predictions", ""), ("--save-predictions", "masks"),
                                         ("--report", "eval.json")])
def test_evaluate_writes_nothing_inside_the_data_root(fresh, tmp_path, capsys, flag, where):
    trained = fresh
    before = snapshot(trained["root"])
    path = os.path.join(trained["root"], where) if where else trained["root"]
    extra = [flag, path] + ([] if flag == "--report" else ["--report", str(tmp_path / "r.json")])
    message = refused(evaluate_main, _evaluate_argv(trained, *extra), capsys)
    assert flag in message and "inside" in message
    assert snapshot(trained["root"]) == before
    assert not (tmp_path / "r.json").exists()


def test_evaluate_never_overwrites_earlier_predictions(trained, tmp_path, capsys):
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "notes.txt").write_text("the user's own file")
    assert evaluate_main(_evaluate_argv(trained, "--save-predictions", str(preds),
                                        "--report", str(tmp_path / "r1.json"))) == 0
    before = snapshot(preds)
    assert len(before) == 1 + 2 * 2      # the user's file, and a mask and an overlay per image
    message = refused(evaluate_main, _evaluate_argv(trained, "--save-predictions", str(preds),
                                                    "--report", str(tmp_path / "r2.json")), capsys)
    assert "--save-predictions" in message and str(preds) in message and "exists" in message
    assert snapshot(preds) == before and not (tmp_path / "r2.json").exists()


def test_evaluate_default_report_is_not_replaced(trained, tmp_path, capsys):
    checkpoint = tmp_path / "best.pt"
    shutil.copy(trained["checkpoint"], checkpoint)
    argv = _evaluate_argv(trained)
    argv[argv.index("--checkpoint") + 1] = str(checkpoint)
    assert evaluate_main(argv) == 0
    report = tmp_path / "best-eval.json"
    before = report.read_bytes()
    message = refused(evaluate_main, argv, capsys)
    assert "--report" in message and str(report) in message
    assert report.read_bytes() == before
    # named exactly, it is replaced
    assert evaluate_main(argv + ["--report", str(report)]) == 0


@pytest.mark.parametrize("flag, path", [("--save-predictions", "{file}/preds"), ("--report", "{file}/r.json"),
                                        ("--save-predictions", UNWRITABLE), ("--report", UNWRITABLE + "/r.json")])
def test_evaluate_outputs_that_cannot_be_created_are_refused_first(trained, tmp_path, a_file, capsys, flag, path):
    path = path.format(file=a_file)
    extra = [flag, path] + ([] if flag == "--report" else ["--report", str(tmp_path / "r.json")])
    message = refused(evaluate_main, _evaluate_argv(trained, *extra), capsys)
    assert message.startswith("python -m rspnet.evaluate: error: " + flag)
    assert not (tmp_path / "r.json").exists()


def _reordered_copy(trained, tmp_path) -> str:
    root = tmp_path / "data"
    shutil.copytree(trained["root"], root)
    spec = json.loads((root / "classes.json").read_text())
    spec["classes"][1], spec["classes"][2] = spec["classes"][2], spec["classes"][1]
    (root / "classes.json").write_text(json.dumps(spec))
    return str(root)


def test_evaluate_refuses_a_checkpoint_with_other_class_names(trained, tmp_path, capsys):
    root = _reordered_copy(trained, tmp_path)
    names = list(data.FOLDER_DEMO_CLASSES)
    message = refused(evaluate_main, _evaluate_argv(trained, "--report", str(tmp_path / "r.json"), root=root),
                      capsys)
    assert repr(names[1]) in message and repr(names[2]) in message and "--data folder" in message
    assert not (tmp_path / "r.json").exists()


def test_evaluate_checkpoint_without_class_names_is_evaluated(trained, tmp_path):
    state = load_checkpoint(trained["checkpoint"])
    del state["classes"]
    checkpoint = tmp_path / "old.pt"
    save_checkpoint(state, checkpoint)
    argv = _evaluate_argv(trained, "--report", str(tmp_path / "r.json"), root=_reordered_copy(trained, tmp_path))
    argv[argv.index("--checkpoint") + 1] = str(checkpoint)
    assert evaluate_main(argv) == 0


# ------------------------------------------------------------------- predict
def _predict_argv(trained, *inputs, out):
    return ["--arch", trained["arch"], "--checkpoint", trained["checkpoint"], *map(str, inputs),
            "--out", str(out), "--no-progress"]


@pytest.fixture
def photos(trained, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(trained["images"], folder)
    return folder


@pytest.mark.parametrize("where", ["", "classes", "deeper/still"])
def test_predict_writes_nothing_inside_an_input(trained, photos, capsys, where):
    before = snapshot(photos)
    message = refused(predict_main, _predict_argv(trained, photos, out=photos / where if where else photos),
                      capsys)
    assert "--out" in message and "inside the input" in message
    assert snapshot(photos) == before


def test_predict_never_overwrites_a_file_in_out(trained, photos, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "classes").mkdir(parents=True)
    mine = out / "classes" / "scene_0001.png"
    mine.write_bytes(b"the user's own picture")
    before = snapshot(out)
    message = refused(predict_main, _predict_argv(trained, photos, out=out), capsys)
    assert "--out" in message and str(mine) in message
    assert snapshot(out) == before
    # a second run into the folder of the first
    other = tmp_path / "other"
    assert predict_main(_predict_argv(trained, photos, out=other)) == 0
    before = snapshot(other)
    message = refused(predict_main, _predict_argv(trained, photos, out=other), capsys)
    assert "--out" in message and "exists" in message
    assert snapshot(other) == before


@pytest.mark.parametrize("out", ["{file}/out", UNWRITABLE])
def test_predict_out_that_cannot_be_created(trained, photos, a_file, capsys, out):
    message = refused(predict_main, _predict_argv(trained, photos, out=out.format(file=a_file)), capsys)
    assert message.startswith("python -m rspnet.predict: error: --out")


def _png_header(path, width, height):
    """A PNG whose header claims ``width x height`` greyscale pixels, with one
    row of data: cheap to write, a decompression bomb to open."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b""))


def test_predict_decompression_bomb_is_a_one_line_error(trained, photos, tmp_path, capsys):
    bomb = photos / "huge.png"
    _png_header(bomb, 20000, 20000)
    out = tmp_path / "out"
    message = refused(predict_main, _predict_argv(trained, photos, out=out), capsys)
    assert str(bomb) in message
    assert not out.exists()


def test_predict_batches_images_whose_decoded_size_differs_from_the_header(trained, tmp_path):
    """An EXIF orientation turns a picture when it is read: the class map has
    the size of the picture as read, whatever its header said."""
    photo = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6     # rotate 90 degrees clockwise to display
    Image.fromarray(np.full((32, 64, 3), 120, np.uint8)).save(photo, exif=exif)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(np.full((32, 64, 3), 120, np.uint8)).save(plain)
    out = tmp_path / "out"
    assert predict_main(_predict_argv(trained, photo, plain, out=out) + ["--batch-size", "2"]) == 0
    shape = data.read_image(str(photo)).shape[:2]
    assert np.array(Image.open(out / "classes" / "turned.png")).shape == shape
    assert np.array(Image.open(out / "classes" / "plain.png")).shape == SIZE


def test_predict_groups_a_batch_by_the_size_as_read(trained, tmp_path, monkeypatch):
    """A header whose size is not the size as read (an orientation stored
    after the pixels, say) does not break the batch it was put in."""
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
    Image.fromarray(np.full((32, 64, 3), 90, np.uint8)).save(wide)
    Image.fromarray(np.full((64, 32, 3), 90, np.uint8)).save(tall)
    monkeypatch.setattr(data, "image_size", lambda path: SIZE)
    out = tmp_path / "out"
    assert predict_main(_predict_argv(trained, wide, tall, out=out) + ["--batch-size", "2"]) == 0
    assert np.array(Image.open(out / "classes" / "tall.png")).shape == (64, 32)
    assert np.array(Image.open(out / "classes" / "wide.png")).shape == SIZE


# ------------------------------------------------------------------- rescale
def test_rescale_creates_a_missing_parent(trained, tmp_path):
    out = tmp_path / "missing" / "dir" / "rs.json"
    assert rescale_main(["--arch", trained["arch"], "--out", str(out), "--channels", "6"]) == 0
    assert json.loads(out.read_text())["search"]["rescaled"]["changes"]["channels"] == 6


@pytest.mark.parametrize("out", ["{file}/rs.json", UNWRITABLE + "/rs.json", "{dir}"])
def test_rescale_out_that_cannot_be_written(trained, tmp_path, a_file, capsys, out):
    out = out.format(file=a_file, dir=tmp_path)
    before = snapshot(tmp_path)
    message = refused(rescale_main, ["--arch", trained["arch"], "--out", out, "--channels", "6", "--force"], capsys)
    assert message.startswith("python -m rspnet.rescale: error: --out")
    assert snapshot(tmp_path) == before


def test_rescale_never_writes_over_its_input(fresh, capsys):
    arch = fresh["arch"]
    before = snapshot(arch)[""]
    message = refused(rescale_main, ["--arch", arch, "--out", arch, "--channels", "6", "--force"], capsys)
    assert "--out" in message and "input" in message
    assert snapshot(arch)[""] == before


# -------------------------------------------------------------------- export
REPORT = ["--size", "32x32", "--warmup", "1", "--iters", "1"]


@pytest.mark.parametrize("flag, path", [("--report", "{file}/r.json"), ("--report", UNWRITABLE + "/r.json"),
                                        ("--report", "{arch}"), ("--onnx", "{file}/m.onnx"),
                                        ("--onnx", "/proc/m.onnx"), ("--onnx", "{arch}")])
def test_export_outputs_are_checked_before_the_work(fresh, tmp_path, a_file, capsys, flag, path):
    pytest.importorskip("onnxruntime")
    trained = fresh
    path = path.format(file=a_file, arch=trained["arch"])
    before = snapshot(trained["arch"])
    message = refused(export_main, ["--arch", trained["arch"], "--checkpoint", trained["checkpoint"],
                                    flag, path, *REPORT], capsys)
    assert message.startswith("python -m rspnet.export: error: " + flag)
    assert snapshot(trained["arch"]) == before


def test_export_onnx_and_report_must_differ(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = str(tmp_path / "m.onnx")
    message = refused(export_main, ["--arch", trained["arch"], "--onnx", path, "--report", path, *REPORT], capsys)
    assert "--report" in message and "--onnx" in message
    assert os.listdir(tmp_path) == []


def test_export_default_report_is_not_replaced(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--arch", trained["arch"], "--report", *REPORT]
    assert export_main(argv) == 0
    before = snapshot(tmp_path)
    message = refused(export_main, argv, capsys)
    assert "--report" in message and "export-report.json" in message
    assert snapshot(tmp_path) == before
    assert export_main(["--arch", trained["arch"], "--report", "export-report.json", *REPORT]) == 0


@pytest.mark.slow  # the ONNX export traces the network
def test_export_static_shapes_exports_and_checks(trained, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "static.onnx"
    umask = os.umask(0o022)
    try:
        assert export_main(["--arch", trained["arch"], "--checkpoint", trained["checkpoint"], "--onnx",
                            str(onnx_path), "--dynamic", "none", "--size", "32x64"]) == 0
    finally:
        os.umask(umask)
    assert "dynamic none" in capsys.readouterr().out
    assert os.stat(onnx_path).st_mode & 0o777 == 0o644   # the umask's, not mkstemp's 0600
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 32, 64]
