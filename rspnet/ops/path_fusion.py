"""``path_fusion(logits, inputs, size)``: ``sum_p softmax(logits / T)_p * resample_p(inputs[p])``.

The Path-Attention Module's fusion (rspnet/nn/pam.py, at every node of the
macro supernet): every incoming map is brought to ``size`` (identity, bilinear
upsampling with ``align_corners=False``, or average pooling by an integer
factor, as ``reference.resample_mode`` decides) and the maps are summed with
softmax weights. The fused kernels never materialise a
resampled map, forward or backward: the forward evaluates each resampled
value where it is summed, and the backward gathers ``resample_p^T(g)`` at each
input's own resolution, giving ``dx_p = w_p * resample_p^T(g)`` and
``dL/dw_p = <x_p, resample_p^T(g)>`` in the same pass, then
``dlogits = w * (dw - <w, dw>) / T``. See docs/kernels_fusion.md.

Registration follows the pattern of ``mixed_sum``: the C++ ops
``rspnet::path_fusion`` / ``path_fusion_backward`` (CPU and CUDA kernels, fake
kernels and autograd here), the ``triton_op`` pair ``path_fusion_triton`` /
``path_fusion_backward_triton``, and ``path_fusion()`` validating and
dispatching through ``_backend.select``.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from . import _backend, _checks
from .reference import IDENTITY, path_fusion_ref, resample_mode

_OP = "path_fusion"


def path_fusion(logits: torch.Tensor, inputs: Sequence[torch.Tensor], size: Sequence[int],
                temperature: float = 1.0, *, backend: str | None = None) -> torch.Tensor:
    """Softmax-weighted sum of P feature maps resampled to ``size``.

    Args:
        logits: 1-D tensor of P architecture logits (any float dtype).
        inputs: P tensors ``[N, C, H_p, W_p]`` with one N, C, dtype and device.
            Each is resampled to ``size``: identity when equal, bilinear
            (as ``F.interpolate(mode="bilinear", align_corners=False)``) when
            smaller or equal in both dimensions, average pooling (as
            ``F.avg_pool2d`` with kernel = stride = the factor) when larger by
            an integer factor in both.
        size: ``(H, W)``, two positive ints.
        temperature: softmax temperature T > 0 (weights are ``softmax(logits / T)``).
        backend: force ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"``;
            by default the fastest available (see ``rspnet.ops._backend``).

    Returns:
        ``[N, C, H, W]`` (contiguous) in the inputs' dtype.
    """
    xs = _checks.tensor_list(_OP, inputs)
    out_size = _check_size(size)
    temperature = _check_temperature(temperature)
    _geometry(xs, out_size)
    w = _checks.weight_vector(_OP, "logits", logits, len(xs), xs[0])
    hw = list(out_size)
    ops = torch.ops.rspnet
    name = _backend.select(_OP, xs[0], backend, lambda: _backend.signature(xs, tuple(hw)), lambda: {
        "cuda": lambda: ops.path_fusion_backward(ops.path_fusion(w, xs, hw, temperature), w, xs, temperature,
                                                 True, True),
        "triton": lambda: ops.path_fusion_backward_triton(ops.path_fusion_triton(w, xs, hw, temperature), w, xs,
                                                          temperature, True, True)})
    return _backend.call(_OP, name, _backend.automatic(backend), {
        "reference": lambda: path_fusion_ref(w, xs, out_size, temperature),
        "triton": lambda: ops.path_fusion_triton(w, xs, hw, temperature),
        "cuda": lambda: ops.path_fusion(w, xs, hw, temperature),
        "cpp": lambda: ops.path_fusion(w, xs, hw, temperature)}, xs[0])


# --------------------------------------------------------------- validation
def _check_size(size) -> tuple[int, int]:
    ok = (isinstance(size, (list, tuple)) and len(size) == 2  # torch.Size is a tuple
          and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size))
    if not ok:
        raise ValueError(f"{_OP}: size must be two positive ints (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"{_OP}: temperature must be a float, got {type(temperature).__name__}")
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"{_OP}: temperature must be positive and finite, got {temperature!r}")
    return t


def _geometry(xs: list[torch.Tensor], size: tuple[int, int]) -> list[tuple[int, int, int]]:
    x0 = xs[0]
    if x0.dim() != 4:
        raise ValueError(f"{_OP}: inputs must be 4-D [N, C, H, W], got shape {tuple(x0.shape)}")
    for p, x in enumerate(xs):
        if x.dim() != 4 or x.shape[:2] != x0.shape[:2]:
            raise ValueError(f"{_OP}: inputs[{p}] has shape {tuple(x.shape)} but inputs[0] has "
                             f"{tuple(x0.shape)} (N and C must match)")
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"{_OP}: inputs[{p}] has an empty spatial size {tuple(x.shape[2:])}")
    return [resample_mode(x.shape[2:], size, p) for p, x in enumerate(xs)]


# ----------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    logits, xs, _size, temperature = inputs
    ctx.save_for_backward(logits, *xs)
    ctx.temperature = temperature
    ctx.logit_grad = ctx.needs_input_grad[0]
    ctx.input_grads = any(ctx.needs_input_grad[1]) if isinstance(ctx.needs_input_grad[1], (list, tuple)) \
        else bool(ctx.needs_input_grad[1])


def _make_backward(backward_op):
    def backward(ctx, grad):
        logits, *xs = ctx.saved_tensors
        dxs, dlogits = backward_op(grad, logits, xs, ctx.temperature, ctx.input_grads, ctx.logit_grad)
        return (dlogits if ctx.logit_grad else None), (list(dxs) if ctx.input_grads else [None] * len(xs)), \
            None, None
    return backward


def _fake_forward(logits, inputs, size, temperature):
    x0 = inputs[0]
    torch._check(len(size) == 2)
    return x0.new_empty((x0.shape[0], x0.shape[1], size[0], size[1]))


def _fake_backward(grad, logits, inputs, temperature, input_grads, logit_grad):
    dxs = [x.new_empty(x.shape) for x in inputs] if input_grads else []
    return dxs, logits.new_empty(logits.shape)


if _backend.has_kernel(_OP, "CPU"):
    torch.library.register_fake("rspnet::path_fusion")(_fake_forward)
    torch.library.register_fake("rspnet::path_fusion_backward")(_fake_backward)
    torch.library.register_autograd("rspnet::path_fusion", _make_backward(torch.ops.rspnet.path_fusion_backward),
                                    setup_context=_setup_context)


# ------------------------------------------------------------------- Triton
def _softmax_weights(logits: torch.Tensor, temperature: float, like: torch.Tensor) -> torch.Tensor:
    acc = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.softmax(logits.detach().to(device=like.device, dtype=acc) / temperature, 0).contiguous()


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


if _backend.TRITON_OK:
    from torch.library import triton_op, wrap_triton

    from ..kernels import path_fusion as _kern
    from .reference import BILINEAR, POOL

    def _check_planes(xs, H, W):
        # The Triton kernels index within a plane in 32-bit arithmetic.
        if max([H * W] + [x.shape[2] * x.shape[3] for x in xs]) >= 2**31:
            raise RuntimeError(f"{_OP}: planes of 2^31 or more elements are not supported by the Triton kernels")

    def _chunk_args(xs, geometry, start, H, W):
        """Pointer, size and mode arguments for inputs[start:start+MAX_PATHS],
        padded with live tensors that the constexpr P keeps unread."""
        chunk = list(range(start, min(start + _kern.MAX_PATHS, len(xs))))
        pad = _kern.MAX_PATHS - len(chunk)
        ptrs = [xs[p] for p in chunk] + [xs[chunk[0]]] * pad
        sizes = []
        for p in chunk:
            sizes += [xs[p].shape[2], xs[p].shape[3]]
        sizes += [1, 1] * pad
        modes = {f"MODE{i}": geometry[chunk[i]][0] if i < len(chunk) else IDENTITY
                 for i in range(_kern.MAX_PATHS)}
        for i in range(_kern.MAX_PATHS):
            modes[f"SCALE{i}"] = _scale(xs[chunk[i]], geometry[chunk[i]], H, W) if i < len(chunk) else 0
        return chunk, ptrs, sizes, modes

    def _scale(x, geometry, H: int, W: int) -> int:
        """The constexpr SCALE of a path: S in the kernels' SCALES when the
        input is bilinearly upsampled by exactly S, or average-pooled by S x S,
        in both dimensions; 0 (the generic code) otherwise."""
        mode, kh, kw = geometry
        h, w = x.shape[2], x.shape[3]
        if mode == POOL:
            return kh if kh == kw and kh in _kern.SCALES else 0
        if mode == BILINEAR:
            s = H // h
            return s if s in _kern.SCALES and H == s * h and W == s * w else 0
        return 0

    @triton_op("rspnet::path_fusion_triton", mutates_args=())
    def path_fusion_triton(logits: torch.Tensor, inputs: list[torch.Tensor], size: list[int],
                           temperature: float) -> torch.Tensor:
        xs = [x.contiguous() for x in inputs]
        n, c = xs[0].shape[:2]
        H, W = int(size[0]), int(size[1])
        geometry = [resample_mode(x.shape[2:], (H, W), p) for p, x in enumerate(xs)]
        _check_planes(xs, H, W)
        y = torch.empty((n, c, H, W), device=xs[0].device, dtype=xs[0].dtype)
        if y.numel() == 0:
            return y
        w = _softmax_weights(logits, temperature, y)
        row_tiles = _cdiv(H, _kern.FWD_BLOCK_H)
        grid = (n * c * row_tiles, _cdiv(W, _kern.FWD_BLOCK_W))
        for start in range(0, len(xs), _kern.MAX_PATHS):
            chunk, ptrs, sizes, modes = _chunk_args(xs, geometry, start, H, W)
            wrap_triton(_kern.path_fusion_fwd_kernel)[grid](
                y, w[start:], *ptrs, *sizes, H, W, row_tiles, P=len(chunk), **modes, ACCUMULATE=start > 0,
                BLOCK_H=_kern.FWD_BLOCK_H, BLOCK_W=_kern.FWD_BLOCK_W)
        return y

    @triton_op("rspnet::path_fusion_backward_triton", mutates_args=())
    def path_fusion_backward_triton(grad: torch.Tensor, logits: torch.Tensor, inputs: list[torch.Tensor],
                                    temperature: float, input_grads: bool,
                                    logit_grad: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        xs = [x.contiguous() for x in inputs]
        g = grad.to(xs[0].dtype).contiguous()
        n, c, H, W = g.shape
        geometry = [resample_mode(x.shape[2:], (H, W), p) for p, x in enumerate(xs)]
        _check_planes(xs, H, W)
        dxs = [torch.empty_like(x) for x in xs] if input_grads else []
        w = _softmax_weights(logits, temperature, g)
        regions = _cdiv(H, _kern.BWD_REGION)
        programs = n * c * regions
        # Every [p, program] partial is written when logit_grad (no zero-fill);
        # without it the kernel writes none and w stands in as the pointer.
        partial = torch.empty(len(xs), programs, device=g.device, dtype=w.dtype) if logit_grad else w
        if programs > 0 and (input_grads or logit_grad):
            for start in range(0, len(xs), _kern.MAX_PATHS):
                chunk, ptrs, sizes, modes = _chunk_args(xs, geometry, start, H, W)
                outs = [dxs[p] for p in chunk] if input_grads else [xs[p] for p in chunk]
                outs += [outs[0]] * (_kern.MAX_PATHS - len(chunk))
                tiles = {}
                for i in range(_kern.MAX_PATHS):
                    kx = _kern.footprint(xs[chunk[i]].shape[3], W) if i < len(chunk) else 8
                    tiles[f"KX{i}"] = kx
                    tiles[f"BJ{i}"] = _kern.gather_columns(kx)
                wrap_triton(_kern.path_fusion_bwd_kernel)[(programs,)](
                    g, w[start:], partial[start:], *ptrs, *outs, *sizes, H, W, regions, programs,
                    P=len(chunk), **modes, **tiles, INPUT_GRADS=input_grads, LOGIT_GRAD=logit_grad,
                    REGION=_kern.BWD_REGION, BLOCK_I=_kern.BWD_BLOCK_I, BLOCK_W=_kern.BWD_BLOCK_W,
                    num_warps=_kern.backward_warps(modes))
        if logit_grad:
            dw = partial.sum(1)
            dlogits = w * (dw - (w * dw).sum()) / temperature
        else:
            dlogits = torch.zeros_like(w)
        return dxs, dlogits.to(logits.dtype)

    path_fusion_triton.register_autograd(_make_backward(torch.ops.rspnet.path_fusion_backward_triton),
                                         setup_context=_setup_context)
    _backend.register_triton(_OP)
