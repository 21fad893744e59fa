"""``python -m rspnet.predict``: segment image files and folders with a trained RSPNet.

    python -m rspnet.predict --arch runs/search/architecture.json --checkpoint runs/train/best.pt \\
        photos/ street.jpg --out predictions

For every image it writes, at the image's own resolution and under its own
name (a folder's files keep their paths relative to the folder):

    OUT/classes/<name>.png   class indices (a palette PNG: viewers show the class colours)
    OUT/overlay/<name>.png   the image blended half and half with the class colours

Whole-image inference, padded to a multiple of 32 (see ``rspnet.predict``);
images of the same padded size are batched. The classes (names, colours) are
the checkpoint's, i.e. those of the data set it was trained on. Every input is
read by ``rspnet.data``'s reader and checked (its header) before anything is
written, and so is OUT: it may not be, or lie inside, an input, and no file
it would write may exist already (predict never replaces a file).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rspnet import data
from rspnet.cli import checked, nonnegative_int, positive_int, trained_model_args
from rspnet.engine.checkpoint import CheckpointError
from rspnet.engine.precision import AMP_MODES, amp_dtype
from rspnet.engine.session import set_threads
from rspnet.files import check_output_dir, write_png
from rspnet.predict import MULTIPLE, padded_size, predict_batch
from rspnet.models import inference_form
from rspnet.train.checkpoint import load_trained_model
from rspnet import cli

KINDS = ("classes", "overlay")   # OUT/<kind>/<name>.png


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m rspnet.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and folders (searched recursively)")
    p.add_argument("--out", required=True, help="output directory (classes/ and overlay/ inside)")
    p.add_argument("--flip", action="store_true", help="also predict the mirrored image and average")
    p.add_argument("--batch-size", type=positive_int, default=4,
                   help="images per forward pass (images of one padded size go together)")
    p.add_argument("--amp", choices=AMP_MODES, default="off", help="mixed precision on a GPU (default off)")
    cli.add_model_options(p)
    return p


def _class_table(state) -> data.ClassTable:
    """The checkpoint's classes; checkpoints from before they were stored
    are Cityscapes' (the only classes rspnet trained then)."""
    if "classes" in state:
        table = data.ClassTable.from_dict(state["classes"])
        if table.num_classes != int(state["num_classes"]):
            raise ValueError(f"its class table names {table.num_classes} classes but the network has "
                             f"{int(state['num_classes'])}")
        return table
    if int(state["num_classes"]) == data.CITYSCAPES.num_classes:
        return data.CITYSCAPES
    return data.ClassTable.simple([f"class {i}" for i in range(int(state["num_classes"]))])


def collect_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """(image path, output name without extension) of every input, in order;
    ``ValueError`` naming the path for a missing input, an empty folder, a
    file that is not a readable image, or two inputs with the same output
    name."""
    found: list[tuple[str, str]] = []
    for item in inputs:
        if os.path.isdir(item):
            files = []
            for parent, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [os.path.join(parent, n) for n in sorted(names)
                          if not n.startswith(".") and os.path.splitext(n)[1].lower() in data.IMAGE_EXTENSIONS]
            if not files:
                raise ValueError(f"{item}: no images ({', '.join(data.IMAGE_EXTENSIONS)}) in this folder")
            found += [(f, os.path.splitext(os.path.relpath(f, item))[0]) for f in files]
        elif os.path.isfile(item):
            found.append((item, os.path.splitext(os.path.basename(item))[0]))
        elif os.path.exists(item):
            raise ValueError(f"{item}: not a regular file or a folder (a FIFO, socket or device)")
        else:
            raise ValueError(f"{item}: no such file or directory")
    names: dict[str, str] = {}
    unique, seen = [], set()
    for path, name in found:   # the same image named twice is predicted once
        key = (os.path.realpath(path), name)
        if key not in seen:
            seen.add(key)
            unique.append((path, name))
    found = unique
    for path, name in found:
        if name in names:
            raise ValueError(f"{path} and {names[name]} would both be written as {name}.png; "
                             f"give them separately or rename one")
        names[name] = path
    return found


