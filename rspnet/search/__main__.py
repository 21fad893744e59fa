"""``python -m rspnet.search``: the two-stage RSPNet search.

Stage 1 searches the cell on the single-path network; stage 2 searches the
paths of the trellis around that cell. The defaults are sized to finish on two
CPU cores in a few minutes on the synthetic data (see docs/design.md); the
paper-scale settings are flags (e.g. ``--size 512x1024 --channels 16
--layers 8 --epochs 40 --batch-size 8 --device cuda``).

A light-weight network (docs/design.md §6): search a proxy with
``--same-scale-paths --head light``, then train the searched cell and
trellis wider with ``python -m rspnet.rescale ... --pool-first``.

Data parallel: ``torchrun --nproc_per_node=N -m rspnet.search ...`` (one
process per GPU; ``--batch-size`` is the global batch). Checkpoints at every
epoch end and every ``--checkpoint-every`` steps; ``--resume auto`` continues
exactly where a search stopped (mid-epoch included); SIGTERM / Ctrl-C write a
checkpoint at the next step and stop.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from rspnet import data
from rspnet.cli import add_config_option, add_run_options, architecture_arg, checked, config_of, positive_int, \
    run_command, run_options
from rspnet.search import STAGES, SearchConfig, check_config, run
from rspnet import cli


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m rspnet.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=STAGES, default="both",
                   help="1: search the cell; 2: search the paths around --cell; both: 1 then 2 (default both)")
    p.add_argument("--cell", help="architecture file whose cell stage 2 uses (needed by --stage 2)")
    p.add_argument("--random", type=positive_int, metavar="N",
                   help="no search: draw N architectures uniformly from the same space (the random "
                        "baseline, seeded by --seed) and write them to --out as random-NNN.json")
    p.add_argument("--within-budgets", action="store_true",
                   help="with --random: draw only architectures within --flops-budget and --latency-budget "
                        "too, by the search's cost tables (--param-budget always applies)")
    add_config_option(p, "search")
    add_run_options(p, "search", SearchConfig)
    return p


def _random(parser: argparse.ArgumentParser, args, config: SearchConfig) -> int:
    import os
    import time

    from rspnet.search.baseline import write_random_architectures

    out = args.out or os.path.join("runs", time.strftime("random-%Y%m%d-%H%M%S"))
    classes = data.class_table(config.data, config.data_root).num_classes
    limits = {}
    if args.within_budgets:   # --out is checked before the tables are timed
        from rspnet.files import check_output_dir
        try:
            check_output_dir(out, "--out")
        except ValueError as exc:
            parser.error(str(exc))
        from rspnet.search.stage import cost_penalties

        flags = {"flops": "--flops-budget", "latency": "--latency-budget"}
        limits = {flags[metric]: (penalty.table, penalty.budget)
                  for metric, penalty in cost_penalties(config, classes, config.device).items()}
    try:
        written = write_random_architectures(config, args.random, out, config.seed, config.param_budget,
                                            classes, progress=not args.no_progress, max_costs=limits)
    except ValueError as exc:
        parser.error(str(exc))
    for path, params in written:
        print(f"{path}  {params / 1e6:.3f} M params")
    print(f"{len(written)} random architectures (seed {config.seed}) in {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_of(parser, args, SearchConfig, "search")
    if args.within_budgets and not args.random:
        parser.error("--within-budgets goes with --random N")
    if args.within_budgets and config.flops_budget is None and config.latency_budget is None:
        parser.error("--within-budgets needs --flops-budget or --latency-budget")
    if args.random:   # the budget filters the draws; no penalty shapes a search
        checked(parser, check_config, dataclasses.replace(config, param_budget=None))
        return _random(parser, args, config)
    checked(parser, check_config, config)
    options = run_options(parser, args, "search")
    if args.stage == "2" and not args.cell and not options.resume:
        parser.error("--stage 2 needs --cell ARCHITECTURE_JSON (the result of stage 1)")
    cell = architecture_arg(parser, args.cell, "--cell").cell if args.cell else None
    return run_command(parser, lambda: run(config, options, args.stage, cell))


if __name__ == "__main__":
    sys.exit(cli.guarded(main, "python -m rspnet.search")())
