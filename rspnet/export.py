"""``python -m rspnet.export``: ONNX export and a cost report of a trained RSPNet.

``--onnx PATH`` exports the network (opset 18 by default, at least 17) with the
TorchDynamo-based exporter, the fused ops traced through their plain-PyTorch
references so that the graph holds standard ONNX operators only. ``--dynamic``:
batch, height and width dynamic (all), the batch only (batch), or static shapes
at batch 1 (none); auto tries them in that order and says what it got. The file
is run with onnxruntime and compared with PyTorch in fp32: a maximum absolute
difference above ``--tolerance`` (1e-4) is an error, and the file is only put
in place once it passes.

``--report [PATH]`` prints and writes (JSON) the parameters, the forward FLOPs
(``torch.utils.flop_counter``, a multiply-add counting 2) and the batch-1
latency and FPS (``rspnet.ops.timing.measure_latency``) at ``--size HxW``
(default 512x1024) on ``--device``, of the network as trained and folded
(``rspnet.models.fold``), each in the memory layout its warm-up found faster,
and how far the folded network's output lies from the trained one's. Both
outputs are checked before any work: no input, and an existing default report
is only replaced when named. The comparison with torchvision's
LRASPP-MobileNetV3-Large is ``benchmarks/latency_vs_lraspp.py``.

Example::

    python -m rspnet.export --arch runs/search/architecture.json \\
        --checkpoint runs/train/best.pt --onnx rspnet.onnx --report
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from rspnet import data
from rspnet.cli import checked, parse_size, positive_int, trained_model_args
from rspnet.engine.checkpoint import CheckpointError
from rspnet.engine.session import set_threads
from rspnet.files import check_output_file, new_file_mode, write_json
from rspnet.models import RSPNet, count_flops, count_params, inference_form
from rspnet.ops import _backend
from rspnet.ops.timing import MEMORY_FORMATS, device_name, measure_latency, median_ms
from rspnet.train.checkpoint import load_trained_model
from rspnet import cli

DEFAULT_OPSET = 18
MIN_OPSET = 17
DYNAMIC_MODES = ("auto", "all", "batch", "none")
REPORT_RESOLUTION = (512, 1024)   # the report's default: Cityscapes at half size, as in the papers
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ExportError(RuntimeError):
    pass


@contextlib.contextmanager
def reference_ops():
    """Route rspnet's fused ops to their plain-PyTorch references while
    tracing: the exporter then sees standard aten ops (interpolate, avg_pool,
    softmax, cat, ...) that have ONNX translations, instead of custom ops."""
    with _backend.forced("reference"):
        yield


@contextlib.contextmanager
def _quiet_tracing():
    """The exporter logs every failed symbolic-shape attempt at length; a
    failed attempt is expected (and reported) when --dynamic auto falls back."""
    names = ("torch._guards", "torch.fx.experimental.symbolic_shapes", "torch._dynamo",
             "torch.export", "torch.onnx", "torch._export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _dynamic_shapes(mode: str) -> dict | None:
    if mode == "none":
        return None
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if mode == "all":
        # multiples of 32: the network halves the resolution five times
        dims[2] = 32 * torch.export.Dim("height_32", min=1, max=256)
        dims[3] = 32 * torch.export.Dim("width_32", min=1, max=256)
    return {"images": dims}


def export_onnx(model: torch.nn.Module, path: str, resolution: Sequence[int], opset: int = DEFAULT_OPSET,
                dynamic: str = "auto", log=print) -> str:
    """Export ``model`` (eval, fp32, CPU) to ONNX at ``path`` (written to a
    temporary file first); returns the dynamic mode obtained ('all',
    'batch' or 'none')."""
    model = model.eval()
    modes = {"auto": ("all", "batch", "none"), "all": ("all",), "batch": ("batch",),
             "none": ("none",)}[dynamic]
    failures = []
    for mode in modes:
        # a dynamic batch needs an example of batch 2 (torch.export specialises dimensions of size 1);
        # static shapes are batch 1, the shape check_onnx and onnx_latency feed
        example = (torch.zeros(1 if mode == "none" else 2, 3, *resolution),)
        try:
            with reference_ops(), _quiet_tracing(), contextlib.redirect_stdout(sys.stderr):
                program = torch.onnx.export(model, example, dynamo=True, opset_version=opset,
                                            dynamic_shapes=_dynamic_shapes(mode),
                                            input_names=["images"], output_names=["logits"],
                                            verbose=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
            reason = _first_line(exc)
            failures.append(f"{mode}: {reason}")
            if len(modes) > 1 and mode != modes[-1]:
                log(f"onnx: dynamic {'batch, height and width' if mode == 'all' else 'batch'} not "
                    f"exportable ({reason}); trying {'dynamic batch' if mode == 'all' else 'static shapes'}")
            continue
        program.save(path)
        return mode
    raise ExportError("ONNX export failed: " + " | ".join(failures))


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("<class") and ">:" in line:
            return line.split(">:", 1)[1].strip()[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def check_onnx(model: torch.nn.Module, path: str, shapes: Sequence[Sequence[int]],
               seed: int = 0) -> dict[str, Any]:
    """Run the ONNX file with onnxruntime (CPU) on random inputs of each
    shape and compare with PyTorch fp32 on CPU. Returns the max absolute
    difference over all of them, and per shape."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    per_shape = []
    model = model.eval()
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(f"onnxruntime output shape {got.shape} differs from PyTorch's "
                              f"{expected.shape} for input {tuple(shape)}")
        per_shape.append({"input": list(shape), "max_abs_diff": float(np.abs(got - expected).max())})
    return {"max_abs_diff": max(s["max_abs_diff"] for s in per_shape), "per_shape": per_shape,
            "onnxruntime": ort.__version__}


