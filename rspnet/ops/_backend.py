"""Which backend runs an op: availability, the forced backend (RSPNET_BACKEND,
or ``forced()`` for a block), and the measured choice between Triton and CUDA
on a GPU.

Backends: ``reference`` (plain PyTorch), ``cpp`` (C++ CPU kernels of
``rspnet._C``), ``cuda`` (CUDA kernels of ``rspnet._C``), ``triton``. Nothing
here touches the GPU at import time.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from .. import _extension

BACKENDS = ("reference", "cpp", "triton", "cuda")
_CPP_DTYPES = (torch.float32, torch.float64)
_GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _read_override() -> str | None:
    value = os.environ.get("RSPNET_BACKEND", "").strip().lower() or None
    if value is not None and value not in BACKENDS:
        raise ValueError(f"RSPNET_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    return value


# The backend forced on every op where it can run, or None: RSPNET_BACKEND
# (read once, at import), changed only by forced(). A plain module global is
# as cheap for torch.compile to guard as a constant: a change recompiles.
_override: str | None = _read_override()


def override() -> str | None:
    """The backend forced on every op where it can run (RSPNET_BACKEND, or the
    innermost ``forced()`` block), or None for the default choice."""
    return _override


@contextlib.contextmanager
def forced(name: str | None) -> Iterator[None]:
    """Force backend ``name`` (None: the default choice) on every op where it
    can run, for the ``with`` block; the previous setting is restored after.
    Not thread-local: it applies to every thread while the block runs."""
    global _override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    saved, _override = _override, name
    try:
        yield
    finally:
        _override = saved


_EXT = _extension.load()
_measured: dict[tuple, str] = {}
_TRITON_OPS: set[str] = set()


def register_triton(op: str) -> None:
    """Called by an op module once its ``triton_op`` is defined."""
    _TRITON_OPS.add(op)


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _import_triton():
    try:
        import triton  # noqa: F401
        return True, None
    except Exception as exc:  # noqa: BLE001 - a broken triton must not break rspnet
        return False, f"triton not importable ({exc.__class__.__name__}: {exc})"


TRITON_OK, TRITON_PROBLEM = _import_triton()


def _compiled_kernels() -> frozenset:
    """(op, dispatch key) pairs that rspnet._C registered, read once: a plain
    set lookup is something torch.compile can trace through."""
    if not _EXT["loaded"]:
        return frozenset()
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("rspnet::")]
    return frozenset((n.split("::", 1)[1], key) for n in names for key in ("CPU", "CUDA")
                     if torch._C._dispatch_has_kernel_for_dispatch_key(n, key))


_KERNELS = _compiled_kernels()


def has_kernel(op: str, key: str) -> bool:
    """Did ``rspnet._C`` register ``op`` for dispatch key ``key`` (CPU/CUDA)?"""
    return (op, key) in _KERNELS


def can_run(backend: str, op: str, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether ``backend`` can run ``op`` on tensors of this device/dtype, and why not."""
    if backend == "reference":
        return True, ""
    if backend == "cpp":
        if device.type != "cpu":
            return False, "the C++ kernels run on CPU tensors only"
        if dtype not in _CPP_DTYPES:
            return False, f"the C++ kernels support float32/float64, not {dtype}"
        if not has_kernel(op, "CPU"):
            return False, f"rspnet._C is {_EXT['problem'] or 'missing this op'}"
        return True, ""
    if backend == "cuda":
        if device.type != "cuda":
            return False, "the CUDA kernels run on CUDA tensors only"
        if dtype not in _GPU_DTYPES:
            return False, f"the CUDA kernels do not support {dtype}"
        if not has_kernel(op, "CUDA"):
            return False, "rspnet._C was built without CUDA kernels" if _EXT["loaded"] else \
                f"rspnet._C is {_EXT['problem']}"
        return True, ""
    if backend == "triton":
        if not TRITON_OK:
            return False, TRITON_PROBLEM
        if op not in _TRITON_OPS:
            return False, f"{op} has no Triton kernel"
        if device.type == "cuda":
            return (dtype in _GPU_DTYPES), f"the Triton kernels do not support {dtype}"
        if device.type == "cpu" and triton_interpreter():
            if dtype not in _CPP_DTYPES:
                return False, "the Triton interpreter supports float32/float64 only"
            return True, ""
        return False, "Triton needs a CUDA device (or TRITON_INTERPRET=1 for CPU tensors)"
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def select(op: str, x: torch.Tensor, requested: str | None, timed_runners=None) -> str:
    """The backend for ``op`` on tensors like ``x``.

    ``requested`` (a call's ``backend=`` argument) must be able to run, else
    it is an error. Otherwise the forced backend (``override()``) is used
    where it can run, then the default: C++ on CPU; on CUDA the faster of the
    CUDA and Triton kernels, measured once per (op, device, dtype, size class)
    through ``timed_runners()`` -> {backend: zero-argument callable}. Nothing
    is measured while torch.compile traces: the cached choice, else the first
    candidate (CUDA where it can run), is used.
    """
    device, dtype = x.device, x.dtype
    if requested is not None:
        ok, why = can_run(requested, op, device, dtype)
        if not ok:
            raise RuntimeError(f"rspnet.ops.{op}: backend {requested!r} cannot run here: {why}")
        return requested
    if _override is not None and can_run(_override, op, device, dtype)[0]:
        return _override
    if device.type == "cpu":
        return "cpp" if can_run("cpp", op, device, dtype)[0] else "reference"
    candidates = [b for b in ("cuda", "triton") if can_run(b, op, device, dtype)[0]]
    if not candidates:
        return "reference"
    if len(candidates) == 1 or timed_runners is None:
        return candidates[0]
    key = (op, device.index, dtype, x.numel().bit_length())
    if key not in _measured:
        if torch.compiler.is_compiling():
            return candidates[0]
        _measured[key] = _fastest({b: r for b, r in timed_runners().items() if b in candidates})
    return _measured[key]


def _fastest(runners: dict) -> str:
    times = {}
    for name, run in runners.items():
        run()  # warm-up (Triton compiles here)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(3):
            run()
        end.record()
        end.synchronize()
        times[name] = start.elapsed_time(end)
    return min(times, key=times.get)


def status() -> dict:
    """For ``python -m rspnet.info``."""
    return {"extension": _EXT, "override": _override, "triton_ok": TRITON_OK, "triton_problem": TRITON_PROBLEM,
            "triton_interpreter": triton_interpreter(), "measured_choices": dict(_measured)}
