"""Which backend runs an op: availability, the forced backend (RSPNET_BACKEND,
or ``forced()`` for a block), and the choice between Triton and CUDA on a GPU
(timed per call signature, or fixed: RSPNET_TUNE), with a fallback when a
Triton kernel fails.

Backends: ``reference`` (plain PyTorch), ``cpp`` (C++ CPU kernels of
``rspnet._C``), ``cuda`` (CUDA kernels of ``rspnet._C``), ``triton``. Nothing
here touches the GPU at import time.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch

from .. import _extension
from . import timing

BACKENDS = ("reference", "cpp", "triton", "cuda")
_CPP_DTYPES = (torch.float32, torch.float64)
_GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _read_env(name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    """An environment setting, read once at import. A value that is not one
    of ``choices`` must not break every command at import: it is warned about
    once, naming the variable and the choices, and the default is used."""
    value = os.environ.get(name, "").strip().lower() or default
    if value is not None and value not in choices:
        warnings.warn(f"{name}={value!r} is not one of {', '.join(choices)}; ignoring it "
                      f"(using {default or 'the default choice'})", RuntimeWarning, stacklevel=2)
        return default
    return value


def _read_override() -> str | None:
    return _read_env("RSPNET_BACKEND", BACKENDS, None)


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


# ------------------------------------------------------ the CUDA/Triton choice
# On a GPU where both CUDA and Triton kernels can run, the default is decided
# per call signature: the op, device, dtype, every input's shape and strides,
# and the op's other arguments (``key``) -- K, P, sizes and layouts all change
# the winner. Either the pair (forward + backward) of each backend is timed
# once and the faster kept ("measure"), or the fixed default is used ("fixed":
# CUDA where it runs, else Triton). "fixed" is in force, so that every process
# and every trace runs the same kernels, when RSPNET_TUNE=off, under
# torch.use_deterministic_algorithms(True) (``--deterministic`` of the CLIs),
# in a process group of more than one rank (ranks timing on their own could
# disagree), and always while torch.compile traces or a CUDA graph is being
# captured (timing there would synchronise or break the capture).
TUNE_MODES = ("measure", "off")


def _read_tune() -> str:
    return _read_env("RSPNET_TUNE", TUNE_MODES, "measure")


_tune: str = _read_tune()
_choices: dict[tuple, str] = {}
_triton_broken: dict[str, str] = {}  # op -> why (a Triton failure seen at run time)


def set_tuning(mode: str) -> None:
    """``"measure"`` (time CUDA against Triton once per call signature) or
    ``"off"`` (always the fixed default); the same as RSPNET_TUNE."""
    global _tune
    if mode not in TUNE_MODES:
        raise ValueError(f"tuning must be one of {', '.join(TUNE_MODES)}, not {mode!r}")
    _tune = mode


def measuring_refused(device: torch.device) -> str | None:
    """Why the CUDA/Triton choice may not be timed now (None: it may)."""
    if _tune == "off":
        return "RSPNET_TUNE=off"
    if torch.compiler.is_compiling():
        return "torch.compile is tracing"
    if torch.are_deterministic_algorithms_enabled():
        return "deterministic algorithms are on"
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        return "a process group of more than one rank"
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return "a CUDA graph is being captured"
    return None


def signature(tensors, *extra) -> tuple:
    """The part of a choice's key that the call decides: every tensor's shape
    and strides, then the op's other arguments."""
    return tuple((tuple(t.shape), tuple(t.stride())) for t in tensors) + extra


