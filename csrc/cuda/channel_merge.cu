// channel_merge on CUDA: channel_shuffle(cat(inputs, 1), groups) as one copy.
//
// Concatenated channel c lands in output channel (c % cpg) * groups + c / cpg
// (cpg = C / groups). Every (n, c) plane is contiguous in NCHW, so one launch
// copies every plane of every input (up to kMaxPtrs inputs per launch; longer
// lists are chunked) to its shuffled place (forward) or back from it
// (backward), in the widest vector (up to 16 bytes) that the plane size and
// all base pointers allow. Block (plane of the concatenation, chunk): the
// input and its channel are found by an unrolled scan of the channel offsets
// (compile-time pointer indexing, no stack frame), in 32-bit arithmetic done
// once per block; each thread issues its kItems loads before its stores, and
// blocks inside the plane take a path without bounds checks. Pure data
// movement: any dtype works.
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
#endif
#include "cuda_utils.cuh"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace rspnet {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // vectors per thread per block

// The inputs of one launch: parts p < count hold concatenated channels
// [offset[p], offset[p + 1]) of the merged tensor.
template <typename V>
struct Parts {
  V* p[kMaxPtrs];
  int offset[kMaxPtrs + 1];
  int count;
};

// Block (blockIdx.x, blockIdx.y) copies chunk blockIdx.y (and every
// gridDim.y-th after it) of plane blockIdx.x = n * span + c of the launch's
// channels, span = offset[count] - offset[0].
template <typename V>
__global__ void __launch_bounds__(kThreads)
channel_merge_copy_kernel(Parts<V> parts, V* __restrict__ merged, int plane, int chunks, int C, int groups,
                          bool to_merged) {
  const int span = parts.offset[parts.count] - parts.offset[0];
  const int n = static_cast<int>(blockIdx.x) / span;
  const int c = parts.offset[0] + static_cast<int>(blockIdx.x) % span;  // channel of the concatenation
  V* base = parts.p[0];
  int lo = parts.offset[0], hi = parts.offset[1];
#pragma unroll
  for (int q = 1; q < kMaxPtrs; ++q) {
    if (q < parts.count && c >= parts.offset[q]) {
      base = parts.p[q];
      lo = parts.offset[q];
      hi = parts.offset[q + 1];
    }
  }
  const int cpg = C / groups;
  const int out_channel = (c % cpg) * groups + c / cpg;
  V* __restrict__ p = base + (static_cast<int64_t>(n) * (hi - lo) + (c - lo)) * plane;
  V* __restrict__ m = merged + (static_cast<int64_t>(n) * C + out_channel) * plane;
  const V* __restrict__ src = to_merged ? p : m;
  V* __restrict__ dst = to_merged ? m : p;
  for (int chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int tile = chunk * kThreads * kItems;
    const int start = tile + threadIdx.x;
    V v[kItems];
    if (tile + kThreads * kItems <= plane) {
#pragma unroll
      for (int it = 0; it < kItems; ++it) v[it] = src[start + it * kThreads];
#pragma unroll
      for (int it = 0; it < kItems; ++it) dst[start + it * kThreads] = v[it];
    } else {
#pragma unroll
      for (int it = 0; it < kItems; ++it) {
        if (start + it * kThreads < plane) v[it] = src[start + it * kThreads];
      }
#pragma unroll
      for (int it = 0; it < kItems; ++it) {
        if (start + it * kThreads < plane) dst[start + it * kThreads] = v[it];
      }
    }
  }
}

// Widest copy unit (16, 8, 4, 2 or 1 bytes) dividing the plane size and
// aligning every base address.
inline int copy_width(int64_t plane_bytes, const std::vector<std::uintptr_t>& addresses) {
  std::uintptr_t any = 0;
  for (auto a : addresses) any |= a;
  for (int w : {16, 8, 4, 2}) {
    if (plane_bytes % w == 0 && any % w == 0) return w;
  }
  return 1;
}

template <int BYTES> struct Word;
template <> struct Word<1> { using type = uint8_t; };
template <> struct Word<2> { using type = uint16_t; };
template <> struct Word<4> { using type = uint32_t; };
template <> struct Word<8> { using type = uint2; };
template <> struct Word<16> { using type = uint4; };

// Grid of one launch: x = planes of the launch's channels, y = chunks of a
// plane (at most 65535; the kernel loops over the rest).
struct Grid {
  int chunks, y;
};

