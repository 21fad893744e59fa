"""``python -m rspnet.evaluate``: mIoU of a trained RSPNet, with a per-class table
named by the data set's classes (``--data synthetic|cityscapes|camvid|folder``).

Single-scale by default; ``--scales 0.75 1.0 1.25`` averages the class
probabilities over rescaled inputs and ``--flip`` adds horizontally flipped
ones. Predictions are scored at the labels' resolution (Cityscapes: the native
1024x2048) with the definitions of the official evaluation
(``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``), so the mIoU
printed is the one the official script computes on the PNGs of
``--save-predictions DIR`` (``--official`` runs it on them afterwards):

    DIR/labelIds/<city>/<stem>_leftImg8bit.png   labelId PNGs (CITYSCAPES_RESULTS=DIR/labelIds)
    DIR/masks/<split>/<stem>.png                 CamVid, folder: the data set's own mask encoding
    DIR/overlay/<city>/<stem>_overlay.png        image blended with the coloured prediction

Outputs are checked before anything runs: neither DIR nor ``--report`` may lie
inside the data root or be an input, DIR must not hold a file of the names it
would write, and an existing default report is only replaced when named with
``--report``. A checkpoint whose class names differ from the data set's is refused.

Example::

    python -m rspnet.evaluate --arch runs/search/architecture.json --checkpoint runs/train/best.pt
    python -m rspnet.evaluate --arch A.json --checkpoint C.pt --data cityscapes \\
        --data-root /data/cityscapes --scales 0.75 1.0 1.25 --flip --save-predictions preds --official
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from rspnet import data
from rspnet.cli import (add_config_option, checked, config_of, data_root_help, nonnegative_int, parse_size,
                        positive_int, seed_int, trained_model_args)
from rspnet.engine.config import check_workers, plain
from rspnet.engine.settings import add_flags, setting
from rspnet.engine.checkpoint import CheckpointError
from rspnet.engine import precision
from rspnet.engine.precision import AMP_MODES, autocast
from rspnet.engine.session import set_threads
from rspnet.files import check_output_dir, check_output_file, write_json, write_png
from rspnet.metrics import ConfusionMatrix, format_table, summarize
from rspnet.models import inference_form
from rspnet.train.checkpoint import load_trained_model
from rspnet import cli
from rspnet.engine.scoring import class_probabilities

_IMAGE_SUFFIX = "_leftImg8bit.png"


# ------------------------------------------------------------ prediction files
def prediction_names(dataset, index: int) -> tuple[str, str]:
    """(city, stem) of item ``index``: the official file's for Cityscapes,
    ``synthetic_<index>_000019`` for the synthetic scenes."""
    images = getattr(dataset, "images", None)
    if images is not None:
        name = os.path.basename(images[index])
        stem = name[:-len(_IMAGE_SUFFIX)] if name.endswith(_IMAGE_SUFFIX) else os.path.splitext(name)[0]
        return os.path.basename(os.path.dirname(images[index])), stem
    return "synthetic", f"synthetic_{index:06d}_000019"


def prediction_paths(out_dir: str, city: str, stem: str,
                     classes: data.ClassTable = data.CITYSCAPES) -> tuple[str, str]:
    """(prediction PNG, overlay PNG) that ``save_prediction`` writes for an item."""
    cityscapes = classes is data.CITYSCAPES
    label = os.path.join(out_dir, "labelIds" if cityscapes else "masks", city,
                         stem + (_IMAGE_SUFFIX if cityscapes else ".png"))
    return label, os.path.join(out_dir, "overlay", city, stem + "_overlay.png")


def save_prediction(out_dir: str, city: str, stem: str, train_ids: np.ndarray,
                    image: np.ndarray | None = None, classes: data.ClassTable = data.CITYSCAPES) -> str:
    """Write the prediction in the data set's mask encoding (Cityscapes: the
    official labelId PNG) and, given the uint8 image, an overlay; returns the
    prediction PNG's path."""
    path, overlay = prediction_paths(out_dir, city, stem, classes)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_png(path, classes.encode(train_ids))
    if image is not None:
        os.makedirs(os.path.dirname(overlay), exist_ok=True)
        colour = classes.colorize(train_ids).astype(np.float32)
        blend = (0.5 * image.astype(np.float32) + 0.5 * colour).round().clip(0, 255).astype(np.uint8)
        write_png(overlay, blend)
    return path