def check_out(out: str, names: Sequence[str], inputs: Sequence[str] = ()) -> None:
    """``ValueError`` naming ``--out`` unless every file predict would write
    under ``out`` for ``names`` is new (the first one that exists is named)
    and its directory can be created, outside every input."""
    directories = set()
    for name in names:
        for kind in KINDS:
            path = os.path.join(out, kind, name + ".png")
            if os.path.lexists(path):
                raise ValueError(f"--out {out}: {path} exists; predict never replaces a file: choose a new or "
                                 f"empty --out, or move the file away")
            directories.add(os.path.dirname(path))
    for directory in sorted(directories):
        check_output_dir(directory, "--out", inputs)


def parse_args(argv: Sequence[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    trained_model_args(parser, args)
    inputs = [*args.inputs, args.checkpoint, args.arch]
    checked(parser, check_output_dir, args.out, "--out", inputs)
    try:
        args.model, state = load_trained_model(args.architecture, args.checkpoint, arch_name=f"--arch {args.arch}")
    except CheckpointError as exc:
        parser.error(str(exc))
    try:
        args.classes = _class_table(state)
    except (KeyError, TypeError, ValueError) as exc:
        parser.error(f"checkpoint {args.checkpoint}: bad class table: {exc}")
    try:   # the pre-check: rspnet.data's reader on every header (regular file, pixel limit, orientation)
        args.images = [(path, name, data.image_size(path)) for path, name in collect_inputs(args.inputs)]
    except ValueError as exc:
        parser.error(str(exc))
    checked(parser, check_out, args.out, [name for _, name, _ in args.images], inputs)
    return parser, args


def _batches(images: list, batch_size: int) -> list[list]:
    """Batches of images of one padded size (each padded as if alone, so a
    batch predicts what single images would), in input order within a size."""
    groups: dict[tuple[int, int], list] = {}
    for item in images:
        groups.setdefault((padded_size(*item[2]), item[2]), []).append(item)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def _save(out: str, name: str, classes: np.ndarray, image: np.ndarray, table: data.ClassTable) -> None:
    index = Image.fromarray(classes)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:table.num_classes] = table.colours
    index.putpalette(palette.reshape(-1).tolist())
    blend = (0.5 * image.astype(np.float32) + 0.5 * table.colorize(classes).astype(np.float32))
    for kind, picture in zip(KINDS, (index, blend.round().clip(0, 255).astype(np.uint8))):
        path = os.path.join(out, kind, name + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_png(path, picture)


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse_args(argv)
    device = torch.device(args.device)
    set_threads(args.threads, device)
    # BatchNorm folded into the convolutions: the same outputs to fp32 rounding, fewer passes over the maps
    model = inference_form(args.model).to(device)
    dtype = amp_dtype(args.amp, device) if device.type == "cuda" else None   # CPU: always fp32
    bar = tqdm(total=len(args.images), desc="predict", unit="img", disable=args.no_progress, dynamic_ncols=True)
    for batch in _batches(args.images, args.batch_size):
        try:
            pictures = [data.read_image(path) for path, _, _ in batch]
        except ValueError as exc:   # a file that passed the header check but does not decode
            bar.close()
            parser.error(str(exc))
        # by the pictures as read: a header's size can differ (e.g. an orientation stored after the pixels)
        shapes: dict[tuple[int, ...], list] = {}
        for (_, name, _), picture in zip(batch, pictures):
            shapes.setdefault(picture.shape, []).append((name, picture))
        for group in shapes.values():
            x = torch.stack([data.image_tensor(p) for _, p in group]).to(device)
            classes = predict_batch(model, x, args.flip, dtype).to(torch.uint8).cpu().numpy()
            for (name, picture), prediction in zip(group, classes):
                _save(args.out, name, prediction, picture, args.classes)
        bar.update(len(batch))
    bar.close()
    print(f"{len(args.images)} images ({args.classes.num_classes} classes, whole image padded to multiples of "
          f"{MULTIPLE}{', + flip' if args.flip else ''}): class PNGs in {os.path.join(args.out, 'classes')}, "
          f"overlays in {os.path.join(args.out, 'overlay')}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded(main, "python -m rspnet.predict")())