inline Grid grid_for(int64_t plane) {
  const int64_t chunks = (plane + kThreads * kItems - 1) / (kThreads * kItems);
  return {static_cast<int>(chunks), static_cast<int>(std::min<int64_t>(std::max<int64_t>(chunks, 1), 65535))};
}

#ifndef RSPNET_CUDA_EMULATION
// ------------------------------------------------------------------ host
// Copies every plane of `parts` (consecutive inputs holding channels
// [first_channel, ...) of the concatenation) to or from its shuffled plane of
// `merged`, one launch per kMaxPtrs parts.
template <int BYTES>
void launch(const std::vector<at::Tensor>& parts, int64_t first_channel, const at::Tensor& merged, int64_t groups,
            bool to_merged) {
  using V = typename Word<BYTES>::type;
  const int64_t N = merged.size(0), C = merged.size(1);
  const int64_t plane = merged.size(2) * merged.size(3) * static_cast<int64_t>(merged.element_size()) / BYTES;
  const Grid grid = grid_for(plane);
  auto stream = at::cuda::getCurrentCUDAStream();
  V* mp = static_cast<V*>(const_cast<void*>(merged.const_data_ptr()));
  int64_t channel = first_channel;
  for (size_t k0 = 0; k0 < parts.size(); k0 += kMaxPtrs) {
    Parts<V> pk{};
    pk.count = static_cast<int>(std::min<size_t>(kMaxPtrs, parts.size() - k0));
    pk.offset[0] = static_cast<int>(channel);
    for (int q = 0; q < pk.count; ++q) {
      const auto& t = parts[k0 + q];
      pk.p[q] = static_cast<V*>(const_cast<void*>(t.const_data_ptr()));
      channel += t.size(1);
      pk.offset[q + 1] = static_cast<int>(channel);
    }
    const int64_t planes = N * (pk.offset[pk.count] - pk.offset[0]);
    if (planes == 0 || plane == 0) continue;
    channel_merge_copy_kernel<V><<<dim3(static_cast<unsigned>(planes), grid.y), kThreads, 0, stream>>>(
        pk, mp, static_cast<int>(plane), grid.chunks, static_cast<int>(C), static_cast<int>(groups), to_merged);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// The parts without channels are skipped (nothing to copy); the rest go in
// one launch (per kMaxPtrs of them) at the widest common copy width.
void copy_all(const std::vector<at::Tensor>& parts, const at::Tensor& merged, int64_t groups, bool to_merged) {
  const int64_t N = merged.size(0), C = merged.size(1);
  const int64_t plane_bytes = merged.size(2) * merged.size(3) * static_cast<int64_t>(merged.element_size());
  TORCH_CHECK(N * C < (int64_t{1} << 31) && plane_bytes < (int64_t{1} << 31),
              "channel_merge: tensors of 2^31 or more planes, or planes of 2^31 bytes or more, are not supported");
  if (merged.numel() == 0) return;
  std::vector<at::Tensor> live;
  std::vector<std::uintptr_t> addresses{reinterpret_cast<std::uintptr_t>(merged.const_data_ptr())};
  int64_t first = -1, channel = 0;
  for (const auto& t : parts) {
    if (t.size(1) > 0) {
      if (first < 0) first = channel;
      live.push_back(t);
      addresses.push_back(reinterpret_cast<std::uintptr_t>(t.const_data_ptr()));
    }
    channel += t.size(1);
  }
  if (live.empty()) return;
  switch (copy_width(plane_bytes, addresses)) {
    case 16: launch<16>(live, first, merged, groups, to_merged); break;
    case 8: launch<8>(live, first, merged, groups, to_merged); break;
    case 4: launch<4>(live, first, merged, groups, to_merged); break;
    case 2: launch<2>(live, first, merged, groups, to_merged); break;
    default: launch<1>(live, first, merged, groups, to_merged);
  }
}

at::Tensor channel_merge_cuda(at::TensorList inputs, int64_t groups) {
  const int64_t C = check_merge_inputs(inputs, groups);
  const auto& x0 = inputs[0];
  const c10::cuda::CUDAGuard guard(x0.device());
  auto out = at::empty({x0.size(0), C, x0.size(2), x0.size(3)}, x0.options());
  std::vector<at::Tensor> parts;
  for (const auto& x : inputs) parts.push_back(x.contiguous());
  copy_all(parts, out, groups, true);
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
  for (const auto& c : channels) dxs.push_back(at::empty({g.size(0), c.expect_int(), g.size(2), g.size(3)}, g.options()));
  copy_all(dxs, g, groups, false);
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
