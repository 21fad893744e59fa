"""Triton kernels for ``path_fusion``: ``y = sum_p w_p * resample_p(x_p)`` and
its backward, where ``resample_p`` is the identity, bilinear upsampling
(``align_corners=False``) or average pooling by integer factors.

Both kernels are gathers: every output element is written by exactly one
program and no atomics are used, so results are deterministic.

* Forward: one program per (plane, tile of BLOCK_H x BLOCK_W output pixels);
  for every input it evaluates the resampled value at its pixels directly
  (4 taps for bilinear, a kh x kw window for pooling) and accumulates.
* Backward: one program per (plane, band of REGION output rows). For every
  input it owns the input rows the band covers (``[y0*h//H, y1*h//H)``, a
  partition of the input's rows) and computes ``t = resample^T(g)`` there:
  identity and pooling read ``g`` directly; bilinear first contracts each
  needed ``g`` row horizontally with a [columns, KX] gather of the row (KX
  covers every output column whose taps touch an input column), then adds it
  into the input rows whose vertical taps include that ``g`` row. It writes
  ``dx_p = w_p * t`` and one partial ``<x_p, t>`` per program and input; the
  host sums the partials in a fixed order. Rows of a band are re-read only
  across neighbouring programs (halo rows, from L2), so ``g`` travels from
  memory about once for all inputs.

Host code (rspnet/ops/path_fusion.py) passes up to ``MAX_PATHS`` inputs per
launch (pointer and size arguments ``x<k>``, ``h<k>``, ``w<k>``) and chunks
longer lists. ``MODE<k>`` says how input k is resampled: 0 identity,
1 bilinear, 2 average pool, as decided and numbered by
``rspnet.ops.reference.resample_mode`` (the kernels never decide it). Weights arrive as the softmax already
evaluated, in the accumulation dtype (fp32, or fp64 for fp64 data).
"""
import triton
import triton.language as tl

MAX_PATHS = 4

# Launch shapes (GPU and interpreter alike).
FWD_BLOCK_H = 4
FWD_BLOCK_W = 128
BWD_REGION = 16      # output rows per backward program
BWD_BLOCK_I = 8      # input rows per backward tile
BWD_BLOCK_W = 128    # input columns per identity/pool tile
BWD_GATHER = 1024    # elements of a [BLOCK_J, KX] bilinear gather tile
BWD_WARPS = 8


