// Helpers shared by the CPU and CUDA kernels.
#pragma once
#include <ATen/ATen.h>
#include <vector>

namespace rspnet {

// Fused elementwise kernels walk K tensors as one flat array each, so they
// need one shared dense layout. Inputs that already share one (contiguous,
// channels_last, ...) are used as they are; anything else is made contiguous.
inline std::vector<at::Tensor> common_dense_layout(at::TensorList xs) {
  bool same = xs[0].is_non_overlapping_and_dense();
  for (size_t k = 1; same && k < xs.size(); ++k) {
    same = xs[k].strides() == xs[0].strides() && xs[k].is_non_overlapping_and_dense();
  }
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (const auto& x : xs) out.push_back(same ? x : x.contiguous());
  return out;
}

// `t` in the same layout as `like` (a copy only when the strides differ).
inline at::Tensor match_layout(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides() && t.is_non_overlapping_and_dense()) return t;
  auto out = at::empty_like(like);
  out.copy_(t);
  return out;
}

inline void check_same_inputs(const char* op, at::TensorList xs) {
  TORCH_CHECK(!xs.empty(), op, ": inputs must not be empty");
  for (size_t k = 1; k < xs.size(); ++k) {
    TORCH_CHECK(xs[k].sizes() == xs[0].sizes(), op, ": inputs[", k, "] has shape ", xs[k].sizes(),
                " but inputs[0] has ", xs[0].sizes());
    TORCH_CHECK(xs[k].scalar_type() == xs[0].scalar_type(), op, ": inputs[", k, "] is ",
                xs[k].scalar_type(), " but inputs[0] is ", xs[0].scalar_type());
    TORCH_CHECK(xs[k].device() == xs[0].device(), op, ": inputs[", k, "] is on ", xs[k].device(),
                " but inputs[0] is on ", xs[0].device());
  }
}

inline void check_weights(const char* op, const at::Tensor& w, size_t k) {
  TORCH_CHECK(w.dim() == 1, op, ": weights must be 1-D, got shape ", w.sizes());
  TORCH_CHECK(static_cast<size_t>(w.size(0)) == k, op, ": ", w.size(0), " weights for ", k, " inputs");
}

}  // namespace rspnet
