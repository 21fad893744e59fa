"""channel_merge against its plain-PyTorch reference, on every backend that runs here.

The op is a permutation, so every comparison is exact (torch.equal)."""
import pytest
import torch

from rspnet.ops import channel_merge, channel_merge_ref
from tests.helpers.aot import compile_for_sm90
from tests.helpers.cuda_emulation import CUDA_EMULATION_SHIM, build_cuda_emulation
from tests.helpers.ops import cpu_backends

CPU_BACKENDS = cpu_backends("channel_merge")

# (channels of each input, groups, N, H, W)
CASES = {
    "rsp_halves": ((4, 4), 2, 2, 5, 7),
    "uneven": ((3, 5), 4, 2, 3, 5),
    "three_inputs": ((2, 7, 3), 3, 1, 4, 9),
    "single_input": ((6,), 3, 2, 3, 3),
    "groups_1": ((2, 3), 1, 2, 2, 2),
    "groups_all": ((5, 3), 8, 1, 1, 1),
    "odd_plane": ((3, 3), 2, 3, 7, 13),
    "empty_part": ((0, 4), 2, 2, 3, 3),
}


def _inputs(channels, n, h, w, dtype=torch.float64, device="cpu", requires_grad=True):
    return [torch.randn(n, c, h, w, dtype=dtype, device=device, requires_grad=requires_grad) for c in channels]


def _run(fn, xs, g):
    y = fn(xs)
    grads = torch.autograd.grad(y, [x for x in xs if x.requires_grad], g)
    return [y.detach(), *grads]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(backend, case, dtype):
    channels, groups, n, h, w = CASES[case]
    xs = _inputs(channels, n, h, w, dtype)
    g = torch.randn(n, sum(channels), h, w, dtype=dtype)
    got = _run(lambda xs: channel_merge(xs, groups, backend=backend), xs, g)
    want = _run(lambda xs: channel_merge_ref(xs, groups), xs, g)
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.equal(a, b)


def test_permutation_is_the_documented_one():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    y = channel_merge([x[:, :2], x[:, 2:]], 3, backend="cpp")
    # cpg = 2: concatenated channel c -> (c % 2) * 3 + c // 2
    assert y.flatten().tolist() == [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]


