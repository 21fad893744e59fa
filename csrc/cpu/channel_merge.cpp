// channel_merge on CPU: channel_shuffle(cat(inputs, 1), groups) as one copy.
//
// With C channels in all and cpg = C / groups, concatenated channel c lands in
// output channel (c % cpg) * groups + c / cpg. Every (n, c) plane is one
// contiguous block of H*W elements in NCHW, so both directions are a list of
// plane copies: the forward scatters input planes into the output, the
// backward gathers them back from the output gradient. Each element is read
// and written once; no concatenated or shuffled intermediate exists.
//
// Owns the CPU kernels of rspnet::channel_merge and channel_merge_backward;
// the forward's input check is shared with CUDA (../common.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../common.h"

namespace rspnet {
namespace {

int64_t shuffled(int64_t c, int64_t cpg, int64_t groups) { return (c % cpg) * groups + c / cpg; }

// Copies plane (n, c_k) of input k from/to plane (n, shuffled(c_off + c_k)) of
// the merged tensor, for every input; `to_merged` picks the direction.
void copy_planes(std::vector<char*> parts, const std::vector<int64_t>& channels, char* merged, int64_t N, int64_t C,
                 int64_t groups, int64_t plane_bytes, bool to_merged) {
  std::vector<int64_t> owner(C), local(C);
  for (int64_t k = 0, c = 0; k < static_cast<int64_t>(channels.size()); ++k) {
    for (int64_t i = 0; i < channels[k]; ++i, ++c) owner[c] = k, local[c] = i;
  }
  const int64_t cpg = C / groups;
  at::parallel_for(0, N * C, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(plane_bytes, 1)),
                   [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      const int64_t n = nc / C, c = nc % C, k = owner[c];
      char* part = parts[k] + (n * channels[k] + local[c]) * plane_bytes;
      char* full = merged + (n * C + shuffled(c, cpg, groups)) * plane_bytes;
      if (to_merged) {
        std::memcpy(full, part, plane_bytes);
      } else {
        std::memcpy(part, full, plane_bytes);
      }
    }
  });
}

at::Tensor channel_merge_cpu(at::TensorList inputs, int64_t groups) {
  const int64_t C = check_merge_inputs(inputs, groups);
  const auto& x0 = inputs[0];
  std::vector<at::Tensor> xs;
  std::vector<int64_t> channels;
  for (const auto& x : inputs) {
    xs.push_back(x.contiguous());
    channels.push_back(x.size(1));
  }
  auto out = at::empty({x0.size(0), C, x0.size(2), x0.size(3)}, xs[0].options());
  if (out.numel() == 0) return out;
  std::vector<char*> parts;
  for (auto& x : xs) parts.push_back(static_cast<char*>(const_cast<void*>(x.const_data_ptr())));
  copy_planes(parts, channels, static_cast<char*>(out.mutable_data_ptr()), x0.size(0), C, groups,
              x0.size(2) * x0.size(3) * static_cast<int64_t>(out.element_size()), true);
  return out;
}

std::vector<at::Tensor> channel_merge_backward_cpu(const at::Tensor& grad, c10::SymIntArrayRef channels_sym,
                                                   int64_t groups) {
  TORCH_CHECK_VALUE(grad.dim() == 4, "channel_merge_backward: grad must be 4-D, got shape ", grad.sizes());
  TORCH_CHECK_VALUE(!channels_sym.empty(), "channel_merge_backward: channels must not be empty");
  std::vector<int64_t> channels;
  int64_t C = 0;
  for (const auto& c : channels_sym) {
    channels.push_back(c.expect_int());
    TORCH_CHECK_VALUE(channels.back() >= 0, "channel_merge_backward: negative channel count");
    C += channels.back();
  }
  TORCH_CHECK_VALUE(C == grad.size(1), "channel_merge_backward: channels sum to ", C, " but grad has ",
                    grad.size(1));
  check_groups("channel_merge_backward", C, groups);
  auto g = grad.contiguous();
  std::vector<at::Tensor> dxs;
  std::vector<char*> parts;
  for (int64_t ck : channels) {
    dxs.push_back(at::empty({g.size(0), ck, g.size(2), g.size(3)}, g.options()));
    parts.push_back(static_cast<char*>(dxs.back().mutable_data_ptr()));
  }
  if (g.numel() == 0) return dxs;
  copy_planes(parts, channels, static_cast<char*>(const_cast<void*>(g.const_data_ptr())), g.size(0), C, groups,
              g.size(2) * g.size(3) * static_cast<int64_t>(g.element_size()), false);
  return dxs;
}

}  // namespace

TORCH_LIBRARY_IMPL(rspnet, CPU, m) {
  m.impl("channel_merge", &channel_merge_cpu);
  m.impl("channel_merge_backward", &channel_merge_backward_cpu);
}

}  // namespace rspnet