def footprint(n_in: int, n_out: int) -> int:
    """KX: a power of two >= the number of output indices whose bilinear taps
    touch one input index, plus the search margin of the backward kernel."""
    return triton.next_power_of_2(2 * n_out // n_in + 4)


def gather_columns(kx: int) -> int:
    return max(8, min(BWD_BLOCK_W, BWD_GATHER // kx))


@triton.jit
def _taps(d, n_in, n_out, ACC: tl.constexpr):
    """PyTorch's bilinear source taps of output index ``d`` (a tensor or a
    scalar): ``src = max(n_in/n_out * (d + 0.5) - 0.5, 0)``."""
    one = tl.full([], 1.0, ACC)
    scale = (n_in * one) / (n_out * one)
    src = tl.maximum(scale * (d * one + 0.5) - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), n_in - 1)
    i1 = tl.where(i0 < n_in - 1, i0 + 1, i0)
    l1 = src - i0.to(ACC)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _wide(v):
    """``v`` as int64 (loop variables are plain ints under the interpreter)."""
    return v + tl.zeros([], tl.int64)


@triton.jit
def _fwd_path(acc, w_ptr, k: tl.constexpr, x_ptr, h, w, plane, ys, xs, mask, H, W, MODE: tl.constexpr):
    ACC: tl.constexpr = w_ptr.dtype.element_ty
    base = x_ptr + plane * h * w
    if MODE == 0:
        v = tl.load(base + ys * w + xs, mask=mask, other=0.0).to(ACC)
    elif MODE == 1:
        r0, r1, a0, a1 = _taps(ys, h, H, ACC)
        c0, c1, b0, b1 = _taps(xs, w, W, ACC)
        v00 = tl.load(base + r0 * w + c0, mask=mask, other=0.0).to(ACC)
        v01 = tl.load(base + r0 * w + c1, mask=mask, other=0.0).to(ACC)
        v10 = tl.load(base + r1 * w + c0, mask=mask, other=0.0).to(ACC)
        v11 = tl.load(base + r1 * w + c1, mask=mask, other=0.0).to(ACC)
        v = a0 * (b0 * v00 + b1 * v01) + a1 * (b0 * v10 + b1 * v11)
    else:
        kh = h // H
        kw = w // W
        s = tl.zeros_like(acc)
        for a in range(kh):
            for b in range(kw):
                s += tl.load(base + (ys * kh + a) * w + xs * kw + b, mask=mask, other=0.0).to(ACC)
        v = s / (kh * kw)
    return acc + tl.load(w_ptr + k) * v


@triton.jit
def path_fusion_fwd_kernel(y_ptr, w_ptr, x0, x1, x2, x3, h0, w0, h1, w1, h2, w2, h3, w3, H, W, row_tiles,
                           P: tl.constexpr, MODE0: tl.constexpr, MODE1: tl.constexpr, MODE2: tl.constexpr,
                           MODE3: tl.constexpr, ACCUMULATE: tl.constexpr,
                           BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)
    plane = (pid // row_tiles).to(tl.int64)
    ys = (pid % row_tiles) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    xs = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    mask = (ys < H) & (xs < W)
    out = y_ptr + plane * H * W + ys * W + xs
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=w_ptr.dtype.element_ty)
    if ACCUMULATE:
        acc += tl.load(out, mask=mask, other=0.0).to(acc.dtype)
    acc = _fwd_path(acc, w_ptr, 0, x0, h0, w0, plane, ys, xs, mask, H, W, MODE0)
    if P > 1:
        acc = _fwd_path(acc, w_ptr, 1, x1, h1, w1, plane, ys, xs, mask, H, W, MODE1)
    if P > 2:
        acc = _fwd_path(acc, w_ptr, 2, x2, h2, w2, plane, ys, xs, mask, H, W, MODE2)
    if P > 3:
        acc = _fwd_path(acc, w_ptr, 3, x3, h3, w3, plane, ys, xs, mask, H, W, MODE3)
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_path(g_base, w_ptr, k: tl.constexpr, x_ptr, d_ptr, h, w, plane, y0, y1, H, W,
              MODE: tl.constexpr, KX: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_I: tl.constexpr,
              BLOCK_W: tl.constexpr, INPUT_GRADS: tl.constexpr, LOGIT_GRAD: tl.constexpr):
    """dx_k = w_k * t and <x_k, t> for t = resample_k^T(g) on the input rows of
    this band; returns the partial dot product."""
    ACC: tl.constexpr = w_ptr.dtype.element_ty
    wk = tl.load(w_ptr + k)
    xb = x_ptr + plane * h * w
    db = d_ptr + plane * h * w
    i_lo = ((_wide(y0) * h) // H).to(tl.int32)
    i_hi = ((_wide(y1) * h) // H).to(tl.int32)
    if MODE != 1:
        dot = tl.zeros([BLOCK_I, BLOCK_W], ACC)
        for i0 in range(i_lo, i_hi, BLOCK_I):
            ii = i0 + tl.arange(0, BLOCK_I)[:, None]
            for j0 in range(0, w, BLOCK_W):
                jj = j0 + tl.arange(0, BLOCK_W)[None, :]
                m = (ii < i_hi) & (jj < w)
                if MODE == 0:
                    t = tl.load(g_base + ii * W + jj, mask=m, other=0.0).to(ACC)
                else:
                    kh = h // H
                    kw = w // W
                    t = tl.load(g_base + (ii // kh) * W + jj // kw, mask=m, other=0.0).to(ACC) / (kh * kw)
                if INPUT_GRADS:
                    tl.store(db + ii * w + jj, (wk * t).to(d_ptr.dtype.element_ty), mask=m)
                if LOGIT_GRAD:
                    dot += tl.load(xb + ii * w + jj, mask=m, other=0.0).to(ACC) * t
        part = tl.sum(tl.sum(dot, axis=1), axis=0)
    else:
        dot = tl.zeros([BLOCK_I, BLOCK_J], ACC)
        for j0 in range(0, w, BLOCK_J):
            jj = j0 + tl.arange(0, BLOCK_J)
            # Output columns whose taps may include jj: from a safe lower
            # bound, KX of them; the exact weights come from the forward's
            # formula (zero outside the footprint).
            xlo = tl.maximum(((2 * _wide(jj) - 1) * W - w) // (2 * w) - 1, 0).to(tl.int32)
            xc = xlo[:, None] + tl.arange(0, KX)[None, :]
            c0, c1, b0, b1 = _taps(xc, w, W, ACC)
            cw = tl.where(c0 == jj[:, None], b0, 0.0) + tl.where(c1 == jj[:, None], b1, 0.0)
            cmask = (xc < W) & (jj[:, None] < w) & (cw != 0.0)
            for i0 in range(i_lo, i_hi, BLOCK_I):
                ii = i0 + tl.arange(0, BLOCK_I)
                i_last = tl.minimum(i0 + BLOCK_I, i_hi) - 1
                y_lo = tl.maximum(((2 * _wide(i0) - 1) * H - h) // (2 * h) - 1, 0).to(tl.int32)
                y_hi = tl.minimum(((2 * _wide(i_last) + 3) * H - h) // (2 * h) + 2, H).to(tl.int32)
                t = tl.zeros([BLOCK_I, BLOCK_J], ACC)
                for y in range(y_lo, y_hi):
                    r0, r1, a0, a1 = _taps(y, h, H, ACC)
                    a = tl.where(ii == r0, a0, 0.0) + tl.where(ii == r1, a1, 0.0)
                    gv = tl.load(g_base + y * W + xc, mask=cmask, other=0.0).to(ACC)
                    t += a[:, None] * tl.sum(gv * cw, axis=1)[None, :]
                m = (ii[:, None] < i_hi) & (jj[None, :] < w)
                offs = ii[:, None] * w + jj[None, :]
                if INPUT_GRADS:
                    tl.store(db + offs, (wk * t).to(d_ptr.dtype.element_ty), mask=m)
                if LOGIT_GRAD:
                    dot += tl.load(xb + offs, mask=m, other=0.0).to(ACC) * t
        part = tl.sum(tl.sum(dot, axis=1), axis=0)
    return part


@triton.jit
def path_fusion_bwd_kernel(g_ptr, w_ptr, partial_ptr, x0, x1, x2, x3, d0, d1, d2, d3,
                           h0, w0, h1, w1, h2, w2, h3, w3, H, W, regions, num_programs,
                           P: tl.constexpr, MODE0: tl.constexpr, MODE1: tl.constexpr, MODE2: tl.constexpr,
                           MODE3: tl.constexpr, KX0: tl.constexpr, KX1: tl.constexpr, KX2: tl.constexpr,
                           KX3: tl.constexpr, BJ0: tl.constexpr, BJ1: tl.constexpr, BJ2: tl.constexpr,
                           BJ3: tl.constexpr, INPUT_GRADS: tl.constexpr, LOGIT_GRAD: tl.constexpr,
                           REGION: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_W: tl.constexpr):
    """partial[k, pid] = <x_k, t_k> over this program's rows; dx_k = w_k t_k."""
    pid = tl.program_id(0)
    plane = (pid // regions).to(tl.int64)
    y0 = (pid % regions) * REGION
    y1 = tl.minimum(y0 + REGION, H)
    g_base = g_ptr + plane * H * W
    s = _bwd_path(g_base, w_ptr, 0, x0, d0, h0, w0, plane, y0, y1, H, W, MODE0, KX0, BJ0, BLOCK_I, BLOCK_W,
                  INPUT_GRADS, LOGIT_GRAD)
    if LOGIT_GRAD:
        tl.store(partial_ptr + pid, s)
    if P > 1:
        s = _bwd_path(g_base, w_ptr, 1, x1, d1, h1, w1, plane, y0, y1, H, W, MODE1, KX1, BJ1, BLOCK_I, BLOCK_W,
                      INPUT_GRADS, LOGIT_GRAD)
        if LOGIT_GRAD:
            tl.store(partial_ptr + num_programs + pid, s)
    if P > 2:
        s = _bwd_path(g_base, w_ptr, 2, x2, d2, h2, w2, plane, y0, y1, H, W, MODE2, KX2, BJ2, BLOCK_I, BLOCK_W,
                      INPUT_GRADS, LOGIT_GRAD)
        if LOGIT_GRAD:
            tl.store(partial_ptr + 2 * num_programs + pid, s)
    if P > 3:
        s = _bwd_path(g_base, w_ptr, 3, x3, d3, h3, w3, plane, y0, y1, H, W, MODE3, KX3, BJ3, BLOCK_I, BLOCK_W,
                      INPUT_GRADS, LOGIT_GRAD)
        if LOGIT_GRAD:
            tl.store(partial_ptr + 3 * num_programs + pid, s)
