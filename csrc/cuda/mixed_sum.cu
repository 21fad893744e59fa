// mixed_sum on CUDA. Memory bound, so the kernels move 16 bytes per load and
// read every input exactly once per pass:
//   forward : y = sum_k w_k x_k                       (reads K, writes 1)
//   backward: dx_k = w_k g, partial dw_k per tile     (reads 1 + K, writes K)
// dw is reduced per tile into a [K, tiles] buffer and summed by a second
// (tiny) reduction, never with atomics: results are deterministic.
//
// Owns the CUDA kernels of rspnet::mixed_sum and mixed_sum_backward; input
// checks, layouts and output allocation are shared with the CPU (../common.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common.h"
#include "cuda_utils.cuh"

namespace rspnet {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // vectors per thread per tile

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
mixed_sum_fwd_kernel(PtrPack<const scalar_t> xs, const acc_t<scalar_t>* __restrict__ w, int K, int k0,
                     scalar_t* __restrict__ y, int64_t nvec, bool accumulate) {
  using A = acc_t<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kThreads * kItems;
  A acc[kItems][VEC];
#pragma unroll
  for (int it = 0; it < kItems; ++it)
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[it][j] = A(0);
  if (accumulate) {
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int64_t i = tile + it * kThreads + threadIdx.x;
      if (i < nvec) {
        V v = reinterpret_cast<const V*>(y)[i];
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[it][j] = static_cast<A>(v.v[j]);
      }
    }
  }
  for (int k = 0; k < K; ++k) {
    const A wk = w[k0 + k];
    const V* x = reinterpret_cast<const V*>(xs.p[k]);
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int64_t i = tile + it * kThreads + threadIdx.x;
      if (i < nvec) {
        V v = x[i];
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[it][j] += wk * static_cast<A>(v.v[j]);
      }
    }
  }
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int64_t i = tile + it * kThreads + threadIdx.x;
    if (i < nvec) {
      V v;
#pragma unroll
      for (int j = 0; j < VEC; ++j) v.v[j] = static_cast<scalar_t>(acc[it][j]);
      reinterpret_cast<V*>(y)[i] = v;
    }
  }
}

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads)
mixed_sum_bwd_kernel(const scalar_t* __restrict__ g, PtrPack<const scalar_t> xs, PtrPack<scalar_t> dxs,
                     const acc_t<scalar_t>* __restrict__ w, int K, int k0, int64_t nvec,
                     acc_t<scalar_t>* __restrict__ partial, int64_t partial_stride, int64_t tile_offset,
                     bool input_grads, bool weight_grad) {
  using A = acc_t<scalar_t>;
  using V = Vec<scalar_t, VEC>;
  __shared__ A warp_partial[kMaxPtrs][kThreads / 32];
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kThreads * kItems;
  A gv[kItems][VEC];
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int64_t i = tile + it * kThreads + threadIdx.x;
    V v;
    if (i < nvec) v = reinterpret_cast<const V*>(g)[i];
#pragma unroll
    for (int j = 0; j < VEC; ++j) gv[it][j] = i < nvec ? static_cast<A>(v.v[j]) : A(0);
  }
  for (int k = 0; k < K; ++k) {
    const A wk = w[k0 + k];
    A s = A(0);
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const int64_t i = tile + it * kThreads + threadIdx.x;
      if (i < nvec) {
        if (weight_grad) {
          V x = reinterpret_cast<const V*>(xs.p[k])[i];
#pragma unroll
          for (int j = 0; j < VEC; ++j) s += gv[it][j] * static_cast<A>(x.v[j]);
        }
        if (input_grads) {
          V d;
#pragma unroll
          for (int j = 0; j < VEC; ++j) d.v[j] = static_cast<scalar_t>(wk * gv[it][j]);
          reinterpret_cast<V*>(dxs.p[k])[i] = d;
        }
      }
    }
    if (weight_grad) {
      s = warp_sum(s);
      if ((threadIdx.x & 31) == 0) warp_partial[k][threadIdx.x >> 5] = s;
    }
  }
  if (!weight_grad) return;
  __syncthreads();
  // One thread per k sums the warps' partials in a fixed order.
  if (threadIdx.x < K) {
    A s = A(0);
#pragma unroll
    for (int wi = 0; wi < kThreads / 32; ++wi) s += warp_partial[threadIdx.x][wi];
    partial[(k0 + threadIdx.x) * partial_stride + tile_offset + blockIdx.x] = s;
  }
}

struct Launch {
  int vec;         // elements per vector (1 when a pointer or size is unaligned)
  int64_t nvec;    // vectors in the body
  int64_t tail;    // leftover elements handled by a scalar launch
  int64_t tiles;   // blocks for the body
  int64_t tail_tiles;
};

template <typename scalar_t>
Launch plan(int64_t n, const std::vector<const void*>& ptrs) {
  constexpr int vmax = 16 / sizeof(scalar_t);
  bool ok = true;
  for (auto p : ptrs) ok = ok && aligned16(p);
  Launch l;
  l.vec = ok ? vmax : 1;
  l.nvec = n / l.vec;
  l.tail = n - l.nvec * l.vec;
  const int64_t per_tile = int64_t(kThreads) * kItems;
  l.tiles = (l.nvec + per_tile - 1) / per_tile;
  l.tail_tiles = l.tail > 0 ? 1 : 0;
  return l;
}

template <typename scalar_t>
void launch_fwd(const std::vector<at::Tensor>& xs, const at::Tensor& w, at::Tensor& y) {
  using A = acc_t<scalar_t>;
  constexpr int VMAX = 16 / sizeof(scalar_t);
  const int64_t n = y.numel();
  std::vector<const void*> ptrs{y.const_data_ptr()};
  for (const auto& x : xs) ptrs.push_back(x.const_data_ptr());
  const Launch l = plan<scalar_t>(n, ptrs);
  auto stream = at::cuda::getCurrentCUDAStream();
  const int K = static_cast<int>(xs.size());
  for (int k0 = 0; k0 < K; k0 += kMaxPtrs) {
    const int kc = std::min(kMaxPtrs, K - k0);
    PtrPack<const scalar_t> body, tail;
    for (int k = 0; k < kc; ++k) {
      body.p[k] = xs[k0 + k].const_data_ptr<scalar_t>();
      tail.p[k] = body.p[k] + l.nvec * l.vec;
    }
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (l.tiles > 0) {
      if (l.vec == VMAX) {
        mixed_sum_fwd_kernel<scalar_t, VMAX><<<l.tiles, kThreads, 0, stream>>>(
            body, w.const_data_ptr<A>(), kc, k0, yp, l.nvec, k0 > 0);
      } else {
        mixed_sum_fwd_kernel<scalar_t, 1><<<l.tiles, kThreads, 0, stream>>>(
            body, w.const_data_ptr<A>(), kc, k0, yp, l.nvec, k0 > 0);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (l.tail > 0) {
      mixed_sum_fwd_kernel<scalar_t, 1><<<1, kThreads, 0, stream>>>(
          tail, w.const_data_ptr<A>(), kc, k0, yp + l.nvec * l.vec, l.tail, k0 > 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
}

template <typename scalar_t>
at::Tensor launch_bwd(const at::Tensor& g, const std::vector<at::Tensor>& xs, std::vector<at::Tensor>& dxs,
                      const at::Tensor& w, bool input_grads, bool weight_grad) {
  using A = acc_t<scalar_t>;
  constexpr int VMAX = 16 / sizeof(scalar_t);
  const int64_t n = g.numel();
  std::vector<const void*> ptrs{g.const_data_ptr()};
  for (const auto& x : xs) ptrs.push_back(x.const_data_ptr());
  for (const auto& d : dxs) ptrs.push_back(d.const_data_ptr());
  const Launch l = plan<scalar_t>(n, ptrs);
  const int K = static_cast<int>(xs.size());
  const int64_t stride = l.tiles + l.tail_tiles;
  auto partial = at::zeros({K, std::max<int64_t>(stride, 1)}, g.options().dtype(w.scalar_type()));
  auto stream = at::cuda::getCurrentCUDAStream();
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
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    A* pp = partial.mutable_data_ptr<A>();
    if (l.tiles > 0) {
      if (l.vec == VMAX) {
        mixed_sum_bwd_kernel<scalar_t, VMAX><<<l.tiles, kThreads, 0, stream>>>(
            gp, xb, db, w.const_data_ptr<A>(), kc, k0, l.nvec, pp, stride, 0, input_grads, weight_grad);
      } else {
        mixed_sum_bwd_kernel<scalar_t, 1><<<l.tiles, kThreads, 0, stream>>>(
            gp, xb, db, w.const_data_ptr<A>(), kc, k0, l.nvec, pp, stride, 0, input_grads, weight_grad);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (l.tail > 0) {
      mixed_sum_bwd_kernel<scalar_t, 1><<<1, kThreads, 0, stream>>>(
          gp + l.nvec * l.vec, xt, dt, w.const_data_ptr<A>(), kc, k0, l.tail, pp, stride, l.tiles, input_grads,
          weight_grad);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  return partial.sum(1);
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
  if (g.numel() == 0) {
    dw = at::zeros_like(w);
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mixed_sum_backward_cuda",
                                    [&] { dw = launch_bwd<scalar_t>(g, xs, dxs, w, input_grads, weight_grad); });
  }
  return {dxs, dw.to(weights.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rspnet, CUDA, m) {
  m.impl("mixed_sum", &mixed_sum_cuda);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cuda);
}

}  // namespace rspnet
