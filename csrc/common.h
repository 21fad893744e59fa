// What the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels share on the host side:
// input checks with their error messages, path_fusion's resampling rule, and
// the layout handling and output allocation of the elementwise ops. Both
// backends call these, so they accept and reject the same inputs alike.
//
// The first section is plain C++: csrc/cuda/*.cu include this header also when
// compiled with RSPNET_CUDA_EMULATION (by g++, without torch; see
// tests/helpers/cuda_emulation.py), and their kernels use its enum.
#pragma once
#include <cstdint>

namespace rspnet {

// How path_fusion brings an input map to the output size (see resample_rule).
enum ResampleMode : int { kIdentity = 0, kBilinear = 1, kPool = 2 };

}  // namespace rspnet

#ifndef RSPNET_CUDA_EMULATION
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

// ---------------------------------------------------------------- path_fusion
struct Resample {
  ResampleMode mode;
  int64_t h, w;    // input size
  int64_t kh, kw;  // average-pool factors (kPool), else 1
};

// path_fusion's resampling rule for inputs[p] (h x w) to the output H x W:
// identity when equal, bilinear up when smaller or equal in both dimensions,
// average-pool down when larger by an integer factor in both, else a
// ValueError. The same rule and message as rspnet.ops.reference.resample_mode.
inline Resample resample_rule(const char* op, size_t p, int64_t h, int64_t w, int64_t H, int64_t W) {
  if (h == H && w == W) return {kIdentity, h, w, 1, 1};
  if (h <= H && w <= W) return {kBilinear, h, w, 1, 1};
  TORCH_CHECK_VALUE(h >= H && w >= W && h % H == 0 && w % W == 0, op, ": cannot resample inputs[", p,
                    "] of size ", h, "x", w, " to ", H, "x", W,
                    ": a path must be smaller in both dimensions (bilinear up), equal, or larger by an "
                    "integer factor in both (average-pool down)");
  return {kPool, h, w, h / H, w / W};
}

// path_fusion's inputs as the kernels take them.
struct FusionInputs {
  std::vector<at::Tensor> xs;  // contiguous
  std::vector<Resample> paths;  // how each input is brought to H x W
  int64_t N, C, H, W;
};

// logits: 1-D, one per input; inputs: 4-D with one N, C, dtype and device,
// each resampleable to H x W (> 0).
inline FusionInputs check_fusion_inputs(const char* op, const at::Tensor& logits, at::TensorList inputs,
                                        int64_t H, int64_t W) {
  TORCH_CHECK_VALUE(!inputs.empty(), op, ": inputs must not be empty");
  TORCH_CHECK_VALUE(logits.dim() == 1, op, ": logits must be 1-D, got shape ", logits.sizes());
  TORCH_CHECK_VALUE(static_cast<size_t>(logits.size(0)) == inputs.size(), op, ": ", logits.size(0),
                    " logits for ", inputs.size(), " inputs");
  TORCH_CHECK_VALUE(H > 0 && W > 0, op, ": size must be positive, got ", H, "x", W);
  FusionInputs c;
  const auto& x0 = inputs[0];
  TORCH_CHECK_VALUE(x0.dim() == 4, op, ": inputs must be 4-D [N, C, H, W], got shape ", x0.sizes());
  c.N = x0.size(0), c.C = x0.size(1), c.H = H, c.W = W;
  for (size_t p = 0; p < inputs.size(); ++p) {
    const auto& x = inputs[p];
    TORCH_CHECK_VALUE(x.dim() == 4 && x.size(0) == c.N && x.size(1) == c.C, op, ": inputs[", p, "] has shape ",
                      x.sizes(), " but inputs[0] has ", x0.sizes(), " (N and C must match)");
    TORCH_CHECK_VALUE(x.scalar_type() == x0.scalar_type(), op, ": inputs[", p, "] is ", x.scalar_type(),
                      " but inputs[0] is ", x0.scalar_type());
    TORCH_CHECK_VALUE(x.device() == x0.device(), op, ": inputs[", p, "] is on ", x.device(),
                      " but inputs[0] is on ", x0.device());
    TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0, op, ": inputs[", p, "] has an empty spatial size");
    c.paths.push_back(resample_rule(op, p, x.size(2), x.size(3), H, W));
    c.xs.push_back(x.contiguous());
  }
  return c;
}

// The checks of the path_fusion op (forward).
inline FusionInputs check_path_fusion(const at::Tensor& logits, at::TensorList inputs, c10::SymIntArrayRef size,
                                      double temperature) {
  TORCH_CHECK_VALUE(size.size() == 2, "path_fusion: size must have 2 entries");
  TORCH_CHECK_VALUE(temperature > 0, "path_fusion: temperature must be positive, got ", temperature);
  return check_fusion_inputs("path_fusion", logits, inputs, size[0].expect_int(), size[1].expect_int());
}

// The checks of path_fusion_backward; H x W is grad's size.
inline FusionInputs check_path_fusion_backward(const at::Tensor& grad, const at::Tensor& logits,
                                               at::TensorList inputs, double temperature) {
  TORCH_CHECK_VALUE(temperature > 0, "path_fusion_backward: temperature must be positive, got ", temperature);
  TORCH_CHECK_VALUE(grad.dim() == 4, "path_fusion_backward: grad must be 4-D, got shape ", grad.sizes());
  auto c = check_fusion_inputs("path_fusion_backward", logits, inputs, grad.size(2), grad.size(3));
  TORCH_CHECK_VALUE(grad.size(0) == c.N && grad.size(1) == c.C, "path_fusion_backward: grad has shape ",
                    grad.sizes(), " but inputs have N=", c.N, ", C=", c.C);
  return c;
}

// ------------------------------------------------------------------ mixed_sum
// inputs: one shape, dtype and device; weights: 1-D, one per input.
inline void check_mixed_sum(const char* op, const at::Tensor& weights, at::TensorList inputs) {
  check_same_inputs(op, inputs);
  check_weights(op, weights, inputs.size());
}

inline void check_mixed_sum_backward(const at::Tensor& grad, const at::Tensor& weights, at::TensorList inputs) {
  check_mixed_sum("mixed_sum_backward", weights, inputs);
  TORCH_CHECK(grad.sizes() == inputs[0].sizes(), "mixed_sum_backward: grad has shape ", grad.sizes(),
              " but inputs have ", inputs[0].sizes());
}

// What a mixed_sum forward kernel walks as flat arrays: the inputs in one
// dense layout and the output (allocated) in that layout.
struct MixedSumForward {
  std::vector<at::Tensor> xs;
  at::Tensor y;
};

inline MixedSumForward mixed_sum_forward_tensors(at::TensorList inputs) {
  MixedSumForward t;
  t.xs = common_dense_layout(inputs);
  t.y = at::empty_like(t.xs[0]);
  return t;
}

// ... and a backward kernel: the inputs, grad in their layout and dtype, and
// the input gradients (allocated when input_grads, else none).
struct MixedSumBackward {
  std::vector<at::Tensor> xs;
  at::Tensor g;
  std::vector<at::Tensor> dxs;
};

inline MixedSumBackward mixed_sum_backward_tensors(const at::Tensor& grad, at::TensorList inputs,
                                                   bool input_grads) {
  MixedSumBackward t;
  t.xs = common_dense_layout(inputs);
  t.g = match_layout(grad.to(t.xs[0].scalar_type()), t.xs[0]);
  if (input_grads) {
    for (const auto& x : t.xs) t.dxs.push_back(at::empty_like(x));
  }
  return t;
}

}  // namespace rspnet
#endif  // RSPNET_CUDA_EMULATION