def select(op: str, x: torch.Tensor, requested: str | None, key=(), timed_runners=None) -> str:
    """The backend for ``op`` on tensors like ``x``.

    ``requested`` (a call's ``backend=`` argument) must be able to run, else
    it is an error. Otherwise the forced backend (``override()``) is used
    where it can run, then the default: C++ on CPU; on CUDA, where both CUDA
    and Triton kernels run, the choice recorded for (op, device, dtype,
    ``key``; a tuple, or a callable returning it, evaluated only here), else -- when measuring is allowed (``measuring_refused``) -- the
    faster forward+backward pair of ``timed_runners()`` -> {backend:
    zero-argument callable}, recorded; else the fixed default (CUDA).
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
    candidates = [b for b in ("cuda", "triton") if can_run(b, op, device, dtype)[0]
                  and not (b == "triton" and op in _triton_broken)]
    if not candidates:
        return "reference"
    return _decide(op, device, dtype, candidates, key, timed_runners)


def _decide(op: str, device: torch.device, dtype: torch.dtype, candidates: list, key, timed_runners) -> str:
    """Between GPU ``candidates`` (fixed default first): the recorded choice,
    else a measured one (recorded), else the fixed default."""
    if len(candidates) == 1 or torch.compiler.is_compiling():
        return candidates[0]
    full_key = (op, str(device), dtype, key() if callable(key) else key)
    choice = _choices.get(full_key)
    if choice is None:
        if timed_runners is None or measuring_refused(device) is not None:
            return candidates[0]
        runners = timed_runners()
        choice = _fastest(op, {b: runners[b] for b in candidates})
        _choices[full_key] = choice
    return choice


def automatic(requested: str | None) -> bool:
    """Was the backend picked by rspnet (not asked for by the call or forced)?
    Only then may a failing Triton kernel fall back to another backend."""
    return requested is None and _override is None


def triton_failed(op: str, exc: BaseException, device: torch.device, dtype: torch.dtype) -> str:
    """Record that ``op``'s Triton kernel failed (warned once; Triton is not
    chosen for ``op`` again in this process) and return the backend to use
    instead: CUDA where it runs, else the reference."""
    if op not in _triton_broken:
        _triton_broken[op] = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:300]
        warnings.warn(f"rspnet.ops.{op}: the Triton kernel failed ({_triton_broken[op]}); "
                      f"using the {'CUDA' if can_run('cuda', op, device, dtype)[0] else 'reference'} "
                      f"implementation instead for the rest of this process", RuntimeWarning, stacklevel=3)
    return "cuda" if can_run("cuda", op, device, dtype)[0] else "reference"


def call(op: str, name: str, automatic_choice: bool, impls: dict, x: torch.Tensor):
    """Run ``impls[name]()``; when the choice was automatic and Triton fails,
    fall back (``triton_failed``) instead of raising."""
    if name != "triton" or not automatic_choice or torch.compiler.is_compiling():
        return impls[name]()
    try:
        return impls["triton"]()
    except Exception as exc:  # noqa: BLE001 - any Triton failure (compile, launch) falls back
        return impls[triton_failed(op, exc, x.device, x.dtype)]()


def _time_cuda(run) -> float:
    """Milliseconds per call of ``run`` on the GPU (``timing.best_ms``): the
    best of 3 event-timed batches of 5 calls, after one warm-up call (Triton
    compiles there)."""
    return timing.best_ms(run, batch=5, repeats=3, cuda=True)


def _fastest(op: str, runners: dict, timer=None) -> str:
    """The backend whose runner is fastest; a Triton runner that raises is
    recorded as failed (``triton_failed``) and left out."""
    timer = timer or _time_cuda
    times: dict[str, float] = {}
    for name, run in runners.items():
        try:
            times[name] = timer(run)
        except Exception as exc:  # noqa: BLE001
            if name != "triton":
                raise
            triton_failed(op, exc, torch.device("cuda"), torch.float32)
    return min(times, key=times.get)


def choices() -> dict:
    """The CUDA/Triton choices made so far in this process: {(op, device,
    dtype, key): backend}."""
    return dict(_choices)


def status() -> dict:
    """For ``python -m rspnet.info``."""
    refused = measuring_refused(torch.device("cpu"))
    return {"extension": _EXT, "override": _override, "triton_ok": TRITON_OK, "triton_problem": TRITON_PROBLEM,
            "triton_interpreter": triton_interpreter(), "tuning": "measure" if refused is None else
            f"fixed ({refused})", "choices": {f"{k[0]} {k[1]} {k[2]} {k[3]}": v for k, v in _choices.items()},
            "triton_failed": dict(_triton_broken)}
