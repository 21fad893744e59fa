// channel_merge on CUDA: channel_shuffle(cat(inputs, 1), groups) as one copy.
//
// Concatenated channel c lands in output channel (c % cpg) * groups + c / cpg
// (cpg = C / groups). Every (n, c) plane is contiguous in NCHW, so a launch
// per input copies each of its planes to its shuffled place (forward) or back
// from it (backward), in the widest vector (up to 16 bytes) that the plane
// size and both base pointers allow. Pure data movement: any dtype works.
//
// Owns the CUDA kernels of rspnet::channel_merge and channel_merge_backward;
// the forward's input check is shared with the CPU (../common.h).
//
// The kernel and the width choice use no ATen: a CPU test compiles them with
// RSPNET_CUDA_EMULATION defined (see csrc/cuda/path_fusion.cu).
#ifndef RSPNET_CUDA_EMULATION
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common.h"
#include "cuda_utils.cuh"
#endif

#include <cstdint>
#include <vector>

namespace rspnet {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // vectors per thread per block

template <typename V>
__global__ void __launch_bounds__(kThreads)
channel_merge_copy_kernel(V* part, V* merged, int64_t plane, int64_t chunks, int64_t part_channels,
                          int64_t channel_offset, int64_t C, int64_t groups, bool to_merged) {
  const int64_t pid = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t n = pid / part_channels, c = channel_offset + pid % part_channels;
  const int64_t cpg = C / groups;
  const int64_t out_channel = (c % cpg) * groups + c / cpg;
  V* p = part + pid * plane;
  V* m = merged + (n * C + out_channel) * plane;
  const int64_t start = chunk * kThreads * kItems;
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int64_t e = start + it * kThreads + threadIdx.x;
    if (e < plane) {
      if (to_merged) {
        m[e] = p[e];
      } else {
        p[e] = m[e];
      }
    }
  }
}

// Widest copy unit (16, 8, 4, 2 or 1 bytes) dividing the plane size and
// aligning both base addresses.
inline int copy_width(int64_t plane_bytes, std::uintptr_t a, std::uintptr_t b) {
  for (int w : {16, 8, 4, 2}) {
    if (plane_bytes % w == 0 && (a | b) % w == 0) return w;
  }
  return 1;
}

template <int BYTES> struct Word;
template <> struct Word<1> { using type = uint8_t; };
template <> struct Word<2> { using type = uint16_t; };
template <> struct Word<4> { using type = uint32_t; };
template <> struct Word<8> { using type = uint2; };
template <> struct Word<16> { using type = uint4; };

#ifndef RSPNET_CUDA_EMULATION
template <int BYTES>
void launch(void* part, void* merged, int64_t plane_bytes, int64_t planes, int64_t part_channels,
            int64_t channel_offset, int64_t C, int64_t groups, bool to_merged) {
  using V = typename Word<BYTES>::type;
  const int64_t plane = plane_bytes / BYTES;
  const int64_t chunks = (plane + kThreads * kItems - 1) / (kThreads * kItems);
  const int64_t blocks = planes * chunks;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "channel_merge: too many blocks for one launch");
  channel_merge_copy_kernel<V><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<V*>(part), static_cast<V*>(merged), plane, chunks, part_channels, channel_offset, C, groups,
      to_merged);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Copies every plane of `part` (input k, channels [offset, offset + C_k) of
// the concatenation) to or from its shuffled plane of `merged`.
void copy_part(const at::Tensor& part, const at::Tensor& merged, int64_t offset, int64_t groups, bool to_merged) {
  if (part.numel() == 0) return;
  const int64_t plane_bytes = part.size(2) * part.size(3) * static_cast<int64_t>(part.element_size());
  void* pp = const_cast<void*>(part.const_data_ptr());
  void* mp = const_cast<void*>(merged.const_data_ptr());
  const int64_t planes = part.size(0) * part.size(1), C = merged.size(1), ck = part.size(1);
  switch (copy_width(plane_bytes, reinterpret_cast<std::uintptr_t>(pp), reinterpret_cast<std::uintptr_t>(mp))) {
    case 16: launch<16>(pp, mp, plane_bytes, planes, ck, offset, C, groups, to_merged); break;
    case 8: launch<8>(pp, mp, plane_bytes, planes, ck, offset, C, groups, to_merged); break;
    case 4: launch<4>(pp, mp, plane_bytes, planes, ck, offset, C, groups, to_merged); break;
    case 2: launch<2>(pp, mp, plane_bytes, planes, ck, offset, C, groups, to_merged); break;
    default: launch<1>(pp, mp, plane_bytes, planes, ck, offset, C, groups, to_merged);
  }
}

at::Tensor channel_merge_cuda(at::TensorList inputs, int64_t groups) {
  const int64_t C = check_merge_inputs(inputs, groups);
  const auto& x0 = inputs[0];
  const c10::cuda::CUDAGuard guard(x0.device());
  auto out = at::empty({x0.size(0), C, x0.size(2), x0.size(3)}, x0.options());
  int64_t offset = 0;
  for (const auto& x : inputs) {
    copy_part(x.contiguous(), out, offset, groups, true);
    offset += x.size(1);
  }
  return out;
}

std::vector<at::Tensor> channel_merge_backward_cuda(const at::Tensor& grad, c10::SymIntArrayRef channels,
                                                    int64_t groups) {
  TORCH_CHECK_VALUE(grad.dim() == 4, "channel_merge_backward: grad must be 4-D, got shape ", grad.sizes());
  TORCH_CHECK_VALUE(!channels.empty(), "channel_merge_backward: channels must not be empty");
  int64_t C = 0;
  for (const auto& c : channels) {
    TORCH_CHECK_VALUE(c.expect_int() >= 0, "channel_merge_backward: negative channel count");
    C += c.expect_int();
  }
  TORCH_CHECK_VALUE(C == grad.size(1), "channel_merge_backward: channels sum to ", C, " but grad has ",
                    grad.size(1));
  check_groups("channel_merge_backward", C, groups);
  const c10::cuda::CUDAGuard guard(grad.device());
  auto g = grad.contiguous();
  std::vector<at::Tensor> dxs;
  int64_t offset = 0;
  for (const auto& c : channels) {
    const int64_t ck = c.expect_int();
    dxs.push_back(at::empty({g.size(0), ck, g.size(2), g.size(3)}, g.options()));
    copy_part(dxs.back(), g, offset, groups, false);
    offset += ck;
  }
  return dxs;
}

#endif  // RSPNET_CUDA_EMULATION

}  // namespace

#ifndef RSPNET_CUDA_EMULATION
TORCH_LIBRARY_IMPL(rspnet, CUDA, m) {
  m.impl("channel_merge", &channel_merge_cuda);
  m.impl("channel_merge_backward", &channel_merge_backward_cuda);
}
#endif

}  // namespace rspnet