def check_prediction_files(out_dir: str, dataset, classes: data.ClassTable, inputs=(), others=()) -> None:
    """``ValueError`` naming ``--save-predictions`` unless every file
    ``save_prediction`` would write for ``dataset`` is new (no file that
    existed before is ever replaced), written once, not one of ``others``
    (the report), and its directory can be created outside ``inputs``."""
    written: dict[str, int] = {}
    others = {os.path.realpath(o) for o in others}
    for index in range(len(dataset)):
        for path in prediction_paths(out_dir, *prediction_names(dataset, index), classes):
            if os.path.lexists(path):
                raise ValueError(f"--save-predictions {out_dir}: {path} exists; evaluate never replaces a file "
                                 f"that was there before it: choose a new or empty directory")
            if path in written or os.path.realpath(path) in others:
                what = f"image {written[path]}" if path in written else "--report"
                raise ValueError(f"--save-predictions {out_dir}: image {index} and {what} would both be "
                                 f"written as {path}")
            written[path] = index
    for directory in sorted({os.path.dirname(p) for p in written}):
        check_output_dir(directory, "--save-predictions", inputs)


# ------------------------------------------------------- official evaluation
def official_evaluation(ground_truth: Sequence[str], prediction_dir: str) -> dict[str, Any]:
    """Run ``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling`` on
    ``ground_truth`` (``*_gtFine_labelIds.png`` paths) against the PNGs under
    ``prediction_dir``, without its instance-level scores (which need
    ``*_instanceIds.png``), console output or JSON file. Returns its result
    dict (``classScores``, ``averageScoreClasses``, ``confMatrix``, ...)."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    args = official.args
    saved = dict(vars(args))
    try:
        args.predictionPath = os.path.abspath(prediction_dir)
        args.predictionWalk = None
        args.evalInstLevelScore = False
        args.evalPixelAccuracy = False
        args.JSONOutput = False
        args.quiet = True
        args.colorized = False
        args.bold = args.nocol = ""
        with contextlib.redirect_stdout(io.StringIO()) as captured:
            try:
                predictions = [official.getPrediction(args, gt) for gt in ground_truth]
                return official.evaluateImgLists(predictions, list(ground_truth), args)
            except SystemExit:  # its printError() exits the process
                raise RuntimeError("official Cityscapes evaluation failed: "
                                   + captured.getvalue().strip().splitlines()[-1]) from None
    finally:
        vars(args).clear()
        vars(args).update(saved)


def official_class_scores(result: dict[str, Any]) -> dict[str, float | None]:
    """The official per-class IoU of the 19 training classes, in trainId order."""
    return {name: (None if math.isnan(result["classScores"][name]) else result["classScores"][name])
            for name in data.CLASS_NAMES}


# ----------------------------------------------------------------------- CLI
_SPLITS = data.SPLITS   # (inside the class, ``data`` is the field)


@dataclass
class EvalConfig:
    """What an evaluation computes (kept in its report; ``--config`` reads it)."""
    data: str = setting("synthetic", "the data set", group="data", choices=data.DATASETS)
    data_root: str | None = setting(None, data_root_help(), group="data")
    split: str = setting("val", "the split scored (test: CamVid and folder data sets)", group="data",
                         choices=_SPLITS)
    images: int | None = setting(None, "evaluate the first N images (none: all; synthetic: the number the "
                                 "checkpoint's run used for this split)", group="data", type=positive_int)
    size: tuple[int, int] | None = setting(
        None, "HxW the images are resized to at scale 1.0 (multiples of 32). Synthetic: also the size the "
        "scenes are rendered at (none: the training size of the checkpoint); other data sets: none = each "
        "image at its own size, padded to a multiple of 32 as rspnet.predict does. Predictions are always "
        "scored at the labels' resolution", group="data", type=parse_size)
    seed: int | None = setting(None, "synthetic scene seed (none: the checkpoint's training seed)", group="data",
                               type=seed_int)
    scales: tuple[float, ...] = setting((1.0,), "input scales to average (e.g. 0.75 1.0 1.25)",
                                        group="inference", type=float, nargs="+")
    flip: bool = setting(False, "also average horizontally flipped inputs", group="inference")
    batch_size: int = setting(1, "images per forward pass", group="inference", type=positive_int)
    workers: int = setting(0, "DataLoader workers", group="inference", type=nonnegative_int)
    amp: str = setting("off", "mixed-precision inference (auto: bf16/fp16 on a GPU); off so that scores are "
                       "fp32", group="inference", choices=AMP_MODES)


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m rspnet.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_options(p)
    add_config_option(p, "evaluate")
    add_flags(p, EvalConfig)
    p.add_argument("--save-predictions", metavar="DIR",
                   help="write the predictions (Cityscapes: labelId PNGs in DIR/labelIds; others: masks in "
                        "DIR/masks) and overlays (DIR/overlay)")
    p.add_argument("--official", action="store_true",
                   help="with --save-predictions on Cityscapes: also run the official "
                        "cityscapesscripts evaluation on the saved PNGs and report its mIoU")
    p.add_argument("--report", help="JSON report path (default: <checkpoint>-eval.json beside it)")
    return p


def parse_args(argv: Sequence[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.settings = config_of(parser, args, EvalConfig, "evaluate")
    vars(args).update(dataclasses.asdict(args.settings))   # the settings, as the flags name them
    trained_model_args(parser, args)
    _check_options(parser, args)
    try:
        args.classes = data.class_table(args.data, args.data_root)
    except ValueError as exc:
        parser.error(f"--data {args.data}: {exc}")
    try:
        args.model, args.state = load_trained_model(args.architecture, args.checkpoint, args.classes.num_classes,
                                                    f"--arch {args.arch}")
    except CheckpointError as exc:
        parser.error(f"{exc} (--data {args.data})" if "classes" in str(exc) else str(exc))
    checked(parser, check_class_names, args.state, args.classes, f"checkpoint {args.checkpoint}",
            f"--data {args.data}")
    inputs = [p for p in (args.data_root, args.checkpoint, args.arch) if p]
    _check_report(parser, args, inputs)
    if args.save_predictions:
        checked(parser, check_output_dir, args.save_predictions, "--save-predictions", inputs)
    args.dataset = _dataset(parser, args)
    if args.save_predictions:
        checked(parser, check_prediction_files, args.save_predictions, args.dataset, args.classes, inputs,
                (args.report,))
    return parser, args


def _check_options(parser: argparse.ArgumentParser, args) -> None:
    """The checks of the flags among themselves and of the data source."""
    if args.data == "synthetic" and args.split == "test":
        parser.error("--split test: the synthetic scenes have train and val")
    checked(parser, data.check_source, args.data, args.data_root, (args.split,))
    checked(parser, check_workers, args.workers)
    for s in args.scales:
        if not (math.isfinite(s) and 0.1 <= s <= 4):
            parser.error(f"--scales: {s} is outside [0.1, 4]")
    if args.official and not args.save_predictions:
        parser.error("--official needs --save-predictions DIR (it scores the saved PNGs)")
    if args.official and args.data != "cityscapes":
        parser.error("--official needs --data cityscapes (the official script reads gtFine files)")
    if args.official and args.images is not None:
        parser.error("--official scores every ground-truth file of the split; drop --images")


def _check_report(parser: argparse.ArgumentParser, args, inputs) -> None:
    """``--report``, or its default beside the checkpoint: writable, no input,
    and the default not replaced unless the user names it."""
    named = args.report is not None
    if not named:
        args.report = os.path.splitext(args.checkpoint)[0] + "-eval.json"
    checked(parser, check_output_file, args.report, "--report", inputs)
    if not named and os.path.lexists(args.report):
        parser.error(f"--report {args.report}: the default report path exists (an earlier evaluation?); "
                     f"give --report {args.report} to replace it, or another path")


def check_class_names(state, classes: data.ClassTable, checkpoint: str, source: str) -> None:
    """``ValueError`` if ``state`` names its classes and the names differ from
    ``classes``' (a checkpoint without names is taken as it is)."""
    stored = state.get("classes")
    saved = stored.get("names") if isinstance(stored, dict) else None
    names = list(classes.names)
    if not saved or list(saved) == names:
        return
    saved = list(saved)
    i = next((k for k, (a, b) in enumerate(zip(saved, names)) if a != b), min(len(saved), len(names)))
    theirs = repr(saved[i]) if i < len(saved) else "nothing"
    ours = repr(names[i]) if i < len(names) else "nothing"
    raise ValueError(f"{checkpoint} was trained for other classes than {source} has: class {i} is {theirs} "
                     f"in the checkpoint but {ours} in the data set; the scores would be labelled with the "
                     f"wrong names")