def onnx_latency(path: str, resolution: Sequence[int], warmup: int, iters: int) -> float:
    """Median onnxruntime CPU latency (ms) at batch 1."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = {session.get_inputs()[0].name: np.zeros((1, 3, *resolution), dtype=np.float32)}
    return median_ms(lambda: session.run(None, x), repeats=iters, warmup=warmup)


# -------------------------------------------------------------------- report
@torch.no_grad()
def folding_difference(model: torch.nn.Module, folded: torch.nn.Module, resolution: Sequence[int],
                       seed: int = 0) -> tuple[float, float]:
    """Max |folded(x) - model(x)| (both in eval mode, fp32) on one random
    image of ``resolution``, and max |model(x)| for its scale."""
    device = next(model.parameters()).device
    x = torch.randn(1, 3, *resolution, generator=torch.Generator().manual_seed(seed)).to(device)
    expected = model.eval()(x)
    return float((folded.eval()(x) - expected).abs().max()), float(expected.abs().max())


def network_costs(model: torch.nn.Module, resolution: Sequence[int], device: torch.device, dtype: torch.dtype,
                  compile: bool, warmup: int, iters: int, memory_format: str,
                  keep: dict[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    """A report row for ``model`` (fp32 on CPU): the network as it is and
    in its inference form (``inference_form``: BatchNorms and linear cell states folded, inference-only modules), each
    with its parameters, FLOPs at ``resolution`` and latency on ``device``
    (the models are measured last: the latency casts them). ``keep``, if
    given, receives the folded model under ``"folded"``, as timed (device,
    dtype and memory layout)."""
    model.eval()   # before anything runs it: a forward in training mode would update BN statistics
    folded = inference_form(model)
    diff, scale = folding_difference(model, folded, resolution)
    rows = {"unfolded": {"params": count_params(model), "flops": count_flops(model, resolution)},
            "folded": {"params": count_params(folded), "flops": count_flops(folded, resolution),
                       "bn_folded": folded.inference_report.batchnorms_folded,
                       "bn_left": folded.inference_report.batchnorms_left,
                       "cells_folded": folded.inference_report.cells_merged,
                       "max_abs_diff_vs_unfolded": diff, "max_abs_output": scale}}
    for key, net in (("unfolded", model), ("folded", folded)):
        rows[key]["latency"] = measure_latency(net, resolution, device, dtype, compile, warmup, iters,
                                               memory_format)
    if keep is not None:
        keep["folded"] = folded
    return rows


def format_report(report: dict[str, Any]) -> str:
    """The report as printed: the settings, the cost table (as trained and
    folded) and the ONNX file's entry."""
    lines = _aligned(_settings_rows(report)) + [""] + _cost_table(report)
    if report.get("onnx"):
        lines += [""] + _aligned(_onnx_rows(report["onnx"]))
    return "\n".join(lines)


