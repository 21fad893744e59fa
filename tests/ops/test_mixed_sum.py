"""mixed_sum against its plain-PyTorch reference, on every backend that runs here."""
import subprocess
import sys

import pytest
import torch

from rspnet.ops import mixed_sum, mixed_sum_ref
from tests.helpers.aot import compile_for_sm90
from tests.helpers.cuda_emulation import CUDA_EMULATION_SHIM, build_cuda_emulation
from tests.helpers.ops import assert_as_accurate_as_reference, cpu_backends, run_fwd_bwd

CPU_BACKENDS = cpu_backends("mixed_sum")
SHAPES = [(1,), (7,), (2, 3, 17, 33), (3, 5, 1, 9, 2)]


def _inputs(k, shape, dtype, device="cpu", requires_grad=True):
    xs = [torch.randn(shape, dtype=dtype, device=device, requires_grad=requires_grad) for _ in range(k)]
    w = torch.randn(k, dtype=dtype, device=device, requires_grad=requires_grad)
    return w, xs


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k", [1, 3, 8, 16])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_fp64(backend, k, shape):
    w, xs = _inputs(k, shape, torch.float64)
    g = torch.randn(shape, dtype=torch.float64)
    got = run_fwd_bwd(lambda w, xs: mixed_sum(w, xs, backend=backend), w, xs, g)
    want = run_fwd_bwd(mixed_sum_ref, w, xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k", [1, 5, 16])
def test_fp32_as_accurate_as_reference(backend, k):
    shape = (4, 8, 31, 45)
    w, xs = _inputs(k, shape, torch.float32)
    g = torch.randn(shape)
    got = run_fwd_bwd(lambda w, xs: mixed_sum(w, xs, backend=backend), w, xs, g)
    ref = run_fwd_bwd(mixed_sum_ref, w, xs, g)
    w64 = w.detach().double().requires_grad_()
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    truth = run_fwd_bwd(mixed_sum_ref, w64, xs64, g.double())
    assert_as_accurate_as_reference(got, ref, truth)


def _layouts():
    base = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    yield "channels_last", lambda: torch.randn_like(base).contiguous(memory_format=torch.channels_last)
    yield "transposed", lambda: torch.randn(2, 6, 11, 9, dtype=torch.float64).transpose(2, 3)
    yield "sliced", lambda: torch.randn(2, 12, 9, 11, dtype=torch.float64)[:, ::2]
    yield "mixed", None


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", [name for name, _ in _layouts()])
def test_layouts(backend, layout):
    makers = dict(_layouts())
    if layout == "mixed":
        xs = [makers["channels_last"](), makers["transposed"](), makers["sliced"](), torch.randn(2, 6, 9, 11).double()]
    else:
        xs = [makers[layout]() for _ in range(4)]
    xs = [x.requires_grad_() for x in xs]
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 6, 9, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    got = run_fwd_bwd(lambda w, xs: mixed_sum(w, xs, backend=backend), w, xs, g)
    want = run_fwd_bwd(mixed_sum_ref, w, xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    y = mixed_sum(w, xs, backend=backend)
    if layout == "channels_last":  # a shared dense layout is kept, not copied
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck(backend):
    w, xs = _inputs(3, (2, 3, 5), torch.float64)
    assert torch.autograd.gradcheck(lambda w, *xs: mixed_sum(w, list(xs), backend=backend), (w, *xs))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_partial_requires_grad(backend):
    """Only what needs a gradient gets one (weights frozen, or inputs constant)."""
    w, xs = _inputs(3, (4, 5), torch.float64)
    g = torch.randn(4, 5, dtype=torch.float64)
    frozen = w.detach()
    dxs = torch.autograd.grad(mixed_sum(frozen, xs, backend=backend), xs, g)
    for d, wk in zip(dxs, frozen):
        torch.testing.assert_close(d, wk * g)
    consts = [x.detach() for x in xs]
    (dw,) = torch.autograd.grad(mixed_sum(w, consts, backend=backend), [w], g)
    torch.testing.assert_close(dw, torch.stack([(g * x).sum() for x in consts]))


def test_opcheck_cpp():
    w, xs = _inputs(3, (2, 3, 7), torch.float64)
    torch.library.opcheck(torch.ops.rspnet.mixed_sum.default, (w, xs))
    g = torch.randn(2, 3, 7, dtype=torch.float64)
    torch.library.opcheck(torch.ops.rspnet.mixed_sum_backward.default, (g, w.detach(), [x.detach() for x in xs],
                                                                        True, True))


def test_torch_compile_fullgraph_cpu():
    # fp64: Inductor's fused reductions sum in another order than eager, so
    # fp32 results differ by rounding that grows with the values.
    w, xs = _inputs(4, (2, 3, 9, 10), torch.float64)

    def step(w, xs):
        return mixed_sum(torch.softmax(w, 0), xs, backend="cpp").square().sum()

    compiled = torch.compile(step, fullgraph=True)
    got = torch.autograd.grad(compiled(w, xs), [w, *xs])
    want = torch.autograd.grad(step(w, xs), [w, *xs])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_default_backend_on_cpu_is_cpp():
    from rspnet.ops import _backend
    x = torch.randn(3)
    assert _backend.select("mixed_sum", x, None) == ("cpp" if _backend.override() is None else _backend.override())


def test_cpu_result_independent_of_thread_count():
    w, xs = _inputs(5, (300_000,), torch.float32, requires_grad=False)
    g = torch.randn(300_000)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(torch.ops.rspnet.mixed_sum_backward(g, w, xs, True, True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][1], outs[1][1])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("case, exc, match", [
    ("empty", ValueError, "inputs is empty"),
    ("not_list", TypeError, "list or tuple"),
    ("shape", ValueError, r"inputs\[1\] has shape"),
    ("dtype", ValueError, r"inputs\[1\] is torch.float64"),
    ("k_mismatch", ValueError, "3 weights for 2 inputs"),
    ("weights_2d", ValueError, "weights must be 1-D"),
    ("int_inputs", TypeError, "floating point"),
    ("not_tensor", TypeError, r"inputs\[1\] is a float"),
])
@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
def test_bad_input(case, exc, match, backend):
    x = torch.randn(2, 3)
    w2 = torch.randn(2)
    args = {
        "empty": (w2, []),
        "not_list": (w2, x),
        "shape": (w2, [x, torch.randn(3, 2)]),
        "dtype": (w2, [x, x.double()]),
        "k_mismatch": (torch.randn(3), [x, x]),
        "weights_2d": (torch.randn(2, 1), [x, x]),
        "int_inputs": (w2, [x.long(), x.long()]),
        "not_tensor": (w2, [x, 1.0]),
    }[case]
    with pytest.raises(exc, match=match):
        mixed_sum(*args, backend=backend)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        mixed_sum(torch.ones(1), [torch.ones(3)], backend="tpu")


def test_backend_that_cannot_run_here():
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        mixed_sum(torch.ones(1), [torch.ones(3)], backend="cuda")


@pytest.mark.gpu
def test_weights_requiring_grad_on_other_device():
    w = torch.randn(2, requires_grad=True)
    xs = [torch.randn(3, device="cuda") for _ in range(2)]
    with pytest.raises(ValueError, match="require grad and are on cpu"):
        mixed_sum(w, xs)


@pytest.mark.gpu
def test_weights_without_grad_on_other_device_are_moved():
    w = torch.randn(2, dtype=torch.float64)
    xs = [torch.randn(3, dtype=torch.float64, device="cuda") for _ in range(2)]
    torch.testing.assert_close(mixed_sum(w, xs), mixed_sum_ref(w.cuda(), xs))


@pytest.mark.parametrize("value", ["reference", "bogus"])
def test_rspnet_backend_environment(value):
    code = ("import torch, rspnet.ops as o; from rspnet.ops import _backend;"
            "print(_backend.select('mixed_sum', torch.ones(2), None))")
    env = {"RSPNET_BACKEND": value, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if value == "bogus":   # warned about once and ignored: the choice made without the variable
        default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0 and "RSPNET_BACKEND='bogus' is not one of" in proc.stderr, proc.stderr
        assert proc.stdout == default.stdout and default.returncode == 0
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "reference"


# ------------------------------------------------- CUDA kernels, emulated
MIXED_SUM_EMULATION = CUDA_EMULATION_SHIM + r"""
#include "cuda/mixed_sum.cu"
using namespace rspnet;

// The host code of csrc/cuda/mixed_sum.cu (plan, chunks of kMaxPtrs, body and
// tail launches, the dw reduction), with run_grid for <<<...>>>.
template <typename T>
void forward(int K, const T** xs, const T* w, T* y, int64_t n, bool aligned) {
  constexpr int VMAX = 16 / sizeof(T);
  const Launch l = plan<T>(n, aligned);
  for (int k0 = 0; k0 < K; k0 += kMaxPtrs) {
    const int kc = std::min(kMaxPtrs, K - k0);
    PtrPack<const T> body{}, tail{};
    for (int k = 0; k < kc; ++k) { body.p[k] = xs[k0 + k]; tail.p[k] = xs[k0 + k] + l.nvec * l.vec; }
    if (l.tiles > 0) run_grid(l.tiles, kThreads, [&] {
      if (l.vec == VMAX) mixed_sum_fwd_kernel<T, VMAX>(body, w, kc, k0, y, l.nvec, k0 > 0);
      else mixed_sum_fwd_kernel<T, 1>(body, w, kc, k0, y, l.nvec, k0 > 0);
    });
    if (l.tail > 0) run_grid(1, kThreads, [&] {
      mixed_sum_fwd_kernel<T, 1>(tail, w, kc, k0, y + l.nvec * l.vec, l.tail, k0 > 0);
    });
  }
}

template <typename T>
void backward(int K, const T* g, const T** xs, T** dxs, const T* w, int64_t n, bool aligned, bool ig, bool wg,
              T* dw) {
  constexpr int VMAX = 16 / sizeof(T);
  const Launch l = plan<T>(n, aligned);
  const int64_t columns = l.tiles + l.tail_tiles;
  std::vector<T> partial(K * columns, T(-12345));  // poison: every entry must be written
  for (int k0 = 0; k0 < K; k0 += kMaxPtrs) {
    const int kc = std::min(kMaxPtrs, K - k0);
    PtrPack<const T> xb{}, xt{};
    PtrPack<T> db{}, dt{};
    for (int k = 0; k < kc; ++k) {
      xb.p[k] = xs[k0 + k]; xt.p[k] = xs[k0 + k] + l.nvec * l.vec;
      if (ig) { db.p[k] = dxs[k0 + k]; dt.p[k] = dxs[k0 + k] + l.nvec * l.vec; }
    }
    if (l.tiles > 0) run_grid(l.tiles, kThreads, [&] {
      if (l.vec == VMAX) mixed_sum_bwd_kernel<T, VMAX>(g, xb, db, w, kc, k0, l.nvec, partial.data(), columns, 0, ig, wg);
      else mixed_sum_bwd_kernel<T, 1>(g, xb, db, w, kc, k0, l.nvec, partial.data(), columns, 0, ig, wg);
    });
    if (l.tail > 0) run_grid(1, kThreads, [&] {
      mixed_sum_bwd_kernel<T, 1>(g + l.nvec * l.vec, xt, dt, w, kc, k0, l.tail, partial.data(), columns, l.tiles,
                                 ig, wg);
    });
  }
  if (wg) run_grid(K, kThreads, [&] { mixed_sum_dw_kernel<T>(partial.data(), columns, dw); });
}

extern "C" {
void fwd_f32(int K, const float** xs, const float* w, float* y, int64_t n, int a) { forward<float>(K, xs, w, y, n, a); }
void fwd_f64(int K, const double** xs, const double* w, double* y, int64_t n, int a) {
  forward<double>(K, xs, w, y, n, a);
}
void bwd_f32(int K, const float* g, const float** xs, float** dxs, const float* w, int64_t n, int a, int ig, int wg,
             float* dw) { backward<float>(K, g, xs, dxs, w, n, a, ig, wg, dw); }
void bwd_f64(int K, const double* g, const double** xs, double** dxs, const double* w, int64_t n, int a, int ig,
             int wg, double* dw) { backward<double>(K, g, xs, dxs, w, n, a, ig, wg, dw); }
}
"""


@pytest.fixture(scope="module")
def cuda_emulation(tmp_path_factory):
    return build_cuda_emulation(str(tmp_path_factory.mktemp("ms_cuda")), "mixed_sum_emulation", MIXED_SUM_EMULATION)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, n, aligned", [
    (3, 2 * 4096 + 4 * 37 + 3, True),   # two full tiles, a partial tile and a tail of 3
    (17, 1000, True),                   # two chunks of kMaxPtrs inputs
    (2, 4096, True),                    # exactly one full tile (fp32)
    (5, 1500, False),                   # unaligned: the scalar kernel only
])
@pytest.mark.parametrize("grads", [(True, True), (True, False), (False, True)])
def test_cuda_kernels_emulated(cuda_emulation, dtype, k, n, aligned, grads):
    """The CUDA kernel bodies, run on CPU: forward, dx and dw against the reference."""
    import ctypes

    suffix = "f64" if dtype == torch.float64 else "f32"
    ptr = ctypes.c_void_p
    gen = torch.Generator().manual_seed(k * 1000 + n)
    xs = [torch.randn(n, generator=gen, dtype=dtype) for _ in range(k)]
    w = torch.randn(k, generator=gen, dtype=dtype)
    g = torch.randn(n, generator=gen, dtype=dtype)
    xp = (ptr * k)(*[x.data_ptr() for x in xs])
    y = torch.full((n,), float("nan"), dtype=dtype)
    getattr(cuda_emulation, f"fwd_{suffix}")(k, xp, ptr(w.data_ptr()), ptr(y.data_ptr()), ctypes.c_int64(n),
                                             int(aligned))
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(y, mixed_sum_ref(w, xs), **tol)

    input_grads, weight_grad = grads
    dxs = [torch.full_like(x, float("nan")) for x in xs]
    dp = (ptr * k)(*[d.data_ptr() for d in dxs])
    dw = torch.full((k,), float("nan"), dtype=dtype)
    getattr(cuda_emulation, f"bwd_{suffix}")(k, ptr(g.data_ptr()), xp, dp, ptr(w.data_ptr()), ctypes.c_int64(n),
                                             int(aligned), int(input_grads), int(weight_grad), ptr(dw.data_ptr()))
    if input_grads:
        torch.testing.assert_close(torch.stack(dxs), w[:, None] * g[None, :], **tol)
    else:
        assert all(torch.isnan(d).all() for d in dxs)  # nothing written
    if weight_grad:
        want = torch.stack([(g.double() * x.double()).sum() for x in xs]).to(dtype)
        torch.testing.assert_close(dw, want, **({"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}))


# ------------------------------------------------------------ Triton AOT
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_kernels_compile_for_sm90(dtype):
    acc = "fp32"
    ptrs = {f"x{i}": f"*{dtype}" for i in range(8)}
    fwd = compile_for_sm90("rspnet.kernels.mixed_sum", "mixed_sum_fwd_kernel",
                           {"y_ptr": f"*{dtype}", "w_ptr": f"*{acc}", **ptrs, "n": "i64"},
                           {"K": 8, "ACCUMULATE": False, "BLOCK": 1024})
    bwd = compile_for_sm90("rspnet.kernels.mixed_sum", "mixed_sum_bwd_kernel",
                           {"g_ptr": f"*{dtype}", "w_ptr": f"*{acc}", "partial_ptr": f"*{acc}", **ptrs,
                            **{f"d{i}": f"*{dtype}" for i in range(8)}, "n": "i64", "num_tiles": "i64"},
                           {"K": 8, "INPUT_GRADS": True, "WEIGHT_GRAD": True, "BLOCK": 1024})
    for info in (fwd, bwd):
        assert info["cubin_bytes"] > 0
        assert any("sm_90" in t for t in info["ptx_target"])


# ------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 8, 17])
def test_gpu_matches_reference(backend, dtype, k):
    shape = (3, 5, 33, 65)  # odd: exercises the unaligned tail
    w, xs = _inputs(k, shape, dtype, "cuda")
    g = torch.randn(shape, dtype=dtype, device="cuda")
    got = run_fwd_bwd(lambda w, xs: mixed_sum(w, xs, backend=backend), w, xs, g)
    ref = run_fwd_bwd(mixed_sum_ref, w, xs, g)
    w64 = w.detach().double().requires_grad_()
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    truth = run_fwd_bwd(mixed_sum_ref, w64, xs64, g.double())
    assert_as_accurate_as_reference(got, ref, truth)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_channels_last_and_offsets(backend):
    base = torch.randn(2, 8, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    xs = [torch.randn_like(base).requires_grad_() for _ in range(3)] + [torch.randn(17, device="cuda")[1:].view(1, 16, 1, 1).expand(2, 8, 16, 16).requires_grad_()]
    xs = [x if i < 3 else x.contiguous() for i, x in enumerate(xs)]
    w = torch.randn(4, device="cuda", requires_grad=True)
    g = torch.randn_like(base)
    got = run_fwd_bwd(lambda w, xs: mixed_sum(w, xs, backend=backend), w, xs, g)
    want = run_fwd_bwd(mixed_sum_ref, w, xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_gpu_opcheck_and_compile():
    w, xs = _inputs(3, (2, 3, 64), torch.float32, "cuda")
    torch.library.opcheck(torch.ops.rspnet.mixed_sum.default, (w, xs))
    torch.library.opcheck(torch.ops.rspnet.mixed_sum_triton.default, (w, xs))
    for backend in ("cuda", "triton"):
        f = torch.compile(lambda w, xs: mixed_sum(w, xs, backend=backend).sum(), fullgraph=True)
        got = torch.autograd.grad(f(w, xs), [w, *xs])
        want = torch.autograd.grad(mixed_sum_ref(w, xs).sum(), [w, *xs])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