def _dataset(parser: argparse.ArgumentParser, args):
    """The data set evaluated, every cheap check of its files done (before
    anything is written)."""
    train_config = args.state.get("config", {})
    if args.data == "synthetic":
        args.input_size = args.size or tuple(train_config.get("size", (128, 256)))
        args.scene_seed = args.seed if args.seed is not None else int(train_config.get("seed", 0))
        # by default the very scenes the training run validated on (or trained on)
        length = (args.images or train_config.get(f"{args.split}_images")
                  or data.SYNTHETIC_TRAINING_IMAGES[args.split])
        return data.get_dataset("synthetic", args.split, size=args.input_size, length=length, seed=args.scene_seed)
    args.input_size, args.scene_seed = args.size, None
    try:
        dataset = data.get_dataset(args.data, args.split, root=args.data_root, size=None, length=args.images)
        sizes = set(dataset.sizes()) if args.batch_size > 1 and args.size is None else set()
    except (OSError, ValueError) as exc:
        parser.error(f"--data {args.data}: {exc}")
    if len(sizes) > 1:
        parser.error(f"--batch-size {args.batch_size}: the images have {len(sizes)} different sizes and are "
                     f"evaluated at their own; use --batch-size 1 (or --size HxW)")
    return dataset


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse_args(argv)
    device = torch.device(args.device)
    set_threads(args.threads, device)
    # BatchNorm folded into the convolutions: the same outputs to fp32 rounding, fewer passes over the maps
    model = inference_form(args.model).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = precision.amp_dtype(args.amp, device) if device.type == "cuda" else None   # CPU: always fp32
    start = time.perf_counter()
    confusion, saved = _evaluate(args, model, device, dtype, channels_last)
    seconds = time.perf_counter() - start

    summary = summarize(confusion.matrix, args.classes.names)
    scales = " ".join(f"{s:g}" for s in args.scales)
    title = (f"{args.data} {args.split}, {len(args.dataset)} images, scales {scales}"
             f"{' + flip' if args.flip else ''}, checkpoint {args.checkpoint}")
    print(format_table(summary, title))
    report = _report(args, summary, confusion, seconds, device, dtype)
    if args.save_predictions:
        kind = "labelIds" if args.classes is data.CITYSCAPES else "masks"
        report["predictions"] = {kind: os.path.abspath(os.path.join(args.save_predictions, kind)),
                                 "overlay": os.path.abspath(os.path.join(args.save_predictions, "overlay")),
                                 "files": len(saved)}
        print(f"predictions: {len(saved)} {kind} PNGs in {report['predictions'][kind]}, "
              f"overlays in {report['predictions']['overlay']}")
    if args.official:
        ground_truth = list(args.dataset.labels) if hasattr(args.dataset, "labels") else []
        result = official_evaluation(ground_truth, os.path.join(args.save_predictions, "labelIds"))
        official = official_class_scores(result)
        report["official"] = {"miou": result["averageScoreClasses"], "per_class_iou": official}
        diff = abs(result["averageScoreClasses"] - (summary["miou"] or 0.0))
        print(f"official cityscapesscripts mIoU: {100 * result['averageScoreClasses']:.4f}% "
              f"(rspnet {100 * summary['miou']:.4f}%, difference {diff:.2e})")
    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)   # checked creatable
    write_json(args.report, report)
    print(f"report: {args.report}")
    return 0


