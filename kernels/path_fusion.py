"""Triton kernels for ``path_fusion``: ``y = sum_p w_p * resample_p(x_p)`` and
its backward, where ``resample_p`` is the identity, bilinear upsampling
(``align_corners=False``) or average pooling by integer factors. The layout,
the tiling and the bytes moved are in docs/kernels_fusion.md ("Triton").

Both kernels are gathers: every output element is written by exactly one
program and no atomics are used, so results are deterministic.

Compile-time specialisation: besides ``MODE<k>`` (0 identity, 1 bilinear,
2 average pool, decided by ``rspnet.ops.reference.resample_mode``; the
kernels never decide it) each path has a constexpr ``SCALE<k>``: S in
``SCALES`` (2, 4, 8) when the path is bilinear up by exactly S in both
dimensions or pooled by S x S, else 0 (the generic code for any ratio). With
S, tap indices are shifts and the bilinear weights exact dyadic constants.

* Forward: one program per (plane, tile of BLOCK_H x BLOCK_W output pixels),
  each thread owning consecutive outputs of a row (128-bit stores).
* Backward: one program per (plane, band of REGION output rows); for every
  input it owns the input rows the band covers, computes
  ``t = resample^T(g)`` there, writes ``dx_p = w_p * t`` and one partial
  ``<x_p, t>`` per program and input, which the host sums in a fixed order.

The host (rspnet/ops/path_fusion.py) passes up to ``MAX_PATHS`` inputs per
launch and chunks longer lists; weights arrive as the softmax already
evaluated, in the accumulation dtype (fp32, or fp64 for fp64 data).
"""
import triton
import triton.language as tl

MAX_PATHS = 4
SCALES = (2, 4, 8)   # integer ratios specialised at compile time (SCALE<k>)

# Launch shapes (GPU and interpreter alike).
FWD_BLOCK_H = 4
FWD_BLOCK_W = 128
BWD_REGION = 16      # output rows per backward program
BWD_BLOCK_I = 8      # input rows per backward tile
BWD_BLOCK_W = 128    # input columns per identity/pool tile
BWD_GATHER = 1024    # elements of a [BLOCK_J, KX] bilinear gather tile
BWD_WARPS = 8
# The generic bilinear backward (a ratio other than 2/4/8) needs more
# registers per thread than 8 warps leave it (ptxas spilled 16 bytes there);
# with 4 warps it fits.
BWD_WARPS_GENERIC = 4


def backward_warps(modes: dict) -> int:
    """num_warps of a backward launch: fewer when an input takes the generic
    bilinear path (``MODE<k>`` 1 with ``SCALE<k>`` 0)."""
    generic = any(modes.get(f"MODE{i}") == 1 and modes.get(f"SCALE{i}", 0) == 0 for i in range(MAX_PATHS))
    return BWD_WARPS_GENERIC if generic else BWD_WARPS
