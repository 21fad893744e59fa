"""rspnet's one clock: the milliseconds a call takes, and what is made of them.

``call_times`` times a zero-argument call (CUDA events on a GPU, synchronised,
else ``time.perf_counter``), singly or in batches; ``median_ms`` and
``best_ms`` summarise it for the latency cost table (``rspnet.search.cost``)
and the CUDA/Triton choice (``_backend``); ``measure_latency`` times a
network's batch-1 forward in the memory layout asked or the faster of
``FORMATS`` (``python -m rspnet.export --report``, benchmarks/).
``device_name`` names what was timed on: the latency cache's key, so its
format stays. No rspnet imports: any layer may time.
"""
from __future__ import annotations

import platform
import statistics
from time import perf_counter
from typing import Any, Callable, Sequence

import torch

__all__ = ["MEMORY_FORMATS", "FORMATS", "call_times", "median_ms", "best_ms", "measure_latency",
           "device_name"]

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def call_times(run: Callable[[], Any], n: int, cuda: bool = False, batch: int = 1) -> list[float]:
    """``n`` times, ms per call of ``run()``: each entry one batch of
    ``batch`` consecutive calls timed together, divided by ``batch``. On
    CUDA the time between events recorded around the batch (waited for)."""
    times = []
    for _ in range(n):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(batch):
                run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / batch)
        else:
            t0 = perf_counter()
            for _ in range(batch):
                run()
            times.append(1000 * (perf_counter() - t0) / batch)
    return times


def median_ms(run: Callable[[], Any], repeats: int = 5, warmup: int = 2, cuda: bool = False) -> float:
    """The median ms of ``repeats`` single calls, after ``warmup`` calls not timed."""
    for _ in range(warmup):
        run()
    return statistics.median(call_times(run, repeats, cuda))


def best_ms(run: Callable[[], Any], batch: int = 5, repeats: int = 3, cuda: bool = False) -> float:
    """ms per call: the best of ``repeats`` batches of ``batch`` calls, after
    one warm-up call (where a kernel compiles)."""
    run()
    return min(call_times(run, repeats, cuda, batch))


def _quantile(sorted_times: Sequence[float], f: float) -> float:
    return sorted_times[min(len(sorted_times) - 1, int(f * len(sorted_times)))]


def measure_latency(model: torch.nn.Module, resolution: Sequence[int], device: torch.device,
                    dtype: torch.dtype = torch.float32, compile: bool = False, warmup: int = 5,
                    iters: int = 20, memory_format: str = "auto") -> dict[str, Any]:
    """Batch-1 forward latency of ``model`` in ms (median, p20, p80) and FPS
    on ``device``; the model is cast to ``dtype`` (in place) and optionally
    compiled.

    ``memory_format``: ``contiguous`` (NCHW), ``channels_last`` (NHWC), or
    ``auto``: ``warmup`` runs (at least 2) in each layout, and the layout whose
    runs (the first left out) were faster is timed. With ``compile``, ``auto``
    does not compile twice: channels-last on GPU, contiguous on CPU. The
    layout timed is in the result, the warm-up medians under
    ``warmup_median_ms``."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format: one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    model = model.to(device=device, dtype=dtype).eval()
    cuda = device.type == "cuda"
    x = torch.zeros(1, 3, *resolution, device=device, dtype=dtype)
    trials: dict[str, float] = {}
    chosen = memory_format
    with torch.inference_mode():
        if memory_format == "auto" and compile:
            chosen = "channels_last" if cuda else "contiguous"
        elif memory_format == "auto":
            for name, fmt in FORMATS.items():
                model.to(memory_format=fmt)
                xf = x.contiguous(memory_format=fmt)
                trials[name] = statistics.median(call_times(lambda: model(xf), max(warmup, 2), cuda)[1:])
            chosen = min(trials, key=trials.get)
        model = model.to(memory_format=FORMATS[chosen])
        x = x.contiguous(memory_format=FORMATS[chosen])
        net = torch.compile(model) if compile else model
        for _ in range(1 if trials else warmup):   # after a layout trial: one run, to warm the layout timed
            net(x)
        times = sorted(call_times(lambda: net(x), iters, cuda))
    median = statistics.median(times)
    result = {"median_ms": median, "p20_ms": _quantile(times, 0.2), "p80_ms": _quantile(times, 0.8),
              "fps": 1000.0 / median, "memory_format": chosen}
    if trials:
        result["warmup_median_ms"] = trials
    return result


def device_name(device: torch.device) -> str:
    """``cuda:<GPU name>``, or ``cpu:<CPU model>:threads=<torch's thread
    count>``: what a latency is valid for (the latency table's key)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu:{model}:threads={torch.get_num_threads()}"
