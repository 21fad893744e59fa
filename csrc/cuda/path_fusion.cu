// path_fusion on CUDA: y = sum_p softmax(logits / T)_p * resample_p(x_p) and
// its backward, without materialising any resampled map and without atomics.
//
//   forward : one block per (plane, tile of kFwdRows x kFwdCols output pixels);
//             each thread owns 4 consecutive outputs of a row and gathers
//             their resampled values from every input (identity: one 4-wide
//             vector load, bilinear: 4 taps each, pooling: kh*kw), issuing a
//             path's loads for the four together, and writes them once (one
//             vector store). The host picks each input's PathKind, so the PAM
//             ratios (up by 2/4/8, pool by 2) run with compile-time factors.
//   backward: one block per (plane, band of kRegion output rows). The block owns,
//             for every input, the input rows [y0*h/H, y1*h/H) (a partition of
//             that input's rows) and computes t = resample^T(g) there:
//               identity / pooling: read g directly (identity as a 4-wide stream);
//               bilinear up by 2, 4 or 8 (fp32/16/bf16, W % 4 == 0): the g band
//               and halo staged in shared memory by vector loads, contracted
//               vertically then horizontally (bilinear_bwd_staged);
//               other bilinear: per input row, (1) contract the g rows whose vertical
//               taps include it into a shared-memory row r[x] (coalesced row
//               reads), (2) each input column gathers the r[x] whose horizontal
//               taps include it. Ranges come from a closed-form bound with a
//               margin; the weights from the forward's own formula (zero
//               outside the footprint), so t is exactly the transpose.
//             dx_p = w_p t is written once; <x_p, t> is reduced per block into
//             partial[p, block], and a one-block kernel sums the partials in a
//             fixed order and applies the softmax Jacobian.
// The softmax weights are evaluated once per call by a one-thread launch (in
// the accumulation type) and read by every block; a call is two launches per
// direction (+1 for dlogits). The backward streams identity inputs 4 elements
// at a time, with no division per element.
//
// Owns the CUDA kernels of rspnet::path_fusion and path_fusion_backward; the
// input checks and the resampling rule (ResampleMode) are shared with the CPU
// kernels (../common.h), the host section adds only this kernel's own limits.
//
// The kernels (everything above the host section) use no ATen, so a CPU test
// (tests/ops/test_path_fusion.py) compiles them as C++ with
// RSPNET_CUDA_EMULATION defined and runs them with one OS thread per CUDA
// thread: their logic is checked on machines without a GPU.
#ifndef RSPNET_CUDA_EMULATION
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#endif
#include "cuda_utils.cuh"
#include "../common.h"  // plain C++ (ResampleMode) under RSPNET_CUDA_EMULATION

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace rspnet {
namespace {

constexpr int kMaxPaths = 4;     // inputs per launch (a PAM node fuses <= 4); longer lists are chunked
constexpr int kThreads = 256;
constexpr int kFwdMinBlocks = 4; // resident blocks per SM asked of the register allocator
constexpr int kBwdMinBlocks = 3;
constexpr int kFwdQuads = 64;    // forward: threads across a tile, 4 consecutive outputs each
constexpr int kFwdCols = 4 * kFwdQuads;
constexpr int kFwdRows = 8;
constexpr int kRegion = 16;      // output rows per backward block
constexpr int kRowBuffer = 2048;    // shared-memory row of the bilinear backward
constexpr int kMaxFootprint = 256;  // vertical weights tabulated at a time

template <typename scalar_t>
struct Paths {
  using A = acc_t<scalar_t>;
  const scalar_t* x[kMaxPaths];
  scalar_t* dx[kMaxPaths];
  int h[kMaxPaths], w[kMaxPaths], mode[kMaxPaths];
  int kind[kMaxPaths];            // PathKind: the forward's compile-time specialisation
  int cols_per_chunk[kMaxPaths];  // bilinear backward: input columns per shared row
  A scale_h[kMaxPaths], scale_w[kMaxPaths];
};

template <typename A>
struct Taps {
  int i0, i1;
  A l0, l1;
};

// PyTorch's bilinear source taps (align_corners=False, size given).
template <typename A>
__device__ __forceinline__ Taps<A> taps(int d, int in, A scale) {
  A src = scale * (static_cast<A>(d) + A(0.5)) - A(0.5);
  src = src < A(0) ? A(0) : src;
  const int i0 = min(static_cast<int>(src), in - 1);
  const int i1 = i0 + (i0 < in - 1 ? 1 : 0);
  const A l1 = src - static_cast<A>(i0);
  return {i0, i1, A(1) - l1, l1};
}

template <typename A>
__device__ __forceinline__ A tap_weight(const Taps<A>& t, int i) {
  return (t.i0 == i ? t.l0 : A(0)) + (t.i1 == i ? t.l1 : A(0));
}

// Output indices whose taps may include input index i: [first, end), a safe
// superset of the exact footprint (see docs/kernels_fusion.md).
__host__ __device__ __forceinline__ int first_touching(int i, int in, int out) {
  const int64_t v = ((2 * int64_t(i) - 1) * out - in) / (2 * int64_t(in)) - 1;
  return v < 0 ? 0 : static_cast<int>(v);
}
__host__ __device__ __forceinline__ int end_touching(int i, int in, int out) {
  const int64_t v = ((2 * int64_t(i) + 3) * out - in) / (2 * int64_t(in)) + 2;
  return v > out ? out : static_cast<int>(v);
}

// How the forward samples an input, decided by the host (path_kind) so that
// the common PAM ratios run code with compile-time factors: bilinear up by 2,
// 4 or 8 in both dimensions, average pooling by 2; anything else takes the
// generic code with the factors read at run time.
enum PathKind : int { kKindIdentity = 0, kKindUp2, kKindUp4, kKindUp8, kKindUp, kKindPool2, kKindPool };

inline int path_kind(int mode, int h, int w, int64_t H, int64_t W) {
  if (mode == kIdentity) return kKindIdentity;
  if (mode == kBilinear) {
    for (int s : {2, 4, 8}) {
      if (int64_t(h) * s == H && int64_t(w) * s == W) return s == 2 ? kKindUp2 : s == 4 ? kKindUp4 : kKindUp8;
    }
    return kKindUp;
  }
  return (int64_t(h) == 2 * H && int64_t(w) == 2 * W) ? kKindPool2 : kKindPool;
}

// ------------------------------------------------------------------ forward
// Four consecutive outputs (x0 .. x0 + 3) of row yy of input k's resampling.
// VEC: W % 4 == 0 and every base pointer 4-element aligned, so the four are
// in range and identity rows load as one vector.
template <typename scalar_t, bool VEC>
__device__ __forceinline__ void sample_identity(const scalar_t* __restrict__ xp, int w, int yy, int x0, int W,
                                                acc_t<scalar_t> (&v)[4]) {
  using A = acc_t<scalar_t>;
  const scalar_t* row = xp + int64_t(yy) * w;
  if (VEC) {
    const Vec<scalar_t, 4> q = *reinterpret_cast<const Vec<scalar_t, 4>*>(row + x0);
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = static_cast<A>(q.v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = x0 + j < W ? static_cast<A>(row[x0 + j]) : A(0);
  }
}

// Bilinear up; S > 0: by S in both dimensions (the scale 1/S is exact, so
// the taps equal the generic formula's); S == 0: the run-time scales.
template <typename scalar_t, int S>
__device__ __forceinline__ void sample_up(const scalar_t* __restrict__ xp, int h, int w, acc_t<scalar_t> sh,
                                          acc_t<scalar_t> sw, int yy, int x0, int W, acc_t<scalar_t> (&v)[4]) {
  using A = acc_t<scalar_t>;
  const A scale_h = S > 0 ? A(1) / A(S > 0 ? S : 1) : sh;
  const A scale_w = S > 0 ? A(1) / A(S > 0 ? S : 1) : sw;
  const Taps<A> ty = taps(yy, h, scale_h);
  const scalar_t* r0 = xp + int64_t(ty.i0) * w;
  const scalar_t* r1 = xp + int64_t(ty.i1) * w;
  Taps<A> tx[4];
  A a[4], b[4], c[4], d[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) tx[j] = taps(min(x0 + j, W - 1), w, scale_w);
#pragma unroll
  for (int j = 0; j < 4; ++j) {  // every load of the row pair first
    a[j] = static_cast<A>(r0[tx[j].i0]);
    b[j] = static_cast<A>(r0[tx[j].i1]);
    c[j] = static_cast<A>(r1[tx[j].i0]);
    d[j] = static_cast<A>(r1[tx[j].i1]);
  }
#pragma unroll
  for (int j = 0; j < 4; ++j)
    v[j] = ty.l0 * (tx[j].l0 * a[j] + tx[j].l1 * b[j]) + ty.l1 * (tx[j].l0 * c[j] + tx[j].l1 * d[j]);
}

// Average pooling by kh x kw; S > 0: by S x S.
template <typename scalar_t, int S>
__device__ __forceinline__ void sample_pool(const scalar_t* __restrict__ xp, int h, int w, int H, int yy, int x0,
                                            int W, acc_t<scalar_t> (&v)[4]) {
  using A = acc_t<scalar_t>;
  const int kh = S > 0 ? S : h / H, kw = S > 0 ? S : w / W;
  const A inv = A(1) / static_cast<A>(kh * kw);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int xx = min(x0 + j, W - 1);
    A s = A(0);
#pragma unroll 2
    for (int a = 0; a < kh; ++a) {
      const scalar_t* row = xp + int64_t(yy * kh + a) * w + int64_t(xx) * kw;
#pragma unroll 2
      for (int b = 0; b < kw; ++b) s += static_cast<A>(row[b]);
    }
    v[j] = s * inv;
  }
}

// y (+)= sum_{k < P} wts[k0 + k] * resample_k(x_k). One block per (plane,
// kFwdRows rows, kFwdCols columns); thread t writes outputs 4 (t % kFwdQuads)
// .. +3 of rows t / kFwdQuads, + kThreads / kFwdQuads, ... The softmax weights
// arrive evaluated (once per call, by the host).
template <typename scalar_t, bool VEC>
__global__ void __launch_bounds__(kThreads, kFwdMinBlocks)
path_fusion_fwd_kernel(Paths<scalar_t> ps, int P, const acc_t<scalar_t>* __restrict__ wts, int k0,
                       scalar_t* __restrict__ y, int H, int W, int row_tiles, int col_tiles, bool accumulate) {
  using A = acc_t<scalar_t>;
  const int b = blockIdx.x;
  const int col0 = (b % col_tiles) * kFwdCols;
  const int rest = b / col_tiles;
  const int row0 = (rest % row_tiles) * kFwdRows;
  const int64_t plane = rest / row_tiles;
  const int x0 = col0 + 4 * (static_cast<int>(threadIdx.x) % kFwdQuads);
  if (x0 >= W) return;
  A wk[kMaxPaths];
#pragma unroll
  for (int k = 0; k < kMaxPaths; ++k) wk[k] = k < P ? wts[k0 + k] : A(0);
  scalar_t* out = y + plane * H * W;
  for (int r = static_cast<int>(threadIdx.x) / kFwdQuads; r < kFwdRows; r += kThreads / kFwdQuads) {
    const int yy = row0 + r;
    if (yy >= H) break;
    A acc[4] = {A(0), A(0), A(0), A(0)};
    if (accumulate) sample_identity<scalar_t, VEC>(out, W, yy, x0, W, acc);
#pragma unroll
    for (int k = 0; k < kMaxPaths; ++k) {
      if (k < P) {
        const int h = ps.h[k], w = ps.w[k];
        const scalar_t* __restrict__ xp = ps.x[k] + plane * h * w;
        A v[4];
        switch (ps.kind[k]) {
          case kKindIdentity: sample_identity<scalar_t, VEC>(xp, w, yy, x0, W, v); break;
          case kKindUp2: sample_up<scalar_t, 2>(xp, h, w, A(0), A(0), yy, x0, W, v); break;
          case kKindUp4: sample_up<scalar_t, 4>(xp, h, w, A(0), A(0), yy, x0, W, v); break;
          case kKindUp8: sample_up<scalar_t, 8>(xp, h, w, A(0), A(0), yy, x0, W, v); break;
          case kKindUp: sample_up<scalar_t, 0>(xp, h, w, ps.scale_h[k], ps.scale_w[k], yy, x0, W, v); break;
          case kKindPool2: sample_pool<scalar_t, 2>(xp, h, w, H, yy, x0, W, v); break;
          default: sample_pool<scalar_t, 0>(xp, h, w, H, yy, x0, W, v);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[j] += wk[k] * v[j];
      }
    }
    scalar_t* orow = out + int64_t(yy) * W;
    if (VEC) {
      Vec<scalar_t, 4> q;
#pragma unroll
      for (int j = 0; j < 4; ++j) q.v[j] = static_cast<scalar_t>(acc[j]);
      *reinterpret_cast<Vec<scalar_t, 4>*>(orow + x0) = q;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (x0 + j < W) orow[x0 + j] = static_cast<scalar_t>(acc[j]);
      }
    }
  }
}

// ----------------------------------------------------------------- backward
// Bilinear up by an integer S (2, 4, 8) in both dimensions, the PAM case,
// fp32/fp16/bf16 accumulating in fp32 (kStaged): t = A^T g B on the block's
// input rows [i_lo, i_hi) = [y0 / S, y1 / S), one tile of kTileOut output
// columns (kTileOut / S input columns) at a time:
//   (0) the g rows of the band and its halo, [S i_lo - S/2, S i_hi + S/2),
//       and the tile's columns plus halo, are staged in shared memory with
//       4-element vector loads (the one read of g for this path);
//   (1) vertical: v[i][x] = sum over the 2S rows of i's footprint of
//       A(y, i) g[y][x];
//   (2) horizontal: t[i][j] = sum over the 2S columns of j's footprint of
//       B(x, j) v[i][x].
// A and B are PyTorch's own taps (tap_weight of taps(), scale 1/S exact), so
// the borders, where PyTorch clamps the source index, come out right.
constexpr int kTileOut = 256;                   // output columns per staged tile
constexpr int kStageRows = 16 + 8;              // kRegion rows + the halo of S = 8
constexpr int kStageCols = kTileOut + 8 + 8;    // + halo of S = 8 + alignment slack
template <typename A>
constexpr bool kStaged = sizeof(A) == 4;

template <typename A>
__host__ __device__ constexpr int bwd_smem_bytes() {
  const int generic = (2 * kRowBuffer + kMaxFootprint) * int(sizeof(A)) + kRowBuffer * int(sizeof(int));
  const int staged = kStaged<A> ? (kStageRows * kStageCols + (kRegion / 2) * kStageCols + 32 + 2 * kTileOut)
                                      * int(sizeof(A)) : 0;
  return generic > staged ? generic : staged;
}

template <typename scalar_t, int S>
__device__ __forceinline__ void bilinear_bwd_staged(const scalar_t* __restrict__ gp,
                                                    const scalar_t* __restrict__ xp, scalar_t* __restrict__ dxp,
                                                    int h, int w, int H, int W, int i_lo, int i_hi,
                                                    acc_t<scalar_t> wk, bool logit_grad, acc_t<scalar_t>& d,
                                                    unsigned char* smem) {
  using A = acc_t<scalar_t>;
  using V4 = Vec<scalar_t, 4>;
  constexpr int FP = 2 * S;           // footprint of an input index: 2S output indices
  constexpr int TJ = kTileOut / S;    // input columns per tile
  const A scale = A(1) / A(S);
  A* gs = reinterpret_cast<A*>(smem);              // [kStageRows][kStageCols]
  A* vs = gs + kStageRows * kStageCols;            // [kRegion / 2][kStageCols]
  A* aw = vs + (kRegion / 2) * kStageCols;         // [ni][FP], ni * FP = 32
  A* bw = aw + 32;                                 // [TJ][FP], TJ * FP = 2 kTileOut
  const int ni = i_hi - i_lo;
  const int ya = max(0, S * i_lo - S / 2), yb = min(H, S * i_hi + S / 2);
  const int rows = yb - ya;
  // Vertical weights of the band's input rows (zero outside the plane).
  for (int e = threadIdx.x; e < ni * FP; e += kThreads) {
    const int il = e / FP, m = e % FP, i = i_lo + il, y = S * i - S / 2 + m;
    aw[e] = (y >= 0 && y < H) ? tap_weight(taps(y, h, scale), i) : A(0);
  }
  for (int j0 = 0; j0 < w; j0 += TJ) {
    const int xa = max(0, S * j0 - S / 2) & ~3;                 // 4-aligned (W % 4 == 0)
    const int xb = min(W, (S * (j0 + TJ) + S / 2 + 3) & ~3);
    const int cols = xb - xa, quads = cols / 4;
    __syncthreads();  // the previous tile (or path) is done with the buffers
    // (0) stage g, 4 elements per access.
    for (int e = threadIdx.x; e < rows * quads; e += kThreads) {
      const int r = e / quads, q = e % quads;
      const V4 v = *reinterpret_cast<const V4*>(gp + int64_t(ya + r) * W + xa + 4 * q);
#pragma unroll
      for (int c = 0; c < 4; ++c) gs[r * kStageCols + 4 * q + c] = static_cast<A>(v.v[c]);
    }
    for (int e = threadIdx.x; e < TJ * FP; e += kThreads) {
      const int jl = e / FP, n = e % FP, j = j0 + jl, x = S * j - S / 2 + n;
      bw[e] = (j < w && x >= 0 && x < W) ? tap_weight(taps(x, w, scale), j) : A(0);
    }
    __syncthreads();
    // (1) vertical contraction into v[il][c].
    for (int e = threadIdx.x; e < ni * cols; e += kThreads) {
      const int il = e / cols, c = e % cols;
      const int r0 = S * (i_lo + il) - S / 2 - ya;
      A v = A(0);
#pragma unroll
      for (int m = 0; m < FP; ++m) {
        const int r = r0 + m;
        if (r >= 0 && r < rows) v += aw[il * FP + m] * gs[r * kStageCols + c];
      }
      vs[il * kStageCols + c] = v;
    }
    __syncthreads();
    // (2) horizontal contraction, dx and <x, t>.
    for (int e = threadIdx.x; e < ni * TJ; e += kThreads) {
      const int il = e / TJ, jl = e % TJ, j = j0 + jl;
      if (j >= w) continue;
      const int c0 = S * j - S / 2 - xa;
      A t = A(0);
#pragma unroll
      for (int n = 0; n < FP; ++n) {
        const int c = c0 + n;
        if (c >= 0 && c < cols) t += bw[jl * FP + n] * vs[il * kStageCols + c];
      }
      const int64_t o = int64_t(i_lo + il) * w + j;
      if (dxp) dxp[o] = static_cast<scalar_t>(wk * t);
      if (logit_grad) d += static_cast<A>(xp[o]) * t;
    }
  }
  __syncthreads();  // the buffers are free for the next path
}

// fp64 needs more registers than kBwdMinBlocks blocks per SM leave a thread.
template <typename scalar_t>
constexpr int bwd_min_blocks() { return sizeof(scalar_t) == 8 ? 2 : kBwdMinBlocks; }

template <typename scalar_t, bool VEC>
__global__ void __launch_bounds__(kThreads, bwd_min_blocks<scalar_t>())
path_fusion_bwd_kernel(const scalar_t* __restrict__ g, Paths<scalar_t> ps, int P,
                       const acc_t<scalar_t>* __restrict__ wts, int k0, int H, int W, int regions,
                       acc_t<scalar_t>* __restrict__ partial, int64_t blocks, bool input_grads, bool logit_grad) {
  using A = acc_t<scalar_t>;
  using V4 = Vec<scalar_t, 4>;
  // One shared buffer, carved either for the generic bilinear code (a row
  // r[x], the chunk's column taps, a piece of vertical weights) or for the
  // staged integer-scale code (see bilinear_bwd_staged).
  alignas(16) __shared__ unsigned char smem[bwd_smem_bytes<A>()];
  A* row = reinterpret_cast<A*>(smem);                                    // r[x] for the current input row
  A* col_l1 = row + kRowBuffer;                                           // column taps of the current chunk
  A* vweight = col_l1 + kRowBuffer;                                       // A(y, i), a piece of a footprint
  int* col_i0 = reinterpret_cast<int*>(vweight + kMaxFootprint);
  __shared__ A warp_partial[kMaxPaths][kThreads / 32];
  const int64_t plane = blockIdx.x / regions;
  const int y0 = static_cast<int>(blockIdx.x % regions) * kRegion;
  const int y1 = min(H, y0 + kRegion);
  const scalar_t* __restrict__ gp = g + plane * H * W;
  // One path at a time (not unrolled: the paths' bodies are large); each
  // path's <x_k, t> is reduced per warp into shared memory right away.
#pragma unroll 1
  for (int k = 0; k < P; ++k) {
    const int h = ps.h[k], w = ps.w[k], mode = ps.mode[k];
    const scalar_t* __restrict__ xp = ps.x[k] + plane * h * w;
    scalar_t* __restrict__ dxp = input_grads ? ps.dx[k] + plane * h * w : nullptr;
    const int i_lo = static_cast<int>(int64_t(y0) * h / H), i_hi = static_cast<int>(int64_t(y1) * h / H);
    const A wk = wts[k0 + k];
    A d = A(0);
    if (mode == kIdentity) {
      // Rows [i_lo, i_hi) are one contiguous stretch of g, x and dx: a stream.
      const int64_t base = int64_t(i_lo) * w;
      const int n = (i_hi - i_lo) * w;
      if (VEC) {  // W % 4 == 0 and aligned: n % 4 == 0
        for (int q = threadIdx.x; q < n / 4; q += kThreads) {
          const V4 gv = *reinterpret_cast<const V4*>(gp + base + 4 * q);
          V4 xv;
          if (logit_grad) xv = *reinterpret_cast<const V4*>(xp + base + 4 * q);
          if (dxp) {
            V4 o;
#pragma unroll
            for (int j = 0; j < 4; ++j) o.v[j] = static_cast<scalar_t>(wk * static_cast<A>(gv.v[j]));
            *reinterpret_cast<V4*>(dxp + base + 4 * q) = o;
          }
          if (logit_grad) {
#pragma unroll
            for (int j = 0; j < 4; ++j) d += static_cast<A>(xv.v[j]) * static_cast<A>(gv.v[j]);
          }
        }
      } else {
        for (int e = threadIdx.x; e < n; e += kThreads) {
          const A t = static_cast<A>(gp[base + e]);
          if (dxp) dxp[base + e] = static_cast<scalar_t>(wk * t);
          if (logit_grad) d += static_cast<A>(xp[base + e]) * t;
        }
      }
    } else if (mode == kPool) {
      const int kh = h / H, kw = w / W;
      const A inv = A(1) / static_cast<A>(kh * kw);
      for (int i = i_lo; i < i_hi; ++i) {  // one division per row, shifts for the factor 2
        const scalar_t* __restrict__ grow = gp + int64_t(i / kh) * W;
        for (int j = threadIdx.x; j < w; j += kThreads) {
          const A t = static_cast<A>(grow[kw == 2 ? j >> 1 : j / kw]) * inv;
          if (dxp) dxp[int64_t(i) * w + j] = static_cast<scalar_t>(wk * t);
          if (logit_grad) d += static_cast<A>(xp[int64_t(i) * w + j]) * t;
        }
      }
    } else if (i_lo < i_hi && kStaged<A> && VEC && ps.kind[k] == kKindUp2) {
      bilinear_bwd_staged<scalar_t, 2>(gp, xp, dxp, h, w, H, W, i_lo, i_hi, wk, logit_grad, d, smem);
    } else if (i_lo < i_hi && kStaged<A> && VEC && ps.kind[k] == kKindUp4) {
      bilinear_bwd_staged<scalar_t, 4>(gp, xp, dxp, h, w, H, W, i_lo, i_hi, wk, logit_grad, d, smem);
    } else if (i_lo < i_hi && kStaged<A> && VEC && ps.kind[k] == kKindUp8) {
      bilinear_bwd_staged<scalar_t, 8>(gp, xp, dxp, h, w, H, W, i_lo, i_hi, wk, logit_grad, d, smem);
    } else if (i_lo < i_hi) {
      const A sh = ps.scale_h[k], sw = ps.scale_w[k];
      const int chunk = ps.cols_per_chunk[k];
      for (int j0 = 0; j0 < w; j0 += chunk) {
        const int j1 = min(w, j0 + chunk);
        const int xa = first_touching(j0, w, W), xb = end_touching(j1 - 1, w, W);
        // Column taps of the chunk, shared by every input row of the band.
        for (int x = xa + threadIdx.x; x < xb; x += kThreads) {
          const Taps<A> t = taps(x, w, sw);
          col_i0[x - xa] = t.i0;
          col_l1[x - xa] = t.l1;
        }
        for (int i = i_lo; i < i_hi; ++i) {
          const int ya = first_touching(i, h, H), yb = end_touching(i, h, H);
          // (1) r[x] = sum_y A(y, i) g[y, x]: whole g rows, coalesced; the
          //     vertical weights are tabulated once per piece of rows.
          for (int yp = ya; yp < yb; yp += kMaxFootprint) {
            const int ye = min(yb, yp + kMaxFootprint);
            for (int yy = yp + threadIdx.x; yy < ye; yy += kThreads) vweight[yy - yp] = tap_weight(taps(yy, h, sh), i);
            __syncthreads();
            for (int x = xa + threadIdx.x; x < xb; x += kThreads) {
              A r = yp == ya ? A(0) : row[x - xa];
              const scalar_t* gx = gp + x;
#pragma unroll 2
              for (int yy = yp; yy < ye; ++yy) {
                const A a = vweight[yy - yp];
                if (a != A(0)) r += a * static_cast<A>(gx[int64_t(yy) * W]);
              }
              row[x - xa] = r;
            }
            __syncthreads();
          }
          // (2) t[j] = sum_x B(x, j) r[x], with the forward's column weights.
          for (int j = j0 + threadIdx.x; j < j1; j += kThreads) {
            const int xe = end_touching(j, w, W);
            A t = A(0);
            for (int x = first_touching(j, w, W); x < xe; ++x) {
              const int c0 = col_i0[x - xa], c1 = c0 + (c0 < w - 1 ? 1 : 0);
              const A l1 = col_l1[x - xa];
              const A bw = (c0 == j ? A(1) - l1 : A(0)) + (c1 == j ? l1 : A(0));
              if (bw != A(0)) t += bw * row[x - xa];
            }
            if (dxp) dxp[i * w + j] = static_cast<scalar_t>(wk * t);
            if (logit_grad) d += static_cast<A>(xp[i * w + j]) * t;
          }
          __syncthreads();
        }
      }
    }
    if (logit_grad) {
      const A s = warp_sum(d);
      if ((threadIdx.x & 31) == 0) warp_partial[k][threadIdx.x >> 5] = s;
    }
  }
  if (!logit_grad) return;
  __syncthreads();
  if (threadIdx.x < static_cast<unsigned>(P)) {
    A s = A(0);
#pragma unroll
    for (int wi = 0; wi < kThreads / 32; ++wi) s += warp_partial[threadIdx.x][wi];
    partial[(k0 + threadIdx.x) * blocks + blockIdx.x] = s;
  }
}

// dw_p = sum over blocks of partial[p, :] (fixed order), then
// dlogits = w * (dw - <w, dw>) / T. One block.
template <typename A>
__global__ void __launch_bounds__(kThreads)
path_fusion_dlogits_kernel(const A* __restrict__ partial, int64_t blocks, const A* __restrict__ logits, int P,
                           A temperature, A* __restrict__ dw, A* __restrict__ dlogits) {
  __shared__ A red[kThreads];
  for (int p = 0; p < P; ++p) {
    A s = A(0);
    for (int64_t b = threadIdx.x; b < blocks; b += kThreads) s += partial[p * blocks + b];
    red[threadIdx.x] = s;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half >>= 1) {
      if (threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) dw[p] = red[0];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    A m = -std::numeric_limits<A>::infinity();
    for (int p = 0; p < P; ++p) m = max(m, logits[p] / temperature);
    A s = A(0);
    for (int p = 0; p < P; ++p) s += exp(logits[p] / temperature - m);
    A mean = A(0);
    for (int p = 0; p < P; ++p) mean += exp(logits[p] / temperature - m) / s * dw[p];
    for (int p = 0; p < P; ++p) dlogits[p] = exp(logits[p] / temperature - m) / s * (dw[p] - mean) / temperature;
  }
}

// wts = softmax(logits / T), once per call (one thread: P is a handful).
template <typename A>
__global__ void path_fusion_weights_kernel(const A* __restrict__ logits, int P, A temperature, A* __restrict__ wts) {
  if (threadIdx.x != 0) return;
  A m = -std::numeric_limits<A>::infinity();
  for (int p = 0; p < P; ++p) m = max(m, logits[p] / temperature);
  A s = A(0);
  for (int p = 0; p < P; ++p) s += exp(logits[p] / temperature - m);
  for (int p = 0; p < P; ++p) wts[p] = exp(logits[p] / temperature - m) / s;
}

// Launch parameters of input k (a path of h x w to H x W in `mode`).
template <typename scalar_t>
void set_path(Paths<scalar_t>& ps, int k, const scalar_t* x, scalar_t* dx, int h, int w, int mode, int64_t H,
              int64_t W) {
  using A = acc_t<scalar_t>;
  ps.x[k] = x, ps.dx[k] = dx;
  ps.h[k] = h, ps.w[k] = w, ps.mode[k] = mode;
  ps.kind[k] = path_kind(mode, h, w, H, W);
  ps.scale_h[k] = static_cast<A>(h) / static_cast<A>(H);
  ps.scale_w[k] = static_cast<A>(w) / static_cast<A>(W);
  // Columns [j0, j0+n) need output columns [first(j0), end(j0+n-1)), at most
  // (n+1)*W/w + 4 of them: keep that within the shared row.
  ps.cols_per_chunk[k] = std::max<int>(1, static_cast<int>((kRowBuffer - 5) * int64_t(w) / W) - 1);
}

#ifndef RSPNET_CUDA_EMULATION
// ------------------------------------------------------------------ host
// Limits of these kernels on top of the shared checks: planes are indexed in
// 32-bit arithmetic, and a bilinear backward chunk must fit the shared row.
void check_cuda_limits(const char* op, const FusionInputs& c) {
  TORCH_CHECK(c.H * c.W < (int64_t{1} << 31), op, ": output planes of 2^31 or more elements are not supported");
  for (size_t p = 0; p < c.paths.size(); ++p) {
    const int64_t h = c.paths[p].h, w = c.paths[p].w;
    TORCH_CHECK(h * w < (int64_t{1} << 31), op, ": input planes of 2^31 or more elements are not supported");
    TORCH_CHECK(c.paths[p].mode != kBilinear || 2 * c.W <= (kRowBuffer - 8) * w, op, ": upsampling inputs[", p,
                "] by more than ", (kRowBuffer - 8) / 2, "x in width is not supported by the CUDA kernel");
  }
}

template <typename scalar_t>
Paths<scalar_t> chunk_paths(const FusionInputs& c, std::vector<at::Tensor>* dxs, int k0, int count) {
  Paths<scalar_t> ps{};
  for (int k = 0; k < count; ++k) {
    const auto& x = c.xs[k0 + k];
    set_path<scalar_t>(ps, k, x.const_data_ptr<scalar_t>(), dxs ? (*dxs)[k0 + k].mutable_data_ptr<scalar_t>() : nullptr,
                       static_cast<int>(x.size(2)), static_cast<int>(x.size(3)), c.paths[k0 + k].mode, c.H, c.W);
  }
  return ps;
}

at::Tensor acc_logits(const at::Tensor& logits, const at::Tensor& like) {
  const auto acc = like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return logits.detach().to(like.device(), acc).contiguous();
}

// softmax(l / T) in l's (accumulation) dtype, by one tiny launch.
template <typename A>
at::Tensor softmax_weights(const at::Tensor& l, double temperature, cudaStream_t stream) {
  auto wts = at::empty_like(l);
  path_fusion_weights_kernel<A><<<1, 32, 0, stream>>>(l.const_data_ptr<A>(), static_cast<int>(l.numel()),
                                                      static_cast<A>(temperature), wts.mutable_data_ptr<A>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return wts;
}

// May the kernels move 4 consecutive elements as one vector: W % 4 == 0 and
// every tensor's base 4-element aligned (then so is every plane and row).
template <typename scalar_t>
bool vectorisable(int64_t W, std::initializer_list<const std::vector<at::Tensor>*> lists) {
  if (W % 4 != 0) return false;
  for (const auto* list : lists) {
    for (const auto& t : *list) {
      if (reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % (4 * sizeof(scalar_t)) != 0) return false;
    }
  }
  return true;
}

at::Tensor path_fusion_cuda(const at::Tensor& logits, at::TensorList inputs, c10::SymIntArrayRef size,
                            double temperature) {
  const auto c = check_path_fusion(logits, inputs, size, temperature);
  check_cuda_limits("path_fusion", c);
  const int64_t H = c.H, W = c.W;
  const c10::cuda::CUDAGuard guard(c.xs[0].device());
  auto y = at::empty({c.N, c.C, H, W}, c.xs[0].options());
  if (y.numel() == 0) return y;
  auto l = acc_logits(logits, y);
  const int P_all = static_cast<int>(c.xs.size());
  const int row_tiles = static_cast<int>((H + kFwdRows - 1) / kFwdRows);
  const int col_tiles = static_cast<int>((W + kFwdCols - 1) / kFwdCols);
  const int64_t blocks = c.N * c.C * row_tiles * col_tiles;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "path_fusion: too many output tiles for one launch");
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "path_fusion_cuda", [&] {
    using A = acc_t<scalar_t>;
    const auto wts = softmax_weights<A>(l, temperature, stream);
    const std::vector<at::Tensor> ys{y};
    const bool vec = vectorisable<scalar_t>(W, {&c.xs, &ys});
    for (int k0 = 0; k0 < P_all; k0 += kMaxPaths) {
      const int count = std::min(kMaxPaths, P_all - k0);
      const auto ps = chunk_paths<scalar_t>(c, nullptr, k0, count);
      auto kernel = vec ? path_fusion_fwd_kernel<scalar_t, true> : path_fusion_fwd_kernel<scalar_t, false>;
      kernel<<<blocks, kThreads, 0, stream>>>(ps, count, wts.const_data_ptr<A>(), k0, y.mutable_data_ptr<scalar_t>(),
                                              static_cast<int>(H), static_cast<int>(W), row_tiles, col_tiles, k0 > 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> path_fusion_backward_cuda(const at::Tensor& grad,
                                                                           const at::Tensor& logits,
                                                                           at::TensorList inputs, double temperature,
                                                                           bool input_grads, bool logit_grad) {
  const auto c = check_path_fusion_backward(grad, logits, inputs, temperature);
  check_cuda_limits("path_fusion_backward", c);
  const c10::cuda::CUDAGuard guard(c.xs[0].device());
  auto g = grad.to(c.xs[0].scalar_type()).contiguous();
  std::vector<at::Tensor> dxs;
  if (input_grads) {
    for (const auto& x : c.xs) dxs.push_back(at::empty_like(x));
  }
  auto l = acc_logits(logits, g);
  const int P_all = static_cast<int>(c.xs.size());
  const int regions = static_cast<int>((c.H + kRegion - 1) / kRegion);
  const int64_t blocks = c.N * c.C * regions;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "path_fusion_backward: too many row bands for one launch");
  auto dlogits = logit_grad && blocks > 0 ? at::empty({P_all}, l.options()) : at::zeros({P_all}, l.options());
  if (blocks == 0 || !(input_grads || logit_grad)) return {dxs, dlogits.to(logits.options())};
  auto partial = at::empty({logit_grad ? P_all : 1, logit_grad ? blocks : 1}, l.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "path_fusion_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    const auto wts = softmax_weights<A>(l, temperature, stream);
    const std::vector<at::Tensor> gs{g};
    const bool vec = vectorisable<scalar_t>(c.W, {&c.xs, &gs, &dxs});
    for (int k0 = 0; k0 < P_all; k0 += kMaxPaths) {
      const int count = std::min(kMaxPaths, P_all - k0);
      const auto ps = chunk_paths<scalar_t>(c, input_grads ? &dxs : nullptr, k0, count);
      auto kernel = vec ? path_fusion_bwd_kernel<scalar_t, true> : path_fusion_bwd_kernel<scalar_t, false>;
      kernel<<<blocks, kThreads, 0, stream>>>(g.const_data_ptr<scalar_t>(), ps, count, wts.const_data_ptr<A>(), k0,
                                              static_cast<int>(c.H), static_cast<int>(c.W), regions,
                                              partial.mutable_data_ptr<A>(), blocks, input_grads, logit_grad);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (logit_grad) {
      auto dw = at::empty({P_all}, l.options());
      path_fusion_dlogits_kernel<A><<<1, kThreads, 0, stream>>>(
          partial.const_data_ptr<A>(), blocks, l.const_data_ptr<A>(), P_all, static_cast<A>(temperature),
          dw.mutable_data_ptr<A>(), dlogits.mutable_data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dxs, dlogits.to(logits.options())};
}

#endif  // RSPNET_CUDA_EMULATION

}  // namespace

#ifndef RSPNET_CUDA_EMULATION
TORCH_LIBRARY_IMPL(rspnet, CUDA, m) {
  m.impl("path_fusion", &path_fusion_cuda);
  m.impl("path_fusion_backward", &path_fusion_backward_cuda);
}
#endif

}  // namespace rspnet
