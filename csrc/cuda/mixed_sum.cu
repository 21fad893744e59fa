// mixed_sum on CUDA. Memory bound, so the kernels move 16 bytes per load and
// read every input exactly once per pass:
//   forward : y = sum_k w_k x_k                       (reads K, writes 1)
//   backward: dx_k = w_k g, partial dw_k per tile     (reads 1 + K, writes K)
// dw is reduced per tile into a [K, tiles] buffer (every entry written, so
// never zero-filled) and summed in a fixed order by a one-block-per-k
// reduction, never with atomics: results are deterministic.
//
// What keeps them at the bandwidth ceiling (checked statically by
// tests/ops/test_cuda_static.py on the sm_90 build):
//   * the input pointers travel in the kernel's parameter space (PtrPack) and
//     are indexed only by compile-time constants: the k loops are unrolled to
//     kMaxPtrs with a uniform `k < K` guard, so no pointer array is copied to a
//     local-memory stack frame;
//   * every load of a tile is issued before any store of it (the backward
//     reads x_k for all k, then writes dx_k for all k), so the loads are in
//     flight together instead of each waiting behind a possibly aliasing store;
//   * blocks whose tile lies wholly inside the array take a path without
//     bounds checks (FULL); only the last block checks.
//
// Owns the CUDA kernels of rspnet::mixed_sum and mixed_sum_backward; input
// checks, layouts and output allocation are shared with the CPU (../common.h).
// The kernels (everything above the host section) use no ATen: a CPU test
// (tests/ops/test_mixed_sum.py) compiles them with RSPNET_CUDA_EMULATION.
#ifndef RSPNET_CUDA_EMULATION
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common.h"
#endif
#include "cuda_utils.cuh"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace rspnet {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // vectors per thread per tile

// ------------------------------------------------------------------ forward
template <typename scalar_t, int VEC, bool FULL>
__device__ __forceinline__ void fwd_tile(const PtrPack<const scalar_t>& xs, const acc_t<scalar_t>* __restrict__ w,
                                         int K, int k0, scalar_t* __restrict__ y, int64_t nvec, bool accumulate,
                                         int64_t first) {
  using A = acc_t<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  A acc[kItems][VEC];
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int64_t i = first + it * kThreads;
    V v;
    const bool live = accumulate && (FULL || i < nvec);
    if (live) v = reinterpret_cast<const V*>(y)[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[it][j] = live ? static_cast<A>(v.v[j]) : A(0);
  }
#pragma unroll
  for (int k = 0; k < kMaxPtrs; ++k) {
    if (k < K) {
      const A wk = w[k0 + k];
      const V* __restrict__ x = reinterpret_cast<const V*>(xs.p[k]);
      V v[kItems];
#pragma unroll
      for (int it = 0; it < kItems; ++it) {
        const int64_t i = first + it * kThreads;
        if (FULL || i < nvec) v[it] = x[i];
      }
#pragma unroll
      for (int it = 0; it < kItems; ++it) {
        if (FULL || first + it * kThreads < nvec) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) acc[it][j] += wk * static_cast<A>(v[it].v[j]);
        }
      }
    }
  }
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int64_t i = first + it * kThreads;
    if (FULL || i < nvec) {
      V v;
#pragma unroll
      for (int j = 0; j < VEC; ++j) v.v[j] = static_cast<scalar_t>(acc[it][j]);
      reinterpret_cast<V*>(y)[i] = v;
    }
  }
}

// y (+)= sum_{k < K} w[k0 + k] * xs[k], over nvec vectors of VEC elements.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
mixed_sum_fwd_kernel(PtrPack<const scalar_t> xs, const acc_t<scalar_t>* __restrict__ w, int K, int k0,
                     scalar_t* __restrict__ y, int64_t nvec, bool accumulate) {
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kThreads * kItems;
  const int64_t first = tile + threadIdx.x;
  if (tile + kThreads * kItems <= nvec) {
    fwd_tile<scalar_t, VEC, true>(xs, w, K, k0, y, nvec, accumulate, first);
  } else {
    fwd_tile<scalar_t, VEC, false>(xs, w, K, k0, y, nvec, accumulate, first);
  }
}

