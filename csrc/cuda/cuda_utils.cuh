// Small device helpers shared by the CUDA kernels.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace rspnet {

// Accumulation type: float for fp16/bf16/fp32, double for fp64.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

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

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

}  // namespace rspnet
