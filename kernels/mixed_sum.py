"""Triton kernels for ``mixed_sum`` (y = sum_k w_k x_k and its backward).

Triton has no array-of-pointers argument, so a launch takes up to
``MAX_INPUTS`` input pointers as separate arguments and ``K`` (constexpr)
says how many are live; the host chunks longer lists. Weights arrive already
in the accumulation dtype (fp32, or fp64 for fp64 data). The host code
(allocation, chunking, launches) is in rspnet/ops/mixed_sum.py.
"""
import triton
import triton.language as tl

MAX_INPUTS = 8
BLOCK = 1024


@triton.jit
def _weighted(acc, w_ptr, k: tl.constexpr, x_ptr, offs, mask):
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    return acc + tl.load(w_ptr + k) * x.to(acc.dtype)


@triton.jit
def mixed_sum_fwd_kernel(y_ptr, w_ptr, x0, x1, x2, x3, x4, x5, x6, x7, n,
                         K: tl.constexpr, ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = tl.zeros([BLOCK], dtype=w_ptr.dtype.element_ty)
    if ACCUMULATE:
        acc += tl.load(y_ptr + offs, mask=mask, other=0.0).to(acc.dtype)
    acc = _weighted(acc, w_ptr, 0, x0, offs, mask)
    if K > 1:
        acc = _weighted(acc, w_ptr, 1, x1, offs, mask)
    if K > 2:
        acc = _weighted(acc, w_ptr, 2, x2, offs, mask)
    if K > 3:
        acc = _weighted(acc, w_ptr, 3, x3, offs, mask)
    if K > 4:
        acc = _weighted(acc, w_ptr, 4, x4, offs, mask)
    if K > 5:
        acc = _weighted(acc, w_ptr, 5, x5, offs, mask)
    if K > 6:
        acc = _weighted(acc, w_ptr, 6, x6, offs, mask)
    if K > 7:
        acc = _weighted(acc, w_ptr, 7, x7, offs, mask)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_one(g, w_ptr, k: tl.constexpr, x_ptr, dx_ptr, partial_ptr, pid, num_tiles, offs, mask,
                  INPUT_GRADS: tl.constexpr, WEIGHT_GRAD: tl.constexpr):
    if INPUT_GRADS:
        tl.store(dx_ptr + offs, (tl.load(w_ptr + k) * g).to(dx_ptr.dtype.element_ty), mask=mask)
    if WEIGHT_GRAD:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(g.dtype)
        tl.store(partial_ptr + k * num_tiles + pid, tl.sum(g * x, axis=0))


@triton.jit
def mixed_sum_bwd_kernel(g_ptr, w_ptr, partial_ptr,
                         x0, x1, x2, x3, x4, x5, x6, x7,
                         d0, d1, d2, d3, d4, d5, d6, d7,
                         n, num_tiles,
                         K: tl.constexpr, INPUT_GRADS: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
                         BLOCK: tl.constexpr):
    """dx_k = w_k g; partial[k, tile] = sum over the tile of g * x_k.

    g is read once per tile for all K inputs; the [K, tiles] partials are
    summed by the host in a fixed order (deterministic, no atomics)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(w_ptr.dtype.element_ty)
    _backward_one(g, w_ptr, 0, x0, d0, partial_ptr, pid, num_tiles, offs, mask, INPUT_GRADS, WEIGHT_GRAD)
    if K > 1:
        _backward_one(g, w_ptr, 1, x1, d1, partial_ptr, pid, num_tiles, offs, mask, INPUT_GRADS, WEIGHT_GRAD)
    if K > 2:
        _backward_one(g, w_ptr, 2, x2, d2, partial_ptr, pid, num_tiles, offs, mask, INPUT_GRADS, WEIGHT_GRAD)
    if K > 3:
        _backward_one(g, w_ptr, 3, x3, d3, partial_ptr, pid, num_tiles, offs, mask, INPUT_GRADS, WEIGHT_GRAD)
    if K > 4:
        _backward_one(g, w_ptr, 4, x4, d4, partial_ptr, pid, num_tiles, offs, mask, INPUT_GRADS, WEIGHT_GRAD)
    if K > 5:
        _backward_one(g, w_ptr, 5, x5, d5, partial_ptr, pid, num_tiles, offs, mask, INPUT_GRADS, WEIGHT_GRAD)
    if K > 6:
        _backward_one(g, w_ptr, 6, x6, d6, partial_ptr, pid, num_tiles, offs, mask, INPUT_GRADS, WEIGHT_GRAD)
    if K > 7:
        _backward_one(g, w_ptr, 7, x7, d7, partial_ptr, pid, num_tiles, offs, mask, INPUT_GRADS, WEIGHT_GRAD)
