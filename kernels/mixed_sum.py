"""Triton kernels for ``mixed_sum`` (y = sum_k w_k x_k and its backward).

Triton has no array-of-pointers argument, so a launch takes up to
``MAX_INPUTS`` input pointers as separate arguments and ``K`` (constexpr)
says how many are live; the host chunks longer lists. Weights arrive already
in the accumulation dtype (fp32, or fp64 for fp64 data). The host code
(allocation, chunking, launches) is in rspnet/ops/mixed_sum.py.

Both kernels are pure streams (bytes moved = the ideal: the forward reads K
inputs and writes y, the backward reads g and the K inputs and writes the K
gradients), so they are written for memory-level parallelism: a program
issues every load of its tile (y when accumulating, the K inputs, g) before
any arithmetic or store, and each thread owns 4 consecutive elements, which
with 16-byte-aligned pointers and ``n % 16 == 0`` (the runtime's
``tt.divisibility`` hints) become 128-bit loads and stores. The backward's
per-tile dot products ``<g, x_k>`` are tree-reduced in registers/shared
memory into one partial per (input, tile); the host sums them in a fixed
order (deterministic, no atomics).
"""
import triton
import triton.language as tl

MAX_INPUTS = 8
BLOCK = 1024


@triton.jit
def _ld(x_ptr, offs, mask, LIVE: tl.constexpr):
    """The tile of one input (a dead slot loads nothing)."""
    if LIVE:
        return tl.load(x_ptr + offs, mask=mask, other=0.0)
    else:
        return 0.0


@triton.jit
def _w(w_ptr, k: tl.constexpr, LIVE: tl.constexpr):
    if LIVE:
        return tl.load(w_ptr + k)
    else:
        return 0.0


@triton.jit
def _fma(acc, w, x, LIVE: tl.constexpr):
    if LIVE:
        return acc + w * x.to(acc.dtype)
    else:
        return acc


@triton.jit
def mixed_sum_fwd_kernel(y_ptr, w_ptr, x0, x1, x2, x3, x4, x5, x6, x7, n,
                         K: tl.constexpr, ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    # Every load of the tile first: the K streams are in flight together.
    v0 = _ld(x0, offs, mask, True)
    v1 = _ld(x1, offs, mask, K > 1)
    v2 = _ld(x2, offs, mask, K > 2)
    v3 = _ld(x3, offs, mask, K > 3)
    v4 = _ld(x4, offs, mask, K > 4)
    v5 = _ld(x5, offs, mask, K > 5)
    v6 = _ld(x6, offs, mask, K > 6)
    v7 = _ld(x7, offs, mask, K > 7)
    acc = tl.zeros([BLOCK], dtype=w_ptr.dtype.element_ty)
    if ACCUMULATE:
        acc += tl.load(y_ptr + offs, mask=mask, other=0.0).to(acc.dtype)
    acc = _fma(acc, _w(w_ptr, 0, True), v0, True)
    acc = _fma(acc, _w(w_ptr, 1, K > 1), v1, K > 1)
    acc = _fma(acc, _w(w_ptr, 2, K > 2), v2, K > 2)
    acc = _fma(acc, _w(w_ptr, 3, K > 3), v3, K > 3)
    acc = _fma(acc, _w(w_ptr, 4, K > 4), v4, K > 4)
    acc = _fma(acc, _w(w_ptr, 5, K > 5), v5, K > 5)
    acc = _fma(acc, _w(w_ptr, 6, K > 6), v6, K > 6)
    acc = _fma(acc, _w(w_ptr, 7, K > 7), v7, K > 7)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_one(g, w_ptr, k: tl.constexpr, x, dx_ptr, partial_ptr, pid, num_tiles, offs, mask,
                  LIVE: tl.constexpr, INPUT_GRADS: tl.constexpr, WEIGHT_GRAD: tl.constexpr):
    if LIVE:
        if INPUT_GRADS:
            tl.store(dx_ptr + offs, (tl.load(w_ptr + k) * g).to(dx_ptr.dtype.element_ty), mask=mask)
        if WEIGHT_GRAD:
            tl.store(partial_ptr + k * num_tiles + pid, tl.sum(g * x.to(g.dtype), axis=0))


@triton.jit
def mixed_sum_bwd_kernel(g_ptr, w_ptr, partial_ptr,
                         x0, x1, x2, x3, x4, x5, x6, x7,
                         d0, d1, d2, d3, d4, d5, d6, d7,
                         n, num_tiles,
                         K: tl.constexpr, INPUT_GRADS: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
                         BLOCK: tl.constexpr):
    """dx_k = w_k g; partial[k, tile] = sum over the tile of g * x_k.

    g is read once per tile for all K inputs, and all K input tiles are
    loaded (when the weight gradient needs them) before the first store."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(w_ptr.dtype.element_ty)
    v0 = _ld(x0, offs, mask, WEIGHT_GRAD)
    v1 = _ld(x1, offs, mask, WEIGHT_GRAD and K > 1)
    v2 = _ld(x2, offs, mask, WEIGHT_GRAD and K > 2)
    v3 = _ld(x3, offs, mask, WEIGHT_GRAD and K > 3)
    v4 = _ld(x4, offs, mask, WEIGHT_GRAD and K > 4)
    v5 = _ld(x5, offs, mask, WEIGHT_GRAD and K > 5)
    v6 = _ld(x6, offs, mask, WEIGHT_GRAD and K > 6)
    v7 = _ld(x7, offs, mask, WEIGHT_GRAD and K > 7)
    _backward_one(g, w_ptr, 0, v0, d0, partial_ptr, pid, num_tiles, offs, mask, True, INPUT_GRADS, WEIGHT_GRAD)
    _backward_one(g, w_ptr, 1, v1, d1, partial_ptr, pid, num_tiles, offs, mask, K > 1, INPUT_GRADS, WEIGHT_GRAD)
    _backward_one(g, w_ptr, 2, v2, d2, partial_ptr, pid, num_tiles, offs, mask, K > 2, INPUT_GRADS, WEIGHT_GRAD)
    _backward_one(g, w_ptr, 3, v3, d3, partial_ptr, pid, num_tiles, offs, mask, K > 3, INPUT_GRADS, WEIGHT_GRAD)
    _backward_one(g, w_ptr, 4, v4, d4, partial_ptr, pid, num_tiles, offs, mask, K > 4, INPUT_GRADS, WEIGHT_GRAD)
    _backward_one(g, w_ptr, 5, v5, d5, partial_ptr, pid, num_tiles, offs, mask, K > 5, INPUT_GRADS, WEIGHT_GRAD)
    _backward_one(g, w_ptr, 6, v6, d6, partial_ptr, pid, num_tiles, offs, mask, K > 6, INPUT_GRADS, WEIGHT_GRAD)
    _backward_one(g, w_ptr, 7, v7, d7, partial_ptr, pid, num_tiles, offs, mask, K > 7, INPUT_GRADS, WEIGHT_GRAD)