// ----------------------------------------------------------------- backward
template <typename scalar_t, int VEC, bool FULL>
__device__ __forceinline__ void bwd_tile(const scalar_t* __restrict__ g, const PtrPack<const scalar_t>& xs,
                                         const PtrPack<scalar_t>& dxs, const acc_t<scalar_t>* __restrict__ w, int K,
                                         int k0, int64_t nvec, bool input_grads, bool weight_grad, int64_t first,
                                         acc_t<scalar_t>* dot) {
  using A = acc_t<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  A gv[kItems][VEC];
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int64_t i = first + it * kThreads;
    V v;
    const bool live = FULL || i < nvec;
    if (live) v = reinterpret_cast<const V*>(g)[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) gv[it][j] = live ? static_cast<A>(v.v[j]) : A(0);
  }
  // Loads first: <g, x_k> for every k ...
  if (weight_grad) {
#pragma unroll
    for (int k = 0; k < kMaxPtrs; ++k) {
      if (k < K) {
        const V* __restrict__ x = reinterpret_cast<const V*>(xs.p[k]);
        V v[kItems];
#pragma unroll
        for (int it = 0; it < kItems; ++it) {
          const int64_t i = first + it * kThreads;
          if (FULL || i < nvec) v[it] = x[i];
        }
        A s = A(0);
#pragma unroll
        for (int it = 0; it < kItems; ++it) {
          if (FULL || first + it * kThreads < nvec) {
#pragma unroll
            for (int j = 0; j < VEC; ++j) s += gv[it][j] * static_cast<A>(v[it].v[j]);
          }
        }
        dot[k] = s;
      }
    }
  }
  // ... then the stores dx_k = w_k g.
  if (input_grads) {
#pragma unroll
    for (int k = 0; k < kMaxPtrs; ++k) {
      if (k < K) {
        const A wk = w[k0 + k];
        V* __restrict__ dx = reinterpret_cast<V*>(dxs.p[k]);
#pragma unroll
        for (int it = 0; it < kItems; ++it) {
          const int64_t i = first + it * kThreads;
          if (FULL || i < nvec) {
            V d;
#pragma unroll
            for (int j = 0; j < VEC; ++j) d.v[j] = static_cast<scalar_t>(wk * gv[it][j]);
            dx[i] = d;
          }
        }
      }
    }
  }
}

// dx_k = w[k0 + k] g for k < K (input_grads); partial[k0 + k, column] =
// <g, x_k> over this block's tile (weight_grad), column = column0 + block.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
mixed_sum_bwd_kernel(const scalar_t* __restrict__ g, PtrPack<const scalar_t> xs, PtrPack<scalar_t> dxs,
                     const acc_t<scalar_t>* __restrict__ w, int K, int k0, int64_t nvec,
                     acc_t<scalar_t>* __restrict__ partial, int64_t partial_stride, int64_t column0,
                     bool input_grads, bool weight_grad) {
  using A = acc_t<scalar_t>;
  __shared__ A warp_partial[kMaxPtrs][kThreads / 32];
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kThreads * kItems;
  const int64_t first = tile + threadIdx.x;
  A dot[kMaxPtrs];
#pragma unroll
  for (int k = 0; k < kMaxPtrs; ++k) dot[k] = A(0);
  if (tile + kThreads * kItems <= nvec) {
    bwd_tile<scalar_t, VEC, true>(g, xs, dxs, w, K, k0, nvec, input_grads, weight_grad, first, dot);
  } else {
    bwd_tile<scalar_t, VEC, false>(g, xs, dxs, w, K, k0, nvec, input_grads, weight_grad, first, dot);
  }
  if (!weight_grad) return;
#pragma unroll
  for (int k = 0; k < kMaxPtrs; ++k) {
    if (k < K) {
      const A s = warp_sum(dot[k]);
      if ((threadIdx.x & 31) == 0) warp_partial[k][threadIdx.x >> 5] = s;
    }
  }
  __syncthreads();
  // One thread per k sums the warps' partials in a fixed order.
  if (threadIdx.x < static_cast<unsigned>(K)) {
    A s = A(0);
#pragma unroll
    for (int wi = 0; wi < kThreads / 32; ++wi) s += warp_partial[threadIdx.x][wi];
    partial[(k0 + threadIdx.x) * partial_stride + column0 + blockIdx.x] = s;
  }
}