BWD_TILE = tl.constexpr(1024)     # elements of a [BI, BJ, 2S] window tile of the integer-scale bilinear backward


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
def _int_taps(d, n_in, S: tl.constexpr, ACC: tl.constexpr):
    """``_taps`` for an output exactly S times its input (S a power of two):
    integer index math and the exact weights ``l1 = ((2r + 1 + S) % 2S) / 2S``
    of ``d = S q + r`` (the same values PyTorch's float formula gives, as
    1/S is exact)."""
    q = d // S
    r = d % S
    i0 = tl.where(2 * r + 1 < S, q - 1, q)
    l1 = ((2 * r + 1 + S) % (2 * S)).to(ACC) * (1.0 / (2 * S))
    l1 = tl.where(i0 < 0, 0.0, l1)
    i0 = tl.maximum(i0, 0)
    i1 = tl.minimum(i0 + 1, n_in - 1)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _fwd_path(w_ptr, k: tl.constexpr, x_ptr, h, w, plane, ys, xs, mask, H, W, MODE: tl.constexpr,
              SCALE: tl.constexpr):
    """``w_k * resample_k(x_k)`` at the tile's output pixels."""
    ACC: tl.constexpr = w_ptr.dtype.element_ty
    base = x_ptr + plane * h * w
    if MODE == 0:
        v = tl.load(base + ys * w + xs, mask=mask, other=0.0).to(ACC)
    elif MODE == 1:
        if SCALE > 0:
            r0, r1, a0, a1 = _int_taps(ys, h, SCALE, ACC)
            c0, c1, b0, b1 = _int_taps(xs, w, SCALE, ACC)
        else:
            r0, r1, a0, a1 = _taps(ys, h, H, ACC)
            c0, c1, b0, b1 = _taps(xs, w, W, ACC)
        # The four taps of a row pair are loaded together, then contracted
        # horizontally (b) and vertically (a).
        v00 = tl.load(base + r0 * w + c0, mask=mask, other=0.0).to(ACC)
        v01 = tl.load(base + r0 * w + c1, mask=mask, other=0.0).to(ACC)
        v10 = tl.load(base + r1 * w + c0, mask=mask, other=0.0).to(ACC)
        v11 = tl.load(base + r1 * w + c1, mask=mask, other=0.0).to(ACC)
        v = a0 * (b0 * v00 + b1 * v01) + a1 * (b0 * v10 + b1 * v11)
    else:
        if SCALE > 0:
            # Pool by SCALE x SCALE: each window row is SCALE contiguous
            # inputs per output, loaded as one [BH, BW, SCALE] tile.
            win = tl.arange(0, SCALE)[None, None, :]
            s = tl.zeros([ys.shape[0], xs.shape[1]], ACC)
            for a in tl.static_range(SCALE):
                row = base + ((ys * SCALE + a) * w + xs * SCALE)[:, :, None] + win
                s += tl.sum(tl.load(row, mask=mask[:, :, None], other=0.0).to(ACC), axis=2)
            v = s * (1.0 / (SCALE * SCALE))
        else:
            kh = h // H
            kw = w // W
            s = tl.zeros([ys.shape[0], xs.shape[1]], ACC)
            for a in range(kh):
                for b in range(kw):
                    s += tl.load(base + (ys * kh + a) * w + xs * kw + b, mask=mask, other=0.0).to(ACC)
            v = s / (kh * kw)
    return tl.load(w_ptr + k) * v


@triton.jit
def path_fusion_fwd_kernel(y_ptr, w_ptr, x0, x1, x2, x3, h0, w0, h1, w1, h2, w2, h3, w3, H, W, row_tiles,
                           P: tl.constexpr, MODE0: tl.constexpr, MODE1: tl.constexpr, MODE2: tl.constexpr,
                           MODE3: tl.constexpr, ACCUMULATE: tl.constexpr,
                           BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                           SCALE0: tl.constexpr = 0, SCALE1: tl.constexpr = 0, SCALE2: tl.constexpr = 0,
                           SCALE3: tl.constexpr = 0):
    pid = tl.program_id(0)
    plane = (pid // row_tiles).to(tl.int64)
    ys = (pid % row_tiles) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    xs = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    mask = (ys < H) & (xs < W)
    out = y_ptr + plane * H * W + ys * W + xs
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=w_ptr.dtype.element_ty)
    if ACCUMULATE:
        acc += tl.load(out, mask=mask, other=0.0).to(acc.dtype)
    acc += _fwd_path(w_ptr, 0, x0, h0, w0, plane, ys, xs, mask, H, W, MODE0, SCALE0)
    if P > 1:
        acc += _fwd_path(w_ptr, 1, x1, h1, w1, plane, ys, xs, mask, H, W, MODE1, SCALE1)
    if P > 2:
        acc += _fwd_path(w_ptr, 2, x2, h2, w2, plane, ys, xs, mask, H, W, MODE2, SCALE2)
    if P > 3:
        acc += _fwd_path(w_ptr, 3, x3, h3, w3, plane, ys, xs, mask, H, W, MODE3, SCALE3)
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tent(m, S: tl.constexpr, ACC: tl.constexpr):
    """Weight of output index ``S j - S/2 + m`` (0 <= m < 2S) in
    ``resample^T`` at input index j, for bilinear up by S: the tent
    ``(2m + 1) / 2S`` rising, ``(4S - 2m - 1) / 2S`` falling (exact)."""
    return tl.where(m < S, 2 * m + 1, 4 * S - 2 * m - 1).to(ACC) * (1.0 / (2 * S))


