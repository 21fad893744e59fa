"""Peak memory of a piece of work, on CPU (profiler allocation events) or CUDA.

CPU: ``torch.profiler`` records every allocation and free of the CPU
allocator; their running sum gives the exact peak of live tensor bytes during
the work, independent of what malloc keeps cached. CUDA: the caching
allocator's own peak counter.
"""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile


def peak_bytes(fn, device: str = "cpu") -> int:
    """Peak of live tensor bytes allocated by ``fn()`` above what was live before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak
