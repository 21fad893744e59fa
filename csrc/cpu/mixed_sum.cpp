// mixed_sum on CPU: y = sum_k w_k x_k, and its backward in one pass over the
// data. dw is reduced over fixed-size chunks in a fixed order, so the result
// does not depend on the number of threads.
//
// Owns the CPU kernels of rspnet::mixed_sum and mixed_sum_backward; input
// checks, layouts and output allocation are shared with CUDA (../common.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common.h"

namespace rspnet {
namespace {

constexpr int64_t kBlock = 1024;    // elements accumulated in L1 at a time
constexpr int64_t kChunk = 1 << 15;  // elements per dw partial sum (fixed: determinism)
constexpr int64_t kLanes = 16;       // independent accumulators: lets the compiler vectorise
constexpr int64_t kFlush = 256;      // lane sums are flushed to double every kFlush elements

// Accumulates in the data type, like eager PyTorch (so fp32 rounds as it
// does), with plain loops the compiler vectorises.
template <typename scalar_t>
void forward_impl(const std::vector<scalar_t>& w, const std::vector<const scalar_t*>& xs, scalar_t* y,
                  int64_t n) {
  const size_t K = xs.size();
  at::parallel_for(0, (n + kBlock - 1) / kBlock, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * kBlock, len = std::min(kBlock, n - start);
      scalar_t* __restrict__ yb = y + start;
      const scalar_t* __restrict__ x0 = xs[0] + start;
      const scalar_t w0 = w[0];
      for (int64_t i = 0; i < len; ++i) yb[i] = w0 * x0[i];
      for (size_t k = 1; k < K; ++k) {
        const scalar_t* __restrict__ xk = xs[k] + start;
        const scalar_t wk = w[k];
        for (int64_t i = 0; i < len; ++i) yb[i] += wk * xk[i];
      }
    }
  });
}

// sum(g * x) over `len` elements, and d = w * g when d is given. Lane sums of
// at most kFlush / kLanes products each are added into a double, so the
// result is as accurate as a pairwise sum.
template <typename scalar_t>
double dot_and_scale(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, scalar_t* __restrict__ d,
                     scalar_t w, int64_t len, bool want_dot) {
  double total = 0.0;
  int64_t i = 0;
  for (; i + kFlush <= len; i += kFlush) {
    if (d) {
      for (int64_t j = 0; j < kFlush; ++j) d[i + j] = w * g[i + j];
    }
    if (want_dot) {
      scalar_t lanes[kLanes] = {};
      for (int64_t j = 0; j < kFlush; j += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) lanes[l] += g[i + j + l] * x[i + j + l];
      for (int64_t l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
    }
  }
  for (; i < len; ++i) {
    if (d) d[i] = w * g[i];
    if (want_dot) total += static_cast<double>(g[i]) * static_cast<double>(x[i]);
  }
  return total;
}

template <typename scalar_t>
void backward_impl(const scalar_t* g, const std::vector<scalar_t>& w, const std::vector<const scalar_t*>& xs,
                   const std::vector<scalar_t*>& dxs, double* partial, int64_t n, bool weight_grad) {
  const int64_t K = static_cast<int64_t>(xs.size());
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t start = c * kChunk, len = std::min(kChunk, n - start);
      for (int64_t k = 0; k < K; ++k) {
        scalar_t* d = dxs.empty() ? nullptr : dxs[k] + start;
        partial[c * K + k] = dot_and_scale<scalar_t>(g + start, xs[k] + start, d, w[k], len, weight_grad);
      }
    }
  });
}

template <typename scalar_t>
std::vector<scalar_t> weights_as(const at::Tensor& weights) {
  const at::Tensor w = weights.detach().to(at::kCPU, c10::CppTypeToScalarType<scalar_t>::value).contiguous();
  return std::vector<scalar_t>(w.data_ptr<scalar_t>(), w.data_ptr<scalar_t>() + w.numel());
}

at::Tensor mixed_sum_cpu(const at::Tensor& weights, at::TensorList inputs) {
  check_mixed_sum("mixed_sum", weights, inputs);
  auto t = mixed_sum_forward_tensors(inputs);
  const auto& xs = t.xs;
  auto& y = t.y;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "mixed_sum_cpu", [&] {
    const auto w = weights_as<scalar_t>(weights);
    std::vector<const scalar_t*> ptrs;
    for (const auto& x : xs) ptrs.push_back(x.const_data_ptr<scalar_t>());
    forward_impl<scalar_t>(w, ptrs, y.mutable_data_ptr<scalar_t>(), y.numel());
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cpu(const at::Tensor& grad,
                                                                        const at::Tensor& weights,
                                                                        at::TensorList inputs, bool input_grads,
                                                                        bool weight_grad) {
  check_mixed_sum_backward(grad, weights, inputs);
  auto t = mixed_sum_backward_tensors(grad, inputs, input_grads);
  const auto& xs = t.xs;
  const auto& g = t.g;
  auto& dxs = t.dxs;
  const int64_t K = static_cast<int64_t>(xs.size()), n = g.numel();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  auto partial = at::zeros({std::max<int64_t>(chunks, 1), K}, g.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "mixed_sum_backward_cpu", [&] {
    const auto w = weights_as<scalar_t>(weights);
    std::vector<const scalar_t*> xp;
    std::vector<scalar_t*> dp;
    for (const auto& x : xs) xp.push_back(x.const_data_ptr<scalar_t>());
    for (auto& d : dxs) dp.push_back(d.mutable_data_ptr<scalar_t>());
    backward_impl<scalar_t>(g.const_data_ptr<scalar_t>(), w, xp, dp, partial.mutable_data_ptr<double>(), n,
                            weight_grad);
  });
  // Chunks are summed in index order: deterministic for any thread count.
  auto dw64 = at::zeros({K}, partial.options());
  const double* pp = partial.const_data_ptr<double>();
  double* out = dw64.mutable_data_ptr<double>();
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t k = 0; k < K; ++k) out[k] += pp[c * K + k];
  }
  return {dxs, dw64.to(weights.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rspnet, CPU, m) {
  m.impl("mixed_sum", &mixed_sum_cpu);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cpu);
}

}  // namespace rspnet
