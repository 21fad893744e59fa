"""The CUDA kernels run on CPU: their bodies use no ATen, so compiled as plain
C++ with RSPNET_CUDA_EMULATION and run with one OS thread per CUDA thread (a
std::barrier for __syncthreads, `static` for __shared__), they are checked
against the reference on machines without a GPU.

``CUDA_EMULATION_SHIM`` provides the CUDA built-ins, ``acc_t`` and
``warp_sum``; a test appends the ``#include "cuda/<op>.cu"`` and its C entry
points, and ``build_cuda_emulation`` compiles and loads the result
(tests/ops/test_path_fusion.py, test_mixed_sum.py, test_channel_merge.py)."""
import ctypes
import os
import shutil
import subprocess

import pytest

from tests.helpers import ROOT

CUDA_EMULATION_SHIM = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
struct uint2 { uint32_t x, y; };
struct uint4 { uint32_t x, y, z, w; };
inline thread_local Dim3 threadIdx, blockIdx, gridDim;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
using std::exp;
using std::max;
using std::min;
namespace rspnet {
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;
template <typename T> T warp_sum(T v) {  // lane 0 of each warp gets the warp's sum
  static T lanes[1024];
  lanes[threadIdx.x] = v;
  __syncthreads();
  T s = v;
  if ((threadIdx.x & 31) == 0) {
    s = T(0);
    for (unsigned l = 0; l < 32; ++l) s += lanes[threadIdx.x + l];
  }
  __syncthreads();
  return s;
}
}  // namespace rspnet
template <typename F> void run_grid(int64_t blocks, int threads, F body) {
  for (int64_t b = 0; b < blocks; ++b) {
    std::barrier<> bar(threads);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] { blockIdx.x = unsigned(b); threadIdx.x = unsigned(t); block_barrier = &bar; body(); });
    for (auto& th : pool) th.join();
  }
}
"""


def build_cuda_emulation(directory, name: str, source: str):
    """Compile ``source`` (which includes a csrc/cuda/*.cu file) into a shared
    library with the host compiler, and load it with ctypes."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    csrc = os.path.join(ROOT, "csrc")
    src = os.path.join(directory, f"{name}.cpp")
    lib = os.path.join(directory, f"{name}.so")
    with open(src, "w") as f:
        f.write(source)
    proc = subprocess.run([cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-DRSPNET_CUDA_EMULATION",
                           f"-I{csrc}", src, "-o", lib], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return ctypes.CDLL(lib)
