"""What the command-line tools (search, train, evaluate, export) share:
argument types, the flags every run has, and how a run's outcome becomes an
exit status. Each ``__main__`` only maps its flags to a config and calls the
run."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable


MAX_INPUT_PIXELS = 2**27   # as rspnet.data.MAX_PIXELS: the largest image the reader decodes


class ArgumentParser(argparse.ArgumentParser):
    """rspnet's command lines: an error is one line naming the flag or the
    file (exit status 2), not the whole usage, which would bury it."""

    def __init__(self, prog: str, description: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=prog, description=description, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def guarded(main: Callable[..., int], prog: str) -> Callable[..., int]:
    """A command's ``main`` with the failures of a running machine as one
    line and exit status 1 instead of a traceback: out of memory (a size or
    width the machine cannot hold), or a read or write that failed."""
    import functools

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except MemoryError:
            message = "out of memory"
        except RuntimeError as exc:
            text = str(exc)
            if not any(k in text for k in ("can't allocate memory", "out of memory", "CUDA out of memory")):
                raise
            message = "out of memory: " + text.splitlines()[0]
        except OSError as exc:
            message = f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
        print(f"{prog}: error: {message} (try smaller sizes, widths or batches)"
              if "memory" in message else f"{prog}: error: {message}", file=sys.stderr)
        return 1
    return run


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (or ``N`` for NxN) of a network input: multiples of 32."""
    height, width = parse_image_size(text)
    if height % 32 or width % 32:
        raise argparse.ArgumentTypeError(
            f"{text}: height and width must be multiples of 32 (the network reaches 1/32 scale)")
    return height, width