def _layouts():
    yield "channels_last", lambda n, c, h, w: torch.randn(n, c, h, w, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    yield "transposed", lambda n, c, h, w: torch.randn(n, c, w, h, dtype=torch.float64).transpose(2, 3)
    yield "sliced", lambda n, c, h, w: torch.randn(n, 2 * c, h, w, dtype=torch.float64)[:, 1::2]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", [name for name, _ in _layouts()])
def test_layouts(backend, layout):
    make = dict(_layouts())[layout]
    xs = [make(2, 3, 5, 6).requires_grad_(), torch.randn(2, 5, 5, 6, dtype=torch.float64, requires_grad=True)]
    g = torch.randn(2, 8, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    got = _run(lambda xs: channel_merge(xs, 4, backend=backend), xs, g)
    want = _run(lambda xs: channel_merge_ref(xs, 4), xs, g)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck(backend):
    xs = _inputs((2, 4), 1, 3, 2)
    assert torch.autograd.gradcheck(lambda *xs: channel_merge(list(xs), 3, backend=backend), tuple(xs))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_partial_requires_grad(backend):
    a = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    g = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    (got,) = torch.autograd.grad(channel_merge([a, b], 2, backend=backend), [a], g)
    (want,) = torch.autograd.grad(channel_merge_ref([a, b], 2), [a], g)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_saves_nothing_for_backward(backend):
    """The backward is a permutation of the gradient: no tensor is kept."""
    xs = _inputs((3, 3), 1, 2, 2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        channel_merge(xs, 2, backend=backend)
    assert saved == []


def test_opcheck_cpp():
    xs = _inputs((3, 5), 2, 3, 4)
    torch.library.opcheck(torch.ops.rspnet.channel_merge.default, (xs, 4))
    g = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.rspnet.channel_merge_backward.default, (g, [3, 5], 4))


def test_torch_compile_fullgraph_cpu():
    xs = _inputs((4, 4), 2, 5, 6, dtype=torch.float32)

    def step(xs):
        return (channel_merge([xs[0].relu(), xs[1]], 2, backend="cpp") * torch.arange(8.0).view(1, 8, 1, 1)).sum()

    compiled = torch.compile(step, fullgraph=True)
    got = torch.autograd.grad(compiled(xs), xs)
    want = torch.autograd.grad(step(xs), xs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_default_backend_on_cpu_is_cpp():
    from rspnet.ops import _backend
    x = torch.randn(1, 2, 2, 2)
    assert _backend.select("channel_merge", x, None) == ("cpp" if _backend.override() is None else _backend.override())


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("case, exc, match", [
    ("empty", ValueError, "inputs is empty"),
    ("not_list", TypeError, "list or tuple"),
    ("not_4d", ValueError, "4-D"),
    ("n_mismatch", ValueError, r"inputs\[1\] has shape \(3, 2, 4, 4\).*N, H and W must match"),
    ("hw_mismatch", ValueError, r"inputs\[1\] has shape \(2, 2, 4, 5\).*N, H and W must match"),
    ("dtype_mismatch", ValueError, r"inputs\[1\] is torch.float64"),
    ("groups_float", TypeError, "groups must be an int"),
    ("groups_zero", ValueError, "groups must be positive"),
    ("not_divisible", ValueError, "5 channels in all are not divisible by groups=2"),
])
@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
def test_bad_input(case, exc, match, backend):
    x = torch.randn(2, 3, 4, 4)
    args = {
        "empty": ([], 2),
        "not_list": (x, 3),
        "not_4d": ([x[0], x[0]], 2),
        "n_mismatch": ([x, torch.randn(3, 2, 4, 4)], 1),
        "hw_mismatch": ([x, torch.randn(2, 2, 4, 5)], 1),
        "dtype_mismatch": ([x, x.double()], 2),
        "groups_float": ([x, x], 2.0),
        "groups_zero": ([x, x], 0),
        "not_divisible": ([x, torch.randn(2, 2, 4, 4)], 2),
    }[case]
    with pytest.raises(exc, match=match):
        channel_merge(*args, backend=backend)


def test_cpp_ops_check_their_input():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="not divisible by groups=2"):
        torch.ops.rspnet.channel_merge([x, torch.randn(2, 2, 4, 4)], 2)
    with pytest.raises(ValueError, match="channels sum to 4 but grad has 5"):
        torch.ops.rspnet.channel_merge_backward(torch.randn(2, 5, 4, 4), [2, 2], 1)


# ------------------------------------------------- CUDA kernel, emulated
CHANNEL_MERGE_EMULATION = CUDA_EMULATION_SHIM + r"""
#include "cuda/channel_merge.cu"
using namespace rspnet;

// The host code of csrc/cuda/channel_merge.cu (width choice, chunks of
// kMaxPtrs parts, grid), with run_grid over (plane, chunk) for <<<...>>>.
template <int BYTES>
void copy(int P, char** parts, const int64_t* channels, char* merged, int64_t N, int64_t plane_bytes, int64_t C,
          int64_t groups, bool to_merged) {
  using V = typename Word<BYTES>::type;
  const int plane = static_cast<int>(plane_bytes / BYTES);
  const Grid grid = grid_for(plane);
  int64_t channel = 0;
  for (int k0 = 0; k0 < P; k0 += kMaxPtrs) {
    Parts<V> pk{};
    pk.count = std::min(kMaxPtrs, P - k0);
    pk.offset[0] = static_cast<int>(channel);
    for (int q = 0; q < pk.count; ++q) {
      pk.p[q] = reinterpret_cast<V*>(parts[k0 + q]);
      channel += channels[k0 + q];
      pk.offset[q + 1] = static_cast<int>(channel);
    }
    const int64_t planes = N * (pk.offset[pk.count] - pk.offset[0]);
    // blockIdx.y is a chunk; emulate a grid of (planes, grid.y) as planes * grid.y blocks.
    for (unsigned cy = 0; cy < unsigned(grid.y); ++cy) {
      run_grid(planes, kThreads, [&] {
        blockIdx.y = cy;
        gridDim.y = unsigned(grid.y);
        channel_merge_copy_kernel<V>(pk, reinterpret_cast<V*>(merged), plane, grid.chunks, int(C), int(groups),
                                     to_merged);
      });
    }
  }
}

extern "C" int copy_all(int P, char** parts, const int64_t* channels, char* merged, int64_t N, int64_t plane_bytes,
                        int64_t C, int64_t groups, int to_merged) {
  std::vector<std::uintptr_t> addresses{reinterpret_cast<std::uintptr_t>(merged)};
  for (int q = 0; q < P; ++q) addresses.push_back(reinterpret_cast<std::uintptr_t>(parts[q]));
  const int width = copy_width(plane_bytes, addresses);
  switch (width) {
    case 16: copy<16>(P, parts, channels, merged, N, plane_bytes, C, groups, to_merged); break;
    case 8: copy<8>(P, parts, channels, merged, N, plane_bytes, C, groups, to_merged); break;
    case 4: copy<4>(P, parts, channels, merged, N, plane_bytes, C, groups, to_merged); break;
    case 2: copy<2>(P, parts, channels, merged, N, plane_bytes, C, groups, to_merged); break;
    default: copy<1>(P, parts, channels, merged, N, plane_bytes, C, groups, to_merged);
  }
  return width;
}
"""


@pytest.fixture(scope="module")
def cuda_emulation(tmp_path_factory):
    return build_cuda_emulation(str(tmp_path_factory.mktemp("cm_cuda")), "channel_merge_emulation",
                                CHANNEL_MERGE_EMULATION)


def _emulated_copy_all(lib, parts, merged, groups, to_merged):
    import ctypes
    n, _, h, w = merged.shape
    P = len(parts)
    ptrs = (ctypes.c_void_p * P)(*[p.data_ptr() for p in parts])
    channels = (ctypes.c_int64 * P)(*[p.shape[1] for p in parts])
    return lib.copy_all(P, ptrs, channels, ctypes.c_void_p(merged.data_ptr()), ctypes.c_int64(n),
                        ctypes.c_int64(h * w * merged.element_size()), ctypes.c_int64(merged.shape[1]),
                        ctypes.c_int64(groups), int(to_merged))


@pytest.mark.parametrize("dtype, plane, shift, width", [
    (torch.float32, (4, 8), 0, 16), (torch.float64, (3, 3), 0, 8), (torch.float32, (3, 5), 0, 4),
    (torch.float16, (1, 7), 0, 2), (torch.uint8, (3, 3), 0, 1), (torch.float32, (4, 8), 1, 4),
    (torch.float32, (64, 40), 0, 16),  # 640 vectors a plane: a full block, then a partial one
])
@pytest.mark.parametrize("channels, groups", [((3, 5), 4), ((2, 0, 4), 3), (tuple([1] * 17) + (3,), 4)])
def test_cuda_kernel_emulated(cuda_emulation, dtype, plane, shift, width, channels, groups):
    """Every copy width, a part that starts off a 16-byte boundary, an empty
    part, and more parts than one launch takes."""
    n = 2
    h, w = plane
    numel = [n * c * h * w for c in channels]
    buf = torch.randint(0, 100, (sum(numel) + shift,)).to(dtype)
    parts, at = [], shift
    for c, m in zip(channels, numel):
        parts.append(buf[at:at + m].view(n, c, h, w))
        at += m
    merged = torch.empty(n, sum(channels), h, w, dtype=dtype)
    got_width = _emulated_copy_all(cuda_emulation, parts, merged, groups, True)
    addresses = [merged.data_ptr()] + [p.data_ptr() for p in parts if p.shape[1] > 0]
    plane_bytes = h * w * merged.element_size()
    assert got_width == next((b for b in (16, 8, 4, 2) if plane_bytes % b == 0 and all(a % b == 0 for a in addresses)), 1)
    if channels == (3, 5):
        assert got_width == width
    assert torch.equal(merged, channel_merge_ref([p.double() for p in parts], groups).to(dtype))
    back = [torch.zeros_like(p) for p in parts]
    _emulated_copy_all(cuda_emulation, back, merged, groups, False)
    assert all(torch.equal(a, b) for a, b in zip(back, parts))


# ------------------------------------------------------------ Triton AOT
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("to_merged", [True, False])
def test_triton_kernel_compiles_for_sm90(dtype, to_merged):
    info = compile_for_sm90("rspnet.kernels.channel_merge", "channel_merge_copy_kernel",
                            {"part_ptr": f"*{dtype}", "merged_ptr": f"*{dtype}", "plane": "i64",
                             "part_channels": "i32", "channel_offset": "i32", "C": "i32", "groups": "i32"},
                            {"TO_MERGED": to_merged, "BLOCK": 1024})
    assert info["cubin_bytes"] > 0
    assert any("sm_90" in t for t in info["ptx_target"])


# ------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["rsp_halves", "three_inputs", "odd_plane", "empty_part"])
def test_gpu_matches_reference(backend, dtype, case):
    channels, groups, n, h, w = CASES[case]
    xs = _inputs(channels, n, h, w, dtype, "cuda")
    g = torch.randn(n, sum(channels), h, w, dtype=dtype, device="cuda")
    got = _run(lambda xs: channel_merge(xs, groups, backend=backend), xs, g)
    want = _run(lambda xs: channel_merge_ref(xs, groups), xs, g)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_unaligned_and_channels_last(backend):
    base = torch.randn(2 * 3 * 5 * 7 + 1, device="cuda", dtype=torch.float16)
    a = base[1:].view(2, 3, 5, 7).requires_grad_()  # 2-byte aligned only, odd plane
    b = torch.randn(2, 5, 5, 7, device="cuda", dtype=torch.float16).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 8, 5, 7, device="cuda", dtype=torch.float16)
    got = _run(lambda xs: channel_merge(xs, 2, backend=backend), [a, b], g)
    want = _run(lambda xs: channel_merge_ref(xs, 2), [a, b], g)
    for x, y in zip(got, want):
        assert torch.equal(x, y)


@pytest.mark.gpu
def test_gpu_opcheck_and_compile():
    xs = _inputs((4, 4), 2, 8, 8, torch.float32, "cuda")
    torch.library.opcheck(torch.ops.rspnet.channel_merge.default, (xs, 2))
    torch.library.opcheck(torch.ops.rspnet.channel_merge_triton.default, (xs, 2))
    w = torch.arange(8.0, device="cuda").view(1, 8, 1, 1)
    for backend in ("cuda", "triton"):
        f = torch.compile(lambda xs, b=backend: (channel_merge(xs, 2, backend=b) * w).sum(), fullgraph=True)
        got = torch.autograd.grad(f(xs), xs)
        want = torch.autograd.grad((channel_merge_ref(xs, 2) * w).sum(), xs)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
