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

inline void check_groups(const char* op, int64_t total, int64_t groups) {
  TORCH_CHECK_VALUE(groups >= 1, op, ": groups must be positive, got ", groups);
  TORCH_CHECK_VALUE(total % groups == 0, op, ": ", total, " channels in all are not divisible by groups=", groups);
}

// channel_merge's inputs: 4-D, one N/H/W, dtype and device; returns the total
// channel count (divisible by groups).
inline int64_t check_merge_inputs(at::TensorList inputs, int64_t groups) {
  TORCH_CHECK_VALUE(!inputs.empty(), "channel_merge: inputs must not be empty");
  const auto& x0 = inputs[0];
  int64_t C = 0;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const auto& x = inputs[k];
    TORCH_CHECK_VALUE(x.dim() == 4, "channel_merge: inputs[", k, "] must be 4-D [N, C, H, W], got shape ",
                      x.sizes());
    TORCH_CHECK_VALUE(x.size(0) == x0.size(0) && x.size(2) == x0.size(2) && x.size(3) == x0.size(3),
                      "channel_merge: inputs[", k, "] has shape ", x.sizes(), " but inputs[0] has ", x0.sizes(),
                      " (N, H and W must match)");
    TORCH_CHECK_VALUE(x.scalar_type() == x0.scalar_type(), "channel_merge: inputs[", k, "] is ", x.scalar_type(),
                      " but inputs[0] is ", x0.scalar_type());
    TORCH_CHECK_VALUE(x.device() == x0.device(), "channel_merge: inputs[", k, "] is on ", x.device(),
                      " but inputs[0] is on ", x0.device());
    C += x.size(1);
  }
  check_groups("channel_merge", C, groups);
  return C;
}

}  // namespace rspnet
