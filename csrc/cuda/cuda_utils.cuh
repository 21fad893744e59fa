// Small device helpers shared by the CUDA kernels.
//
// Under RSPNET_CUDA_EMULATION (a CPU test compiles the kernels with g++, see
// tests/helpers/cuda_emulation.py) the test's shim provides acc_t, warp_sum and
// the CUDA built-ins; the rest of this header is plain C++.
#pragma once
#ifndef RSPNET_CUDA_EMULATION
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>

namespace rspnet {

#ifndef RSPNET_CUDA_EMULATION
// Accumulation type: float for fp16/bf16/fp32, double for fp64.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;
#endif

// A vector of N elements loaded/stored as one 16-byte transaction.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Up to kMaxPtrs tensor pointers passed by value as a kernel argument; longer
// lists are processed in chunks by the host.
constexpr int kMaxPtrs = 16;
template <typename T>
struct PtrPack {
  T* p[kMaxPtrs];
};

#ifndef RSPNET_CUDA_EMULATION
// Lane 0 of each warp gets the warp's sum.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}
#endif

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

}  // namespace rspnet