def _aligned(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [f"{k:<{width}}  {v}" for k, v in rows]


def _settings_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    h, w = report["resolution"]
    rows = [("resolution", f"{h}x{w}, batch 1; FLOPs by torch.utils.flop_counter (multiply-add = 2)")]
    if report.get("latency"):
        rows += [("device", report["device_name"]),
                 ("settings", f"{report['dtype']}, {'torch.compile' if report['compile'] else 'eager'}, "
                              f"median of {report['iters']} runs after {report['warmup']} warm-up, "
                              f"layout {report.get('memory_format', 'auto')}")]
    folded = report.get("folded")
    if folded:
        cells = folded.get("cells_folded", 0)
        rows.append(("BN folding", f"rspnet {folded['bn_folded']} BatchNorm folded, {folded['bn_left']} left"
                     + (f", linear states of {cells} cell{'s' if cells != 1 else ''} merged" if cells else "")
                     + f" (max |folded - unfolded| {folded['max_abs_diff_vs_unfolded']:.1e} "
                       f"of max |output| {folded['max_abs_output']:.3g})"))
    return rows


def _cost_table(report: dict[str, Any]) -> list[str]:
    """The network as trained and folded: parameters, GFLOPs, latency (p20-p80), FPS, layout."""
    table = [("network", "parameters", "GFLOPs", "latency ms (p20-p80)", "FPS", "layout")]
    rows = [("rspnet", {"params": report["params"], "flops": report["flops"], "latency": report.get("latency")})]
    if report.get("folded"):
        rows.append(("rspnet, BN folded", report["folded"]))
    for name, r in rows:
        la = r.get("latency")
        timing = (f"{la['median_ms']:.2f} ({la['p20_ms']:.2f}-{la['p80_ms']:.2f})", f"{la['fps']:.2f}",
                  la.get("memory_format", "")) if la else ("-", "-", "")
        table.append((name, f"{r['params']:,}", f"{r['flops'] / 1e9:.3f}", *timing))
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    return ["  ".join(f"{c:<{wd}}" if i in (0, 5) else f"{c:>{wd}}" for i, (c, wd) in enumerate(zip(t, widths)))
            .rstrip() for t in table]


def _onnx_rows(onnx: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("ONNX file", f"{onnx['path']} ({onnx['bytes'] / 2**20:.2f} MiB, opset {onnx['opset']}, "
                          f"dynamic {onnx['dynamic']})"),
            ("ONNX parity", f"max |onnxruntime - torch| = {onnx['max_abs_diff']:.2e} "
                            f"(tolerance {onnx['tolerance']:.0e})")]
    if onnx.get("onnxruntime_latency_ms") is not None:
        rows.append(("ONNX latency", f"{onnx['onnxruntime_latency_ms']:.2f} ms median (onnxruntime CPU, "
                                     f"{onnx['resolution'][0]}x{onnx['resolution'][1]})"))
    return rows


# ----------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m rspnet.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_options(p, checkpoint="checkpoint of rspnet.train (without: random weights, enough for "
                                        "--report)", device_help="device for the latency measurement",
                          progress=False)
    p.add_argument("--onnx", metavar="PATH", help="write the ONNX model here")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--dynamic", choices=DYNAMIC_MODES, default="auto",
                   help="dynamic input dims: all (batch, H, W), batch, none; auto tries them in that "
                        "order (all takes longer to export: symbolic shapes)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest max-abs difference onnxruntime vs PyTorch (fp32) accepted")
    p.add_argument("--report", nargs="?", const="", metavar="PATH",
                   help="print params/FLOPs/latency and write them as JSON (default path: beside the "
                        "ONNX file, else export-report.json)")
    p.add_argument("--size", type=parse_size, metavar="HxW",
                   help="input size for export, FLOPs and latency, multiples of 32 (default: the "
                        "report's FLOPs and latency at 512x1024, Cityscapes' half size; the ONNX export "
                        "at the checkpoint's training size, else 512x1024)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="latency dtype")
    p.add_argument("--compile", action="store_true", help="time the torch.compile'd network")
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                   help="tensor layout timed: contiguous (NCHW), channels_last (NHWC), or auto: each "
                        "network in the layout its warm-up runs found faster (default)")
    p.add_argument("--warmup", type=positive_int, default=5)
    p.add_argument("--iters", type=positive_int, default=20)
    return p