// dw[k] = sum_c partial[k, c], one block per k, in a fixed order.
template <typename A>
__global__ void __launch_bounds__(kThreads)
mixed_sum_dw_kernel(const A* __restrict__ partial, int64_t columns, A* __restrict__ dw) {
  __shared__ A red[kThreads];
  const A* row = partial + static_cast<int64_t>(blockIdx.x) * columns;
  A s = A(0);
  for (int64_t c = threadIdx.x; c < columns; c += kThreads) s += row[c];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < static_cast<unsigned>(half)) red[threadIdx.x] += red[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) dw[blockIdx.x] = red[0];
}

// How a flat array of n elements is split: a body of nvec vectors of `vec`
// elements (vec = 16 bytes' worth when every pointer is 16-byte aligned, else
// 1) in `tiles` blocks, and a tail of fewer than vec elements in one block.
struct Launch {
  int vec;
  int64_t nvec, tail, tiles, tail_tiles;
};

template <typename scalar_t>
Launch plan(int64_t n, bool aligned) {
  constexpr int vmax = 16 / sizeof(scalar_t);
  Launch l;
  l.vec = aligned ? vmax : 1;
  l.nvec = n / l.vec;
  l.tail = n - l.nvec * l.vec;
  const int64_t per_tile = int64_t(kThreads) * kItems;
  l.tiles = (l.nvec + per_tile - 1) / per_tile;
  l.tail_tiles = l.tail > 0 ? 1 : 0;
  return l;
}

#ifndef RSPNET_CUDA_EMULATION
// ------------------------------------------------------------------ host
bool all_aligned(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b = {}) {
  for (const auto& t : a) if (!aligned16(t.const_data_ptr())) return false;
  for (const auto& t : b) if (!aligned16(t.const_data_ptr())) return false;
  return true;
}