def parse_image_size(text: str) -> tuple[int, int]:
    """``HxW`` (or ``N``) of an image that is not fed to the network as it is
    (it is cropped, or padded by the one inference path): any positive size."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 64x128), got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 64x128), got {text!r}")
    if parts[0] * parts[1] > MAX_INPUT_PIXELS:
        raise argparse.ArgumentTypeError(
            f"{text}: more than {MAX_INPUT_PIXELS} pixels (2^27, e.g. 8192x16384), the largest image rspnet reads")
    return parts[0], parts[1]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """``--seed``: 0 <= seed < 2^32 (what every generator it seeds accepts)."""
    value = nonnegative_int(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed below 2^32, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def channel_list(text: str) -> tuple[int, ...]:
    """``--scale-channels``: comma-separated widths, each at least 2."""
    try:
        widths = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(c < 2 for c in widths):
        raise argparse.ArgumentTypeError(f"every width must be >= 2, got {text!r}")
    return widths


def data_root_help() -> str:
    """The help of ``--data-root``, which every command with ``--data`` has."""
    return ("the data set's directory: cityscapes: holding leftImg8bit/ and gtFine/; camvid: holding "
            "train/ trainannot/ val/ valannot/ (test/ testannot/); folder: holding images/{train,val}/, "
            "masks/{train,val}/ and classes.json (see the README, \"Your own data\")")


# ------------------------------------------------------ options of every run
def add_config_option(parser: argparse.ArgumentParser, command: str) -> None:
    """``--config FILE|PRESET``: the settings of a JSON / YAML file or of a
    preset shipped with rspnet; flags given as well override it."""
    from rspnet.engine.settings import preset_names

    presets = ", ".join(preset_names(command)) or "none yet"
    parser.add_argument("--config", metavar="FILE|PRESET",
                        help=f"settings from a JSON or YAML file (a run's own summary.json or metrics.json "
                             f"reproduces it) or a preset: {presets}; flags given as well override it")


def config_of(parser: argparse.ArgumentParser, args: argparse.Namespace, config_type: type, command: str):
    """The config of the command line: the defaults, ``--config``'s settings,
    then the flags given; a bad file is an argparse error."""
    from rspnet.engine.settings import config_from_args, load_config

    values = {}
    if getattr(args, "config", None):
        try:
            values = load_config(config_type, args.config, command)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        return config_from_args(config_type, args, values)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


def add_run_options(parser: argparse.ArgumentParser, kind: str, config_type: type) -> None:
    """The flags of every field of ``config_type`` (``rspnet.engine.settings``)
    and the flags that search and train share, with one meaning in both
    (``rspnet.engine.RunOptions``)."""
    from rspnet.engine.settings import add_flags

    add_flags(parser, config_type)
    g = parser.add_argument_group("run")
    g.add_argument("--out", help=f"output directory (default: runs/{kind}-<timestamp>; with --resume PATH "
                                 "the checkpoint's directory)")
    g.add_argument("--resume", nargs="?", const="auto", metavar="auto|PATH",
                   help="continue a run: 'auto' (also plain --resume) from the newest valid checkpoint "
                        "in --out, falling back past damaged ones and starting afresh when there is "
                        "none; or PATH, one checkpoint file")
    g.add_argument("--checkpoint-every", type=nonnegative_int, default=0, metavar="N",
                   help="also write a checkpoint every N steps within an epoch (0: at epoch ends only)")
    g.add_argument("--keep-checkpoints", "--keep", dest="keep", type=nonnegative_int, default=3, metavar="K",
                   help="checkpoints to keep, newest first (0 = all; default %(default)s)")
    g.add_argument("--threads", type=nonnegative_int, default=None,
                   help="PyTorch CPU threads (0: PyTorch's default, one per core). Default: 1 on CPU, "
                        "where the small networks gain little from more and oversubscribed cores "
                        "make every step 10-30x slower; PyTorch's default on GPU")
    g.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms (bit-exact resumption on GPU; slower)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_options(parser: argparse.ArgumentParser, args: argparse.Namespace, kind: str):
    """The ``RunOptions`` of ``add_run_options``' flags, resolved (argparse
    errors for options that cannot work together)."""
    from rspnet.engine.config import RunOptions

    options = RunOptions(out=args.out, resume=args.resume, checkpoint_every=args.checkpoint_every,
                         keep=args.keep, threads=args.threads, deterministic=args.deterministic,
                         progress=not args.no_progress)
    try:
        return options.resolved(kind, [getattr(args, "data_root", None)])
    except ValueError as exc:
        parser.error(str(exc))


def checked(parser: argparse.ArgumentParser, check, *args) -> None:
    """``check(*args)``, its ``ValueError`` as an argparse error."""
    try:
        check(*args)
    except ValueError as exc:
        parser.error(str(exc))


def architecture_arg(parser: argparse.ArgumentParser, path: str, flag: str = "--arch"):
    """``Architecture.load(path)``, a problem with the file as an argparse error."""
    from rspnet.architecture import Architecture

    try:
        return Architecture.load(path)
    except FileNotFoundError:
        parser.error(f"{flag} {path}: no such file")
    except (OSError, ValueError) as exc:
        parser.error(f"{flag} {path}: {exc}")


def add_model_options(parser: argparse.ArgumentParser, checkpoint: str = "required",
                      device_help: str = "", progress: bool = True) -> None:
    """The flags of every command that runs a trained network (evaluate,
    export, predict), declared once with one meaning and one default:
    ``--arch``, ``--checkpoint`` (``checkpoint``: "required" or the help of
    an optional one), ``--device``, ``--threads``, ``--no-progress``."""
    import torch

    g = parser.add_argument_group("model")
    g.add_argument("--arch", required=True, help="architecture file the checkpoint was trained for")
    if checkpoint == "required":
        g.add_argument("--checkpoint", required=True, help="checkpoint of rspnet.train (e.g. best.pt)")
    else:
        g.add_argument("--checkpoint", help=checkpoint)
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help=(device_help + " " if device_help else "") + "(default: cuda when there is one)")
    g.add_argument("--threads", type=nonnegative_int, default=None,
                   help="PyTorch CPU threads (0: PyTorch's default, one per core; default: 1 on CPU, as "
                        "rspnet.train: comparable between machines and runs)")
    if progress:
        g.add_argument("--no-progress", action="store_true", help="no progress bars")


def trained_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks of ``add_model_options``' flags: ``--arch`` loads (into
    ``args.architecture``), ``--device`` exists, ``--checkpoint`` (when
    given) is a file -- each problem an argparse error."""
    from rspnet.engine.config import check_device, check_threads

    args.architecture = architecture_arg(parser, args.arch)
    checked(parser, check_device, args.device)
    checked(parser, check_threads, args.threads)
    if args.checkpoint is None:   # optional for export: random weights
        return
    if os.path.isdir(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint}: is a directory; give a checkpoint file in it "
                     f"(e.g. {os.path.join(args.checkpoint, 'best.pt')})")
    if not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint}: " + ("not a regular file (a FIFO, socket or device)"
                                                            if os.path.exists(args.checkpoint) else "no such file"))


def run_command(parser: argparse.ArgumentParser, run: Callable[[], object]) -> int:
    """Run a search or a training run for a CLI: its exit status
    (``rspnet.engine.session``'s ``EXIT_*``). A run that cannot start is a
    usage error (rank 0 prints it, every rank exits with 2); a run stopped by
    a signal or a divergence has logged why already; a failed read or write
    (e.g. a full disk) is one line, not a traceback."""
    from rspnet.engine.faults import Diverged, SetupStopped, StopRequested
    from rspnet.engine.session import EXIT_FAILED, EXIT_USAGE, RunError, describe_os_error, exit_status

    main_rank = int(os.environ.get("RANK", "0") or 0) == 0
    try:
        run()
    except RunError as exc:
        if main_rank:
            parser.error(str(exc))
        sys.exit(EXIT_USAGE)
    except (StopRequested, SetupStopped, Diverged, KeyboardInterrupt) as exc:
        if isinstance(exc, SetupStopped) and main_rank and not getattr(exc, "rspnet_reported", False):
            print(f"{parser.prog}: stopped during set-up, before the first step; nothing to resume",
                  file=sys.stderr)
        return exit_status(exc)
    except OSError as exc:
        if main_rank and not getattr(exc, "rspnet_reported", False):
            print(f"{parser.prog}: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    return 0