def parse_args(argv: Sequence[str] | None = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    trained_model_args(parser, args)
    if not args.onnx and args.report is None:
        parser.error("nothing to do: give --onnx PATH and/or --report")
    if args.opset < MIN_OPSET:
        parser.error(f"--opset must be at least {MIN_OPSET}, got {args.opset}")
    if not args.tolerance > 0:
        parser.error(f"--tolerance must be positive, got {args.tolerance}")
    if args.onnx:
        import importlib.util
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            parser.error(f"--onnx needs {', '.join(missing)}: pip install {' '.join(missing)}")
    if args.dtype != "fp32" and torch.device(args.device).type == "cpu" and args.dtype == "fp16":
        parser.error("--dtype fp16 is for GPUs (CPU fp16 convolutions are not supported by PyTorch)")
    args.state = None
    if args.checkpoint:
        try:   # the checkpoint's classes: 19 for Cityscapes, classes.json's count for a folder data set
            args.model, args.state = load_trained_model(args.architecture, args.checkpoint,
                                                        arch_name=f"--arch {args.arch}")
        except CheckpointError as exc:
            parser.error(str(exc))
    args.resolution = list(args.size) if args.size else None
    args.report_resolution = list(args.resolution or REPORT_RESOLUTION)
    if args.resolution is None:
        size = (args.state or {}).get("config", {}).get("size")
        args.resolution = list(size) if size else list(REPORT_RESOLUTION)
    _check_outputs(parser, args)
    return parser, args


def _check_outputs(parser: argparse.ArgumentParser, args) -> None:
    """``--onnx`` and ``--report`` (its default path when given bare) writable
    as files, neither an input nor the other; an existing default report is
    not replaced unless named. The ONNX file's directory must exist."""
    inputs = [p for p in (args.arch, args.checkpoint) if p]
    if args.onnx:
        parent = os.path.dirname(os.path.abspath(args.onnx))
        if not os.path.lexists(parent):
            parser.error(f"--onnx {args.onnx}: directory {parent} does not exist")
        checked(parser, check_output_file, args.onnx, "--onnx", inputs)
    if args.report is None:
        return
    named = args.report != ""
    if not named:
        args.report = (os.path.splitext(args.onnx)[0] + "-report.json") if args.onnx else "export-report.json"
    checked(parser, check_output_file, args.report, "--report", inputs)
    if args.onnx and os.path.realpath(args.report) == os.path.realpath(args.onnx):
        parser.error(f"--report {args.report}: the same file as --onnx; give them different paths")
    if not named and os.path.lexists(args.report):
        parser.error(f"--report: the default report path {args.report} exists (an earlier export?); give "
                     f"--report {args.report} to replace it, or another path")


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse_args(argv)
    set_threads(args.threads, torch.device(args.device))
    torch.manual_seed(0)
    # without a checkpoint: random weights and the 19 classes of Cityscapes and the synthetic scenes
    model = args.model if args.state is not None else RSPNet(args.architecture, data.NUM_CLASSES)
    model.eval()
    report: dict[str, Any] = {
        "architecture": os.path.abspath(args.arch),
        "architecture_fingerprint": args.architecture.fingerprint(),
        "checkpoint": os.path.abspath(args.checkpoint) if args.checkpoint else None,
        "resolution": list(args.resolution), "torch": torch.__version__,
        "params": count_params(model),
    }
    if args.onnx:
        try:
            report["onnx"] = write_onnx(model, args)
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"onnx: wrote {args.onnx} (opset {args.opset}, dynamic {report['onnx']['dynamic']}); "
              f"max |onnxruntime - torch| = {report['onnx']['max_abs_diff']:.2e} <= {args.tolerance:.0e}")
    if args.report is not None:
        cost_report(model, args, report)
        print(format_report(report))
        os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)   # checked creatable
        write_json(args.report, report)
        print(f"report: {args.report}")
    return 0