template <typename scalar_t>
void launch_fwd(const std::vector<at::Tensor>& xs, const at::Tensor& w, at::Tensor& y) {
  using A = acc_t<scalar_t>;
  constexpr int VMAX = 16 / sizeof(scalar_t);
  const Launch l = plan<scalar_t>(y.numel(), all_aligned(xs, {y}));
  auto stream = at::cuda::getCurrentCUDAStream();
  const int K = static_cast<int>(xs.size());
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const A* wp = w.const_data_ptr<A>();
  for (int k0 = 0; k0 < K; k0 += kMaxPtrs) {
    const int kc = std::min(kMaxPtrs, K - k0);
    PtrPack<const scalar_t> body{}, tail{};
    for (int k = 0; k < kc; ++k) {
      body.p[k] = xs[k0 + k].const_data_ptr<scalar_t>();
      tail.p[k] = body.p[k] + l.nvec * l.vec;
    }
    if (l.tiles > 0) {
      if (l.vec == VMAX) {
        mixed_sum_fwd_kernel<scalar_t, VMAX><<<l.tiles, kThreads, 0, stream>>>(body, wp, kc, k0, yp, l.nvec, k0 > 0);
      } else {
        mixed_sum_fwd_kernel<scalar_t, 1><<<l.tiles, kThreads, 0, stream>>>(body, wp, kc, k0, yp, l.nvec, k0 > 0);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (l.tail > 0) {
      mixed_sum_fwd_kernel<scalar_t, 1><<<1, kThreads, 0, stream>>>(tail, wp, kc, k0, yp + l.nvec * l.vec, l.tail,
                                                                     k0 > 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
}

// Returns dw in the accumulation type (an empty tensor when !weight_grad).
template <typename scalar_t>
at::Tensor launch_bwd(const at::Tensor& g, const std::vector<at::Tensor>& xs, std::vector<at::Tensor>& dxs,
                      const at::Tensor& w, bool input_grads, bool weight_grad) {
  using A = acc_t<scalar_t>;
  constexpr int VMAX = 16 / sizeof(scalar_t);
  std::vector<at::Tensor> others = dxs;
  others.push_back(g);
  const Launch l = plan<scalar_t>(g.numel(), all_aligned(xs, others));
  const int K = static_cast<int>(xs.size());
  const int64_t columns = l.tiles + l.tail_tiles;
  // Every entry is written by exactly one block: no zero-fill needed.
  auto partial = at::empty({weight_grad ? K : 0, columns}, g.options().dtype(w.scalar_type()));
  auto stream = at::cuda::getCurrentCUDAStream();
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  const A* wp = w.const_data_ptr<A>();
  A* pp = weight_grad ? partial.mutable_data_ptr<A>() : nullptr;
  for (int k0 = 0; k0 < K; k0 += kMaxPtrs) {
    const int kc = std::min(kMaxPtrs, K - k0);
    PtrPack<const scalar_t> xb{}, xt{};
    PtrPack<scalar_t> db{}, dt{};
    for (int k = 0; k < kc; ++k) {
      xb.p[k] = xs[k0 + k].const_data_ptr<scalar_t>();
      xt.p[k] = xb.p[k] + l.nvec * l.vec;
      if (input_grads) {
        db.p[k] = dxs[k0 + k].mutable_data_ptr<scalar_t>();
        dt.p[k] = db.p[k] + l.nvec * l.vec;
      }
    }
    if (l.tiles > 0) {
      if (l.vec == VMAX) {
        mixed_sum_bwd_kernel<scalar_t, VMAX><<<l.tiles, kThreads, 0, stream>>>(
            gp, xb, db, wp, kc, k0, l.nvec, pp, columns, 0, input_grads, weight_grad);
      } else {
        mixed_sum_bwd_kernel<scalar_t, 1><<<l.tiles, kThreads, 0, stream>>>(
            gp, xb, db, wp, kc, k0, l.nvec, pp, columns, 0, input_grads, weight_grad);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (l.tail > 0) {
      mixed_sum_bwd_kernel<scalar_t, 1><<<1, kThreads, 0, stream>>>(
          gp + l.nvec * l.vec, xt, dt, wp, kc, k0, l.tail, pp, columns, l.tiles, input_grads, weight_grad);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  if (!weight_grad) return at::zeros_like(w);
  auto dw = at::empty_like(w);
  mixed_sum_dw_kernel<A><<<K, kThreads, 0, stream>>>(pp, columns, dw.mutable_data_ptr<A>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dw;
}

at::Tensor acc_weights(const at::Tensor& weights, const at::Tensor& like) {
  const auto acc = like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return weights.detach().to(like.device(), acc).contiguous();
}

at::Tensor mixed_sum_cuda(const at::Tensor& weights, at::TensorList inputs) {
  check_mixed_sum("mixed_sum", weights, inputs);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  auto t = mixed_sum_forward_tensors(inputs);
  const auto& xs = t.xs;
  auto& y = t.y;
  if (y.numel() == 0) return y;
  auto w = acc_weights(weights, y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_sum_cuda",
                                  [&] { launch_fwd<scalar_t>(xs, w, y); });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cuda(const at::Tensor& grad,
                                                                         const at::Tensor& weights,
                                                                         at::TensorList inputs, bool input_grads,
                                                                         bool weight_grad) {
  check_mixed_sum_backward(grad, weights, inputs);
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  auto t = mixed_sum_backward_tensors(grad, inputs, input_grads);
  const auto& xs = t.xs;
  const auto& g = t.g;
  auto& dxs = t.dxs;
  auto w = acc_weights(weights, g);
  at::Tensor dw;
  if (g.numel() == 0 || !(input_grads || weight_grad)) {
    dw = at::zeros_like(w);
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mixed_sum_backward_cuda",
                                    [&] { dw = launch_bwd<scalar_t>(g, xs, dxs, w, input_grads, weight_grad); });
  }
  return {dxs, dw.to(weights.options())};
}
#endif  // RSPNET_CUDA_EMULATION

}  // namespace

#ifndef RSPNET_CUDA_EMULATION
TORCH_LIBRARY_IMPL(rspnet, CUDA, m) {
  m.impl("mixed_sum", &mixed_sum_cuda);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cuda);
}
#endif

}  // namespace rspnet