@triton.jit
def _bwd_identity(g_base, wk, xb, db, y0, y1, W, BLOCK: tl.constexpr, INPUT_GRADS: tl.constexpr,
                  LOGIT_GRAD: tl.constexpr, ACC: tl.constexpr, OUT: tl.constexpr):
    """The band's rows are one contiguous run of g, x and dx: a flat stream."""
    dot = tl.zeros([BLOCK], ACC)
    lo = y0 * W   # within a plane: 32-bit (the host rejects planes >= 2^31)
    hi = y1 * W
    for o in range(lo, hi, BLOCK):
        offs = o + tl.arange(0, BLOCK)
        m = offs < hi
        t = tl.load(g_base + offs, mask=m, other=0.0).to(ACC)
        if LOGIT_GRAD:
            xv = tl.load(xb + offs, mask=m, other=0.0).to(ACC)
            dot += xv * t
        if INPUT_GRADS:
            tl.store(db + offs, (wk * t).to(OUT), mask=m)
    return tl.sum(dot, axis=0)


@triton.jit
def _bwd_pool(g_base, wk, xb, db, h, w, y0, y1, H, W, S: tl.constexpr, BLOCK_I: tl.constexpr,
              BLOCK_W: tl.constexpr, INPUT_GRADS: tl.constexpr, LOGIT_GRAD: tl.constexpr, ACC: tl.constexpr,
              OUT: tl.constexpr):
    """Average pool: t[i, j] = g[i // kh, j // kw] / (kh kw) on input rows
    [y0 kh, y1 kh); x and dx are contiguous [BLOCK_I, BLOCK_W] tiles, g is
    gathered (each g value serves kh x kw inputs; with S > 0, kh = kw = S
    are constexpr and the index math is shifts)."""
    if S > 0:
        kh: tl.constexpr = S
        kw: tl.constexpr = S
    else:
        kh = h // H
        kw = w // W
    dot = tl.zeros([BLOCK_I, BLOCK_W], ACC)
    for i0 in range(y0 * kh, y1 * kh, BLOCK_I):
        ii = i0 + tl.arange(0, BLOCK_I)[:, None]
        for j0 in range(0, w, BLOCK_W):
            jj = j0 + tl.arange(0, BLOCK_W)[None, :]
            m = (ii < y1 * kh) & (jj < w)
            t = tl.load(g_base + (ii // kh) * W + jj // kw, mask=m, other=0.0).to(ACC) / (kh * kw)
            if LOGIT_GRAD:
                xv = tl.load(xb + ii * w + jj, mask=m, other=0.0).to(ACC)
                dot += xv * t
            if INPUT_GRADS:
                tl.store(db + ii * w + jj, (wk * t).to(OUT), mask=m)
    return tl.sum(tl.sum(dot, axis=1), axis=0)


@triton.jit
def _bwd_bilinear_int(g_base, wk, xb, db, h, w, i_lo, i_hi, H, W, S: tl.constexpr, BLOCK_I: tl.constexpr,
                      BLOCK_J: tl.constexpr, INPUT_GRADS: tl.constexpr, LOGIT_GRAD: tl.constexpr,
                      ACC: tl.constexpr, OUT: tl.constexpr):
    """Bilinear up by exactly S (H = S h, W = S w): t = Ry^T g Rx, separably.

    Input (i, j) gathers the 2S x 2S output window rows ``S i - S/2 + m``,
    columns ``S j - S/2 + n`` with tent weights (``_tent``; 1 at the clamped
    borders, where PyTorch's source index is clamped to 0 or the input's last
    index). The kernel walks m (the vertical taps, unrolled): each step loads
    the [BLOCK_I, BLOCK_J, 2S] window rows (contiguous along (j, n)) and
    accumulates them with the row weight; one horizontal contraction over n
    then gives t. Every g element is touched by <= 2 input rows and <= 2
    input columns; the band's g rows and halo come from DRAM once (re-reads
    of a row by the neighbouring input row and window hit L1)."""
    HALF: tl.constexpr = S // 2
    nn = tl.arange(0, 2 * S)[None, None, :]
    wx_tent = _tent(nn, S, ACC)
    dot = tl.zeros([BLOCK_I, BLOCK_J], ACC)
    for i0 in range(i_lo, i_hi, BLOCK_I):
        ii = i0 + tl.arange(0, BLOCK_I)[:, None]
        for j0 in range(0, w, BLOCK_J):
            jj = j0 + tl.arange(0, BLOCK_J)[None, :]
            xcol = (S * jj - HALF)[:, :, None] + nn
            xin = (xcol >= 0) & (xcol < W) & (jj < w)[:, :, None]
            wx = tl.where((xcol < HALF) | (xcol >= W - HALF), 1.0, wx_tent)
            u = tl.zeros([BLOCK_I, BLOCK_J, 2 * S], ACC)
            for m in range(2 * S):
                y = S * ii - HALF + m
                ok = (y >= 0) & (y < H) & (ii < i_hi)
                wy = tl.where((y < HALF) | (y >= H - HALF), 1.0, _tent(m, S, ACC))
                gv = tl.load(g_base + (y * W)[:, :, None] + xcol, mask=ok[:, :, None] & xin, other=0.0)
                u += wy[:, :, None] * gv.to(ACC)
            t = tl.sum(u * wx, axis=2)
            msk = (ii < i_hi) & (jj < w)
            offs = ii * w + jj
            if LOGIT_GRAD:
                xv = tl.load(xb + offs, mask=msk, other=0.0).to(ACC)
                dot += xv * t
            if INPUT_GRADS:
                tl.store(db + offs, (wk * t).to(OUT), mask=msk)
    return tl.sum(tl.sum(dot, axis=1), axis=0)


@triton.jit
def _bwd_bilinear_generic(g_base, wk, xb, db, h, w, i_lo, i_hi, H, W, KX: tl.constexpr, BLOCK_J: tl.constexpr,
                          BLOCK_I: tl.constexpr, INPUT_GRADS: tl.constexpr, LOGIT_GRAD: tl.constexpr,
                          ACC: tl.constexpr, OUT: tl.constexpr):
    """Bilinear up by any ratio: each needed g row is contracted horizontally
    with a [BLOCK_J, KX] gather (KX covers every output column whose taps
    touch an input column), then added into the input rows whose vertical
    taps include it."""
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
            if LOGIT_GRAD:
                dot += tl.load(xb + offs, mask=m, other=0.0).to(ACC) * t
            if INPUT_GRADS:
                tl.store(db + offs, (wk * t).to(OUT), mask=m)
    return tl.sum(tl.sum(dot, axis=1), axis=0)


@triton.jit
def _bwd_path(g_base, w_ptr, k: tl.constexpr, x_ptr, d_ptr, h, w, plane, y0, y1, H, W,
              MODE: tl.constexpr, SCALE: tl.constexpr, KX: tl.constexpr, BLOCK_J: tl.constexpr,
              BLOCK_I: tl.constexpr, BLOCK_W: tl.constexpr, REGION: tl.constexpr,
              INPUT_GRADS: tl.constexpr, LOGIT_GRAD: tl.constexpr):
    """dx_k = w_k * t and <x_k, t> for t = resample_k^T(g) on the input rows of
    this band; returns the partial dot product."""
    ACC: tl.constexpr = w_ptr.dtype.element_ty
    OUT: tl.constexpr = d_ptr.dtype.element_ty
    wk = tl.load(w_ptr + k)
    xb = x_ptr + plane * h * w
    db = d_ptr + plane * h * w
    if MODE == 0:
        part = _bwd_identity(g_base, wk, xb, db, y0, y1, W, BLOCK_I * BLOCK_W, INPUT_GRADS, LOGIT_GRAD, ACC, OUT)
    elif MODE == 2:
        part = _bwd_pool(g_base, wk, xb, db, h, w, y0, y1, H, W, SCALE, BLOCK_I, BLOCK_W, INPUT_GRADS,
                         LOGIT_GRAD, ACC, OUT)
    else:
        i_lo = ((_wide(y0) * h) // H).to(tl.int32)
        i_hi = ((_wide(y1) * h) // H).to(tl.int32)
        if SCALE > 0:
            BI: tl.constexpr = max(REGION // SCALE, 1)
            BJ: tl.constexpr = max(BWD_TILE // (BI * 2 * SCALE), 1)
            part = _bwd_bilinear_int(g_base, wk, xb, db, h, w, i_lo, i_hi, H, W, SCALE, BI, BJ, INPUT_GRADS,
                                     LOGIT_GRAD, ACC, OUT)
        else:
            part = _bwd_bilinear_generic(g_base, wk, xb, db, h, w, i_lo, i_hi, H, W, KX, BLOCK_J, BLOCK_I,
                                         INPUT_GRADS, LOGIT_GRAD, ACC, OUT)
    return part


@triton.jit
def path_fusion_bwd_kernel(g_ptr, w_ptr, partial_ptr, x0, x1, x2, x3, d0, d1, d2, d3,
                           h0, w0, h1, w1, h2, w2, h3, w3, H, W, regions, num_programs,
                           P: tl.constexpr, MODE0: tl.constexpr, MODE1: tl.constexpr, MODE2: tl.constexpr,
                           MODE3: tl.constexpr, KX0: tl.constexpr, KX1: tl.constexpr, KX2: tl.constexpr,
                           KX3: tl.constexpr, BJ0: tl.constexpr, BJ1: tl.constexpr, BJ2: tl.constexpr,
                           BJ3: tl.constexpr, INPUT_GRADS: tl.constexpr, LOGIT_GRAD: tl.constexpr,
                           REGION: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_W: tl.constexpr,
                           SCALE0: tl.constexpr = 0, SCALE1: tl.constexpr = 0, SCALE2: tl.constexpr = 0,
                           SCALE3: tl.constexpr = 0):
    """partial[k, pid] = <x_k, t_k> over this program's rows; dx_k = w_k t_k."""
    pid = tl.program_id(0)
    plane = (pid // regions).to(tl.int64)
    y0 = (pid % regions) * REGION
    y1 = tl.minimum(y0 + REGION, H)
    g_base = g_ptr + plane * H * W
    s = _bwd_path(g_base, w_ptr, 0, x0, d0, h0, w0, plane, y0, y1, H, W, MODE0, SCALE0, KX0, BJ0, BLOCK_I,
                  BLOCK_W, REGION, INPUT_GRADS, LOGIT_GRAD)
    if LOGIT_GRAD:
        tl.store(partial_ptr + pid, s)
    if P > 1:
        s = _bwd_path(g_base, w_ptr, 1, x1, d1, h1, w1, plane, y0, y1, H, W, MODE1, SCALE1, KX1, BJ1, BLOCK_I,
                      BLOCK_W, REGION, INPUT_GRADS, LOGIT_GRAD)
        if LOGIT_GRAD:
            tl.store(partial_ptr + num_programs + pid, s)
    if P > 2:
        s = _bwd_path(g_base, w_ptr, 2, x2, d2, h2, w2, plane, y0, y1, H, W, MODE2, SCALE2, KX2, BJ2, BLOCK_I,
                      BLOCK_W, REGION, INPUT_GRADS, LOGIT_GRAD)
        if LOGIT_GRAD:
            tl.store(partial_ptr + 2 * num_programs + pid, s)
    if P > 3:
        s = _bwd_path(g_base, w_ptr, 3, x3, d3, h3, w3, plane, y0, y1, H, W, MODE3, SCALE3, KX3, BJ3, BLOCK_I,
                      BLOCK_W, REGION, INPUT_GRADS, LOGIT_GRAD)
        if LOGIT_GRAD:
            tl.store(partial_ptr + 3 * num_programs + pid, s)