def _evaluate(args, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None,
              channels_last: bool) -> tuple[ConfusionMatrix, list[str]]:
    """The confusion matrix over ``args.dataset``, and the prediction files
    written (``--save-predictions``)."""
    dataset, size, classes = args.dataset, args.input_size, args.classes
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                         num_workers=args.workers)
    confusion = ConfusionMatrix(classes.num_classes, data.IGNORE_INDEX)
    index = 0
    saved = []
    for images, labels in tqdm(loader, desc="evaluate", disable=args.no_progress, dynamic_ncols=True):
        images = images.to(device)
        labels = labels.to(device)
        probs = class_probabilities(model, images, tuple(labels.shape[-2:]), args.scales, args.flip, size,
                                    dtype, channels_last)
        pred = probs.argmax(1)
        confusion.update(pred, labels)
        if args.save_predictions:
            for k in range(pred.shape[0]):
                city, stem = prediction_names(dataset, index + k)
                saved.append(save_prediction(args.save_predictions, city, stem,
                                             pred[k].to(torch.uint8).cpu().numpy(),
                                             data.denormalize(images[k]), classes))
        index += pred.shape[0]
    return confusion, saved


def _report(args, summary: dict[str, Any], confusion: ConfusionMatrix, seconds: float, device: torch.device,
            dtype: torch.dtype | None) -> dict[str, Any]:
    size = args.input_size
    return {
        "checkpoint": os.path.abspath(args.checkpoint), "architecture": os.path.abspath(args.arch),
        "architecture_fingerprint": args.architecture.fingerprint(),
        "checkpoint_epoch": args.state.get("epoch"),
        "data": args.data, "data_root": args.data_root, "split": args.split, "images": len(args.dataset),
        "classes": list(args.classes.names),
        "seed": args.scene_seed, "input_size": None if size is None else list(size),
        "scales": list(args.scales), "flip": args.flip, "device": str(device),
        "amp": None if dtype is None else str(dtype).split(".")[-1],
        "seconds": round(seconds, 2), **summary,
        "confusion_matrix": confusion.matrix.tolist(),
        "config": plain(args.settings),   # a valid --config: the same evaluation again
    }


if __name__ == "__main__":
    sys.exit(cli.guarded(main, "python -m rspnet.evaluate")())
