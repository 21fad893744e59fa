// path_fusion on CUDA: y = sum_p softmax(logits / T)_p * resample_p(x_p) and
// its backward, without materialising any resampled map and without atomics.
//
//   forward : one block per (plane, tile of kFwdRows x kFwdCols output pixels);
//             each pixel gathers its resampled value from every input
//             (identity: 1 tap, bilinear: 4, pooling: kh*kw) and is written once.
//   backward: one block per (plane, band of kRegion output rows). The block owns,
//             for every input, the input rows [y0*h/H, y1*h/H) (a partition of
//             that input's rows) and computes t = resample^T(g) there:
//               identity / pooling: read g directly;
//               bilinear: per input row, (1) contract the g rows whose vertical
//               taps include it into a shared-memory row r[x] (coalesced row
//               reads), (2) each input column gathers the r[x] whose horizontal
//               taps include it. Ranges come from a closed-form bound with a
//               margin; the weights from the forward's own formula (zero
//               outside the footprint), so t is exactly the transpose.
//             dx_p = w_p t is written once; <x_p, t> is reduced per block into
//             partial[p, block], and a one-block kernel sums the partials in a
//             fixed order and applies the softmax Jacobian.
// Softmax weights are evaluated inside the kernels (from logits in the
// accumulation type), so a call is one launch per direction (+1 for dlogits).
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

#include "cuda_utils.cuh"
#endif
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
constexpr int kFwdCols = 128;
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

// softmax(logits / T)[k0 : k0 + count] into shared memory, by thread 0.
template <typename A>
__device__ void softmax_weights(const A* logits, int P_all, int k0, int count, A temperature, A* w) {
  if (threadIdx.x == 0) {
    A m = -std::numeric_limits<A>::infinity();
    for (int p = 0; p < P_all; ++p) m = max(m, logits[p] / temperature);
    A s = A(0);
    for (int p = 0; p < P_all; ++p) s += exp(logits[p] / temperature - m);
    for (int k = 0; k < count; ++k) w[k] = exp(logits[k0 + k] / temperature - m) / s;
  }
  __syncthreads();
}

// ------------------------------------------------------------------ forward
// Value of input k resampled at output (y, x); `tx` are the column taps of x
// (bilinear inputs only), computed once per thread and reused for its rows.
template <typename scalar_t>
__device__ __forceinline__ acc_t<scalar_t> sample(const Paths<scalar_t>& ps, int k, int64_t plane, int y, int x,
                                                  const Taps<acc_t<scalar_t>>& tx, int H, int W) {
  using A = acc_t<scalar_t>;
  const int h = ps.h[k], w = ps.w[k];
  const scalar_t* __restrict__ xp = ps.x[k] + plane * h * w;
  if (ps.mode[k] == kIdentity) return static_cast<A>(xp[y * w + x]);
  if (ps.mode[k] == kBilinear) {
    const Taps<A> ty = taps(y, h, ps.scale_h[k]);
    const A v00 = static_cast<A>(xp[ty.i0 * w + tx.i0]), v01 = static_cast<A>(xp[ty.i0 * w + tx.i1]);
    const A v10 = static_cast<A>(xp[ty.i1 * w + tx.i0]), v11 = static_cast<A>(xp[ty.i1 * w + tx.i1]);
    return ty.l0 * (tx.l0 * v00 + tx.l1 * v01) + ty.l1 * (tx.l0 * v10 + tx.l1 * v11);
  }
  const int kh = h / H, kw = w / W;
  A s = A(0);
  for (int a = 0; a < kh; ++a) {
    const scalar_t* row = xp + (y * kh + a) * w + x * kw;
    for (int b = 0; b < kw; ++b) s += static_cast<A>(row[b]);
  }
  return s / static_cast<A>(kh * kw);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kFwdMinBlocks)
path_fusion_fwd_kernel(Paths<scalar_t> ps, int P, const acc_t<scalar_t>* __restrict__ logits, int P_all, int k0,
                       acc_t<scalar_t> temperature, scalar_t* __restrict__ y, int H, int W, int row_tiles,
                       int col_tiles, bool accumulate) {
  using A = acc_t<scalar_t>;
  __shared__ A wts[kMaxPaths];
  softmax_weights(logits, P_all, k0, P, temperature, wts);
  const int64_t b = blockIdx.x;
  const int col0 = static_cast<int>(b % col_tiles) * kFwdCols;
  const int64_t rest = b / col_tiles;
  const int row0 = static_cast<int>(rest % row_tiles) * kFwdRows;
  const int64_t plane = rest / row_tiles;
  const int x = col0 + threadIdx.x % kFwdCols;
  if (x >= W) return;
  Taps<A> tx[kMaxPaths];
#pragma unroll
  for (int k = 0; k < kMaxPaths; ++k) {
    tx[k] = (k < P && ps.mode[k] == kBilinear) ? taps(x, ps.w[k], ps.scale_w[k]) : Taps<A>{0, 0, A(1), A(0)};
  }
  scalar_t* out = y + plane * H * W;
  for (int r = threadIdx.x / kFwdCols; r < kFwdRows; r += kThreads / kFwdCols) {
    const int yy = row0 + r;
    if (yy >= H) break;
    A acc = accumulate ? static_cast<A>(out[yy * W + x]) : A(0);
#pragma unroll
    for (int k = 0; k < kMaxPaths; ++k) {
      if (k < P) acc += wts[k] * sample(ps, k, plane, yy, x, tx[k], H, W);
    }
    out[yy * W + x] = static_cast<scalar_t>(acc);
  }
}

