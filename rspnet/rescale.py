"""``python -m rspnet.rescale``: a searched architecture at other widths.

A search runs a proxy of the network it is for: DARTS searches eight cells of
16 channels and trains twenty of 36, Auto-DeepLab searches F = 8 and trains
F = 20 or 48. What the search chooses -- the cell's operations and edges, the
trellis's kept paths and their weights -- does not depend on the widths, so
the same architecture can be trained wider or narrower. This command writes
a copy of an architecture file with the widths, RSP ratio, head or path order
changed and everything the search chose kept as it was::

    python -m rspnet.rescale --arch runs/search/architecture.json --out runs/final.json \\
        --scale-channels 32,64,128,256 --rsp-ratio 0.25 --pool-first

and prints the parameters and FLOPs (at ``--size``, for ``--classes``
classes) before and after. The new file records where it came from and what
changed under ``search.rescaled``. An architecture the changes make
impossible (a width the RSP split cannot halve, say) is refused with the
field named, and nothing is written. ``--out`` is checked before anything
runs: never the input file, a missing parent directory is created, and an
existing file is only replaced with ``--force``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from rspnet.architecture import HEAD_KINDS, rescaled
from rspnet.cli import architecture_arg, channel_list, checked, parse_size, positive_int
from rspnet.files import check_output_file
from rspnet import cli


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m rspnet.rescale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="architecture file (architecture.json of rspnet.search)")
    p.add_argument("--out", required=True, help="where to write the rescaled architecture file")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--channels", type=positive_int,
                   help="F, the channels at 1/4, doubled at each coarser scale")
    p.add_argument("--scale-channels", type=channel_list, metavar="C0,C1,...",
                   help="the channels of every scale, finest first (instead of --channels)")
    p.add_argument("--rsp-ratio", type=float, help="fraction of each node's channels that go through the cell")
    p.add_argument("--head", choices=HEAD_KINDS, help="the head design")
    p.add_argument("--head-channels", type=positive_int, help="width of the head")
    p.add_argument("--pool-first", action=argparse.BooleanOptionalAction, default=None,
                   help="pool trellis paths into coarser nodes before their projection")
    p.add_argument("--classes", type=positive_int, default=19, help="classes for the printed costs")
    p.add_argument("--size", type=parse_size, default=(64, 128), help="input HxW of the printed FLOPs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    arch = architecture_arg(parser, args.arch)
    checked(parser, check_output_file, args.out, "--out", (args.arch,))
    if os.path.lexists(args.out) and not args.force:
        parser.error(f"--out {args.out} exists (--force replaces it)")
    try:
        new = rescaled(arch, args.channels, args.scale_channels, args.rsp_ratio, args.head,
                       args.head_channels, args.pool_first, source=os.path.abspath(args.arch))
    except ValueError as exc:
        parser.error(str(exc))

    from rspnet.models import RSPNet, count_flops, count_params

    for name, a in (("before", arch), ("after", new)):
        model = RSPNet(a, args.classes).eval()
        print(f"{name}: widths {','.join(map(str, a.widths))}, RSP ratio {a.rsp_ratio:g}, head {a.head} "
              f"({a.head_channels}), pool-first {'yes' if a.pool_first else 'no'}: "
              f"{count_params(model) / 1e6:.3f} M params, "
              f"{count_flops(model, args.size) / 1e9:.3f} GFLOPs at {args.size[0]}x{args.size[1]}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)   # checked creatable
    new.save(args.out)
    print(f"architecture file: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded(main, "python -m rspnet.rescale")())