def write_onnx(model: torch.nn.Module, args) -> dict[str, Any]:
    """Export ``model`` to ``args.onnx`` and check it with onnxruntime (the
    file is put in place only if it passes): the report's ``onnx`` entry.
    ``ExportError`` if the export or the check fails."""
    resolution = tuple(args.resolution)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.onnx)), prefix=".tmp-", suffix=".onnx")
    os.fchmod(fd, new_file_mode())   # as any new file under the user's umask (mkstemp gives 0600)
    os.close(fd)
    try:
        start = time.perf_counter()
        mode = export_onnx(model, tmp, resolution, args.opset, args.dynamic,
                           log=lambda m: print(m, file=sys.stderr))
        shapes = [(1, 3, *resolution)]
        if mode in ("all", "batch"):
            shapes.append((2, 3, *resolution))
        if mode == "all":
            shapes.append((1, 3, resolution[0] + 32, resolution[1] + 64))
        check = check_onnx(model, tmp, shapes)
        if not check["max_abs_diff"] <= args.tolerance:
            raise ExportError(
                f"onnxruntime and PyTorch disagree: max abs difference {check['max_abs_diff']:.3e} > "
                f"tolerance {args.tolerance:.0e} (per input: "
                + ", ".join(f"{tuple(s['input'])}: {s['max_abs_diff']:.2e}" for s in check["per_shape"])
                + f"); {args.onnx} was not written")
        os.replace(tmp, args.onnx)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"path": os.path.abspath(args.onnx), "bytes": os.path.getsize(args.onnx),
            "opset": args.opset, "dynamic": {"all": "batch, height, width", "batch": "batch", "none": "none"}[mode],
            "max_abs_diff": check["max_abs_diff"], "per_shape": check["per_shape"],
            "tolerance": args.tolerance, "onnxruntime": check["onnxruntime"],
            "export_seconds": round(time.perf_counter() - start, 1)}


def cost_report(model: torch.nn.Module, args, report: dict[str, Any]) -> None:
    """Add ``--report``'s measurements to ``report``: the settings, the
    parameters, FLOPs and latency of the network and of its folded form, and
    the ONNX file's onnxruntime latency."""
    device = torch.device(args.device)
    report.update({"device": str(device), "device_name": device_name(device),
                   "cpu_threads": torch.get_num_threads(), "dtype": args.dtype,
                   "compile": args.compile, "warmup": args.warmup, "iters": args.iters,
                   "memory_format": args.memory_format, "backend_override": _backend.override()})
    resolution = tuple(args.report_resolution)
    report["resolution"] = list(resolution)
    if args.onnx:
        report["onnx"]["resolution"] = list(args.resolution)
        report["onnx"]["onnxruntime_latency_ms"] = onnx_latency(args.onnx, tuple(args.resolution),
                                                                args.warmup, args.iters)
    rows = network_costs(model, resolution, device, DTYPES[args.dtype], args.compile, args.warmup, args.iters,
                         args.memory_format)
    report.update({"flops": rows["unfolded"]["flops"], "latency": rows["unfolded"]["latency"],
                   "folded": rows["folded"]})


if __name__ == "__main__":
    sys.exit(cli.guarded(main, "python -m rspnet.export")())