// ----------------------------------------------------------------- backward
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kBwdMinBlocks)
path_fusion_bwd_kernel(const scalar_t* __restrict__ g, Paths<scalar_t> ps, int P,
                       const acc_t<scalar_t>* __restrict__ logits, int P_all, int k0, acc_t<scalar_t> temperature,
                       int H, int W, int regions, acc_t<scalar_t>* __restrict__ partial, int64_t blocks,
                       bool input_grads, bool logit_grad) {
  using A = acc_t<scalar_t>;
  __shared__ A wts[kMaxPaths];
  __shared__ A row[kRowBuffer];         // r[x] for the current input row
  __shared__ int col_i0[kRowBuffer];    // column taps of the current column chunk
  __shared__ A col_l1[kRowBuffer];
  __shared__ A vweight[kMaxFootprint];  // A(y, i) for a piece of the current row's footprint
  __shared__ A warp_partial[kMaxPaths][kThreads / 32];
  softmax_weights(logits, P_all, k0, P, temperature, wts);
  const int64_t plane = blockIdx.x / regions;
  const int y0 = static_cast<int>(blockIdx.x % regions) * kRegion;
  const int y1 = min(H, y0 + kRegion);
  const scalar_t* __restrict__ gp = g + plane * H * W;
  A dot[kMaxPaths];
#pragma unroll
  for (int k = 0; k < kMaxPaths; ++k) {
    dot[k] = A(0);
    if (k >= P) continue;
    const int h = ps.h[k], w = ps.w[k], mode = ps.mode[k];
    const scalar_t* __restrict__ xp = ps.x[k] + plane * h * w;
    scalar_t* __restrict__ dxp = input_grads ? ps.dx[k] + plane * h * w : nullptr;
    const int i_lo = static_cast<int>(int64_t(y0) * h / H), i_hi = static_cast<int>(int64_t(y1) * h / H);
    const A wk = wts[k];
    A d = A(0);
    if (mode != kBilinear) {
      const int kh = mode == kPool ? h / H : 1, kw = mode == kPool ? w / W : 1;
      const A inv = A(1) / static_cast<A>(kh * kw);
      const int n = (i_hi - i_lo) * w;
      for (int e = threadIdx.x; e < n; e += kThreads) {
        const int i = i_lo + e / w, j = e % w;
        const A t = mode == kIdentity ? static_cast<A>(gp[i * W + j]) : static_cast<A>(gp[(i / kh) * W + j / kw]) * inv;
        if (dxp) dxp[i * w + j] = static_cast<scalar_t>(wk * t);
        if (logit_grad) d += static_cast<A>(xp[i * w + j]) * t;
      }
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
    dot[k] = d;
  }
  if (!logit_grad) return;
#pragma unroll
  for (int k = 0; k < kMaxPaths; ++k) {
    if (k < P) {
      const A s = warp_sum(dot[k]);
      if ((threadIdx.x & 31) == 0) warp_partial[k][threadIdx.x >> 5] = s;
    }
  }
  __syncthreads();
  if (threadIdx.x < P) {
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

// Launch parameters of input k (a path of h x w to H x W in `mode`).
template <typename scalar_t>
void set_path(Paths<scalar_t>& ps, int k, const scalar_t* x, scalar_t* dx, int h, int w, int mode, int64_t H,
              int64_t W) {
  using A = acc_t<scalar_t>;
  ps.x[k] = x, ps.dx[k] = dx;
  ps.h[k] = h, ps.w[k] = w, ps.mode[k] = mode;
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
    for (int k0 = 0; k0 < P_all; k0 += kMaxPaths) {
      const int count = std::min(kMaxPaths, P_all - k0);
      path_fusion_fwd_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          chunk_paths<scalar_t>(c, nullptr, k0, count), count, l.const_data_ptr<A>(), P_all, k0,
          static_cast<A>(temperature), y.mutable_data_ptr<scalar_t>(), static_cast<int>(H), static_cast<int>(W),
          row_tiles, col_tiles, k0 > 0);
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
  auto dlogits = at::zeros({P_all}, l.options());
  if (blocks == 0 || !(input_grads || logit_grad)) return {dxs, dlogits.to(logits.options())};
  auto partial = at::empty({logit_grad ? P_all : 1, logit_grad ? blocks : 1}, l.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "path_fusion_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    for (int k0 = 0; k0 < P_all; k0 += kMaxPaths) {
      const int count = std::min(kMaxPaths, P_all - k0);
      path_fusion_bwd_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), chunk_paths<scalar_t>(c, input_grads ? &dxs : nullptr, k0, count), count,
          l.const_data_ptr<A>(), P_all, k0, static_cast<A>(temperature), static_cast<int>(c.H),
          static_cast<int>(c.W), regions, partial.mutable_data_ptr<A>(), blocks, input_grads, logit_grad);
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
