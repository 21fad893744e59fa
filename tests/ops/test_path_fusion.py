"""path_fusion against its plain-PyTorch reference, on every backend that runs here."""
import pytest
import torch
import torch.nn.functional as F

from rspnet.ops import path_fusion, path_fusion_ref
from tests.helpers.aot import compile_for_sm90
from tests.helpers.cuda_emulation import CUDA_EMULATION_SHIM, build_cuda_emulation
from tests.helpers.ops import assert_as_accurate_as_reference, cpu_backends, run_fwd_bwd

CPU_BACKENDS = cpu_backends("path_fusion")

# name -> (output size, input sizes). Covers identity, bilinear up by 2..32
# and non-integer ratios, one dimension equal, average pooling by integer
# factors (also different per dimension), 1x1 inputs, P=1, odd sizes.
CASES = {
    "pam_scales": ((16, 24), [(16, 24), (8, 12), (4, 6), (2, 3)]),
    "odd_ratios": ((13, 19), [(13, 19), (5, 7), (26, 38), (1, 1)]),
    "up32": ((32, 64), [(1, 2), (32, 64)]),
    "single_path": ((11, 13), [(5, 7)]),
    "one_dim_equal": ((5, 14), [(5, 7), (10, 14), (5, 14), (15, 28)]),
    "odd_large": ((37, 53), [(5, 7), (37, 53), (74, 106), (12, 17)]),
}
# The Triton interpreter is slow: it runs the smaller cases only.
TRITON_CASES = {"pam_scales", "odd_ratios", "up32", "single_path", "one_dim_equal"}


def _params(cases=CASES):
    out = []
    for backend in CPU_BACKENDS:
        for name in cases:
            if backend == "triton" and name not in TRITON_CASES:
                continue
            out.append(pytest.param(backend, name, id=f"{name}-{backend}"))
    return out


def _inputs(sizes, n=2, c=3, dtype=torch.float64, requires_grad=True, device="cpu"):
    xs = [torch.randn(n, c, h, w, dtype=dtype, device=device, requires_grad=requires_grad) for h, w in sizes]
    logits = torch.randn(len(sizes), dtype=dtype, device=device, requires_grad=requires_grad)
    return logits, xs


@pytest.mark.parametrize("backend, case", _params())
def test_matches_reference_fp64(backend, case):
    size, sizes = CASES[case]
    logits, xs = _inputs(sizes)
    g = torch.randn(2, 3, *size, dtype=torch.float64)
    got = run_fwd_bwd(lambda l, xs: path_fusion(l, xs, size, 0.7, backend=backend), logits, xs, g)
    want = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size, 0.7), logits, xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fp32_as_accurate_as_reference(backend):
    size, sizes = CASES["pam_scales"] if backend == "triton" else ((64, 96), [(64, 96), (32, 48), (16, 24), (8, 12)])
    logits, xs = _inputs(sizes, n=2, c=4, dtype=torch.float32)
    g = torch.randn(2, 4, *size)
    got = run_fwd_bwd(lambda l, xs: path_fusion(l, xs, size, backend=backend), logits, xs, g)
    ref = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size), logits, xs, g)
    l64 = logits.detach().double().requires_grad_()
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    truth = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size), l64, xs64, g.double())
    assert_as_accurate_as_reference(got, ref, truth)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("temperature", [0.25, 4.0])
def test_temperature(backend, temperature):
    size, sizes = (6, 10), [(3, 5), (6, 10)]
    logits, xs = _inputs(sizes, n=1, c=2)
    g = torch.randn(1, 2, *size, dtype=torch.float64)
    got = run_fwd_bwd(lambda l, xs: path_fusion(l, xs, size, temperature, backend=backend), logits, xs, g)
    want = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size, temperature), logits, xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_one_channel_one_sample(backend):
    size, sizes = (9, 7), [(3, 2), (9, 7), (18, 21)]
    logits, xs = _inputs(sizes, n=1, c=1)
    g = torch.randn(1, 1, *size, dtype=torch.float64)
    got = run_fwd_bwd(lambda l, xs: path_fusion(l, xs, size, backend=backend), logits, xs, g)
    want = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size), logits, xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_more_paths_than_one_launch_takes(backend):
    """Nine inputs: chunked over launches (the Triton and CUDA kernels take 4 per launch)."""
    size = (6, 8)
    sizes = [(6, 8), (3, 4), (2, 2), (12, 16), (1, 1), (6, 8), (5, 7), (3, 8), (6, 4)]
    logits, xs = _inputs(sizes, n=1, c=2)
    g = torch.randn(1, 2, *size, dtype=torch.float64)
    got = run_fwd_bwd(lambda l, xs: path_fusion(l, xs, size, backend=backend), logits, xs, g)
    want = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size), logits, xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _layouts():
    yield "channels_last", lambda n, c, h, w: torch.randn(n, c, h, w, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    yield "transposed", lambda n, c, h, w: torch.randn(n, c, w, h, dtype=torch.float64).transpose(2, 3)
    yield "sliced", lambda n, c, h, w: torch.randn(n, 2 * c, h, w + 3, dtype=torch.float64)[:, ::2, :, 1:w + 1]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", [name for name, _ in _layouts()])
def test_layouts(backend, layout):
    make = dict(_layouts())[layout]
    size = (8, 10)
    xs = [make(2, 3, h, w).requires_grad_() for h, w in [(8, 10), (4, 5), (16, 20), (3, 7)]]
    logits = torch.randn(4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, *size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    got = run_fwd_bwd(lambda l, xs: path_fusion(l, xs, size, backend=backend), logits, xs, g)
    want = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size), logits, xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_expanded_grad(backend):
    """``y.sum().backward()`` hands the op a stride-0 gradient."""
    size, sizes = (5, 6), [(5, 6), (2, 3), (10, 12)]
    logits, xs = _inputs(sizes, n=1, c=2)
    got = torch.autograd.grad(path_fusion(logits, xs, size, backend=backend).sum(), [logits, *xs])
    want = torch.autograd.grad(path_fusion_ref(logits, xs, size).sum(), [logits, *xs])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck(backend):
    size, sizes = (5, 7), [(5, 7), (2, 3), (10, 14)]
    logits, xs = _inputs(sizes, n=1, c=2)
    # The interpreter is slow: Triton gets the fast (random-projection) check.
    assert torch.autograd.gradcheck(
        lambda l, *xs: path_fusion(l, list(xs), size, 1.5, backend=backend), (logits, *xs),
        fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_partial_requires_grad(backend):
    """Only what needs a gradient gets one (logits frozen, or inputs constant)."""
    size, sizes = (6, 6), [(6, 6), (3, 3)]
    logits, xs = _inputs(sizes, n=1, c=2)
    g = torch.randn(1, 2, *size, dtype=torch.float64)
    frozen = logits.detach()
    got = torch.autograd.grad(path_fusion(frozen, xs, size, backend=backend), xs, g)
    want = torch.autograd.grad(path_fusion_ref(frozen, xs, size), xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    consts = [x.detach() for x in xs]
    (got,) = torch.autograd.grad(path_fusion(logits, consts, size, backend=backend), [logits], g)
    (want,) = torch.autograd.grad(path_fusion_ref(logits, consts, size), [logits], g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_saves_no_resampled_map(backend):
    """Autograd keeps only the op's own inputs: no resampled or weighted copy."""
    size, sizes = (8, 8), [(8, 8), (4, 4), (2, 2), (16, 16)]
    logits, xs = _inputs(sizes, n=1, c=2)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        path_fusion(logits, xs, size, backend=backend)
    originals = {t.data_ptr() for t in [logits, *xs]}
    assert saved and all(t.data_ptr() in originals for t in saved)


def test_opcheck_cpp():
    size, sizes = (6, 9), [(6, 9), (3, 4), (12, 18)]
    logits, xs = _inputs(sizes, n=2, c=2)
    torch.library.opcheck(torch.ops.rspnet.path_fusion.default, (logits, xs, list(size), 0.5))
    g = torch.randn(2, 2, *size, dtype=torch.float64)
    for input_grads, logit_grad in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(torch.ops.rspnet.path_fusion_backward.default,
                              (g, logits.detach(), [x.detach() for x in xs], 0.5, input_grads, logit_grad))


def test_torch_compile_fullgraph_cpu():
    size, sizes = (8, 12), [(8, 12), (4, 6), (2, 3), (16, 24)]
    logits, xs = _inputs(sizes, n=2, c=3, dtype=torch.float32)

    def step(logits, xs):
        return path_fusion(logits, xs, size, 2.0, backend="cpp").square().sum()

    compiled = torch.compile(step, fullgraph=True)
    got = torch.autograd.grad(compiled(logits, xs), [logits, *xs])
    want = torch.autograd.grad(step(logits, xs), [logits, *xs])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_default_backend_on_cpu_is_cpp():
    from rspnet.ops import _backend
    x = torch.randn(1, 1, 2, 2)
    assert _backend.select("path_fusion", x, None) == ("cpp" if _backend.override() is None else _backend.override())


def test_cpu_result_independent_of_thread_count():
    size = (96, 64)
    logits, xs = _inputs([(96, 64), (48, 32), (24, 16), (192, 128)], n=2, c=8, dtype=torch.float32,
                         requires_grad=False)
    g = torch.randn(2, 8, *size)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            y = torch.ops.rspnet.path_fusion(logits, xs, list(size), 1.0)
            dxs, dl = torch.ops.rspnet.path_fusion_backward(g, logits, xs, 1.0, True, True)
            outs.append([y, dl, *dxs])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_matches_torch_resampling_directly():
    """The resampling rule is PyTorch's, not just the reference's: one input
    with logit weight 1 equals F.interpolate / F.avg_pool2d."""
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    one = torch.zeros(1, dtype=torch.float64)
    torch.testing.assert_close(path_fusion(one, [x], (23, 11), backend="cpp"),
                               F.interpolate(x, size=(23, 11), mode="bilinear", align_corners=False),
                               rtol=1e-13, atol=1e-13)
    x = torch.randn(2, 3, 12, 30, dtype=torch.float64)
    torch.testing.assert_close(path_fusion(one, [x], (4, 6), backend="cpp"), F.avg_pool2d(x, (3, 5), (3, 5)),
                               rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- bad input
def _bad_args(case):
    x = torch.randn(2, 3, 4, 6)
    small = torch.randn(2, 3, 2, 3)
    l2 = torch.randn(2)
    return {
        "empty": (l2, [], (4, 6), 1.0),
        "not_list": (l2, x, (4, 6), 1.0),
        "not_tensor": (l2, [x, 1.0], (4, 6), 1.0),
        "logits_2d": (torch.randn(2, 1), [x, small], (4, 6), 1.0),
        "logits_length": (torch.randn(3), [x, small], (4, 6), 1.0),
        "logits_int": (torch.ones(2, dtype=torch.long), [x, small], (4, 6), 1.0),
        "not_4d": (l2, [x[0], small[0]], (4, 6), 1.0),
        "n_mismatch": (l2, [x, torch.randn(3, 3, 2, 3)], (4, 6), 1.0),
        "c_mismatch": (l2, [x, torch.randn(2, 4, 2, 3)], (4, 6), 1.0),
        "dtype_mismatch": (l2, [x, small.double()], (4, 6), 1.0),
        "int_inputs": (l2, [x.long(), small.long()], (4, 6), 1.0),
        "size_three": (l2, [x, small], (4, 6, 1), 1.0),
        "size_zero": (l2, [x, small], (0, 6), 1.0),
        "size_negative": (l2, [x, small], (4, -6), 1.0),
        "size_float": (l2, [x, small], (4.0, 6), 1.0),
        "size_int": (l2, [x, small], 4, 1.0),
        "mixed_up_down": (l2, [x, torch.randn(2, 3, 2, 12)], (4, 6), 1.0),
        "non_integer_down": (l2, [x, torch.randn(2, 3, 6, 9)], (4, 6), 1.0),
        "temperature_zero": (l2, [x, small], (4, 6), 0.0),
        "temperature_negative": (l2, [x, small], (4, 6), -1.0),
        "temperature_nan": (l2, [x, small], (4, 6), float("nan")),
        "temperature_str": (l2, [x, small], (4, 6), "1"),
    }[case]


BAD = [
    ("empty", ValueError, "inputs is empty"),
    ("not_list", TypeError, "list or tuple"),
    ("not_tensor", TypeError, r"inputs\[1\] is a float"),
    ("logits_2d", ValueError, "logits must be 1-D"),
    ("logits_length", ValueError, "3 logits for 2 inputs"),
    ("logits_int", TypeError, "logits must be floating point"),
    ("not_4d", ValueError, "4-D"),
    ("n_mismatch", ValueError, r"inputs\[1\] has shape \(3, 3, 2, 3\).*N and C must match"),
    ("c_mismatch", ValueError, r"inputs\[1\] has shape \(2, 4, 2, 3\).*N and C must match"),
    ("dtype_mismatch", ValueError, r"inputs\[1\] is torch.float64"),
    ("int_inputs", TypeError, "floating point"),
    ("size_three", ValueError, "size must be two positive ints"),
    ("size_zero", ValueError, "size must be two positive ints"),
    ("size_negative", ValueError, "size must be two positive ints"),
    ("size_float", ValueError, "size must be two positive ints"),
    ("size_int", ValueError, "size must be two positive ints"),
    ("mixed_up_down", ValueError, r"cannot resample inputs\[1\] of size 2x12 to 4x6"),
    ("non_integer_down", ValueError, r"cannot resample inputs\[1\] of size 6x9 to 4x6"),
    ("temperature_zero", ValueError, "temperature must be positive"),
    ("temperature_negative", ValueError, "temperature must be positive"),
    ("temperature_nan", ValueError, "temperature must be positive"),
    ("temperature_str", TypeError, "temperature must be a float"),
]


@pytest.mark.parametrize("case, exc, match", BAD)
@pytest.mark.parametrize("backend", [None, *CPU_BACKENDS])
def test_bad_input(case, exc, match, backend):
    logits, xs, size, temperature = _bad_args(case)
    with pytest.raises(exc, match=match):
        path_fusion(logits, xs, size, temperature, backend=backend)


@pytest.mark.parametrize("case, match", [
    ("non_integer_down", r"cannot resample inputs\[1\] of size 6x9 to 4x6"),
    ("mixed_up_down", r"cannot resample inputs\[1\] of size 2x12 to 4x6"),
    ("logits_length", "3 logits for 2 inputs"),
    ("c_mismatch", "N and C must match"),
    ("temperature_zero", "temperature must be positive"),
])
def test_cpp_op_checks_its_input(case, match):
    """Called directly (as torch.compile or a user may), the C++ op rejects
    what the Python wrapper would."""
    logits, xs, size, temperature = _bad_args(case)
    with pytest.raises(ValueError, match=match):
        torch.ops.rspnet.path_fusion(logits, xs, list(size), temperature)


def test_rspnet_backend_environment():
    import subprocess
    import sys
    code = ("import torch, rspnet.ops as o; from rspnet.ops import _backend;"
            "print(_backend.select('path_fusion', torch.ones(1, 1, 2, 2), None),"
            " _backend.select('channel_merge', torch.ones(1, 1, 2, 2), None))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"RSPNET_BACKEND": "reference", "PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "reference reference"


def test_backend_that_cannot_run_here():
    x = torch.randn(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        path_fusion(torch.zeros(1), [x], (2, 2), backend="cuda")


# ------------------------------------------------------------ Triton AOT
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp64"])
def test_triton_kernels_compile_for_sm90(dtype):
    acc = "fp64" if dtype == "fp64" else "fp32"
    ptrs = {f"x{i}": f"*{dtype}" for i in range(4)}
    sizes = {f"{a}{i}": "i32" for i in range(4) for a in ("h", "w")}
    modes = {"MODE0": 0, "MODE1": 1, "MODE2": 1, "MODE3": 2}
    fwd = compile_for_sm90("rspnet.kernels.path_fusion", "path_fusion_fwd_kernel",
                           {"y_ptr": f"*{dtype}", "w_ptr": f"*{acc}", **ptrs, **sizes, "H": "i32", "W": "i32",
                            "row_tiles": "i32"},
                           {"P": 4, **modes, "ACCUMULATE": True, "BLOCK_H": 4, "BLOCK_W": 128})
    bwd = compile_for_sm90("rspnet.kernels.path_fusion", "path_fusion_bwd_kernel",
                           {"g_ptr": f"*{dtype}", "w_ptr": f"*{acc}", "partial_ptr": f"*{acc}", **ptrs,
                            **{f"d{i}": f"*{dtype}" for i in range(4)}, **sizes, "H": "i32", "W": "i32",
                            "regions": "i32", "num_programs": "i32"},
                           {"P": 4, **modes, "KX0": 8, "KX1": 8, "KX2": 32, "KX3": 8,
                            "BJ0": 128, "BJ1": 128, "BJ2": 32, "BJ3": 128, "INPUT_GRADS": True, "LOGIT_GRAD": True,
                            "REGION": 16, "BLOCK_I": 8, "BLOCK_W": 128})
    for info in (fwd, bwd):
        assert info["cubin_bytes"] > 0
        assert any("sm_90" in t for t in info["ptx_target"])


def test_triton_kernels_compile_for_sm90_with_unit_sizes():
    """Triton may specialise integer arguments equal to 1 into constants (a
    1x1 input, one row tile): the kernels must compile that way too."""
    ptrs = {f"x{i}": "*fp32" for i in range(4)}
    sizes = {f"{a}{i}": "i32" for i in range(4) for a in ("h", "w") if i != 1}
    ones = {"h1": 1, "w1": 1}
    modes = {"MODE0": 0, "MODE1": 1, "MODE2": 1, "MODE3": 2}
    fwd = compile_for_sm90("rspnet.kernels.path_fusion", "path_fusion_fwd_kernel",
                           {"y_ptr": "*fp32", "w_ptr": "*fp32", **ptrs, **sizes, "H": "i32", "W": "i32"},
                           {"row_tiles": 1, **ones, "P": 4, **modes, "ACCUMULATE": False, "BLOCK_H": 4,
                            "BLOCK_W": 128})
    bwd = compile_for_sm90("rspnet.kernels.path_fusion", "path_fusion_bwd_kernel",
                           {"g_ptr": "*fp32", "w_ptr": "*fp32", "partial_ptr": "*fp32", **ptrs,
                            **{f"d{i}": "*fp32" for i in range(4)}, **sizes, "H": "i32", "W": "i32",
                            "num_programs": "i32"},
                           {"regions": 1, **ones, "P": 4, **modes, "KX0": 8, "KX1": 128, "KX2": 32, "KX3": 8,
                            "BJ0": 128, "BJ1": 8, "BJ2": 32, "BJ3": 128, "INPUT_GRADS": False, "LOGIT_GRAD": True,
                            "REGION": 16, "BLOCK_I": 8, "BLOCK_W": 128})
    assert fwd["cubin_bytes"] > 0 and bwd["cubin_bytes"] > 0


# ------------------------------------------------------------------- GPU
GPU_CASES = {
    "pam_bench_like": ((64, 128), [(64, 128), (32, 64), (16, 32), (8, 16)]),
    "odd": ((37, 53), [(5, 7), (37, 53), (74, 106), (1, 1), (12, 17)]),
    "up32_wide": ((32, 2048), [(1, 64), (32, 2048)]),
}


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_gpu_matches_reference(backend, dtype, case):
    size, sizes = GPU_CASES[case]
    logits, xs = _inputs(sizes, n=2, c=5, dtype=dtype, device="cuda")
    logits = logits.detach().float().requires_grad_()
    g = torch.randn(2, 5, *size, dtype=dtype, device="cuda")
    got = run_fwd_bwd(lambda l, xs: path_fusion(l, xs, size, 0.8, backend=backend), logits, xs, g)
    ref = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size, 0.8), logits, xs, g)
    l64 = logits.detach().double().requires_grad_()
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    truth = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size, 0.8), l64, xs64, g.double())
    assert_as_accurate_as_reference(got, ref, truth, slack=4.0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_fp64_exact(backend):
    size, sizes = GPU_CASES["odd"]
    logits, xs = _inputs(sizes, n=2, c=3, device="cuda")
    g = torch.randn(2, 3, *size, dtype=torch.float64, device="cuda")
    got = run_fwd_bwd(lambda l, xs: path_fusion(l, xs, size, backend=backend), logits, xs, g)
    want = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size), logits, xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_layouts_and_deterministic(backend):
    size = (24, 40)
    xs = [torch.randn(2, 8, h, w, device="cuda").contiguous(memory_format=torch.channels_last).requires_grad_()
          for h, w in [(24, 40), (12, 20), (6, 10), (48, 80)]]
    logits = torch.randn(4, device="cuda", requires_grad=True)
    g = torch.randn(2, 8, *size, device="cuda")
    first = run_fwd_bwd(lambda l, xs: path_fusion(l, xs, size, backend=backend), logits, xs, g)
    second = run_fwd_bwd(lambda l, xs: path_fusion(l, xs, size, backend=backend), logits, xs, g)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    want = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size), logits, xs, g)
    for a, b in zip(first, want):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_gpu_opcheck_and_compile():
    size, sizes = (16, 24), [(16, 24), (8, 12), (4, 6), (32, 48)]
    logits, xs = _inputs(sizes, n=2, c=3, dtype=torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.rspnet.path_fusion.default, (logits, xs, list(size), 1.0))
    torch.library.opcheck(torch.ops.rspnet.path_fusion_triton.default, (logits, xs, list(size), 1.0))
    for backend in ("cuda", "triton"):
        f = torch.compile(lambda l, xs, b=backend: path_fusion(l, xs, size, backend=b).square().sum(),
                          fullgraph=True)
        got = torch.autograd.grad(f(logits, xs), [logits, *xs])
        want = torch.autograd.grad(path_fusion_ref(logits, xs, size).square().sum(), [logits, *xs])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_gpu_logits_requiring_grad_on_other_device():
    xs = [torch.randn(1, 2, 4, 4, device="cuda")]
    with pytest.raises(ValueError, match="require grad and are on cpu"):
        path_fusion(torch.zeros(1, requires_grad=True), xs, (4, 4))


# ------------------------------------------------- CUDA kernels, emulated
# The CUDA kernels' bodies use no ATen: compiled as plain C++ with
# RSPNET_CUDA_EMULATION and run with one OS thread per CUDA thread (a
# std::barrier for __syncthreads, `static` for __shared__), they are checked
# against the reference on machines without a GPU (the shim and the build:
# tests/helpers/cuda_emulation.py).
PATH_FUSION_EMULATION = CUDA_EMULATION_SHIM + r"""
#include "cuda/path_fusion.cu"
using namespace rspnet;

static int mode_of(int h, int w, int H, int W) {
  if (h == H && w == W) return kIdentity;
  return (h <= H && w <= W) ? kBilinear : kPool;
}

template <typename T>
Paths<T> chunk(int k0, int count, const T** xs, T** dxs, const int* hs, const int* ws, int H, int W) {
  Paths<T> ps{};
  for (int k = 0; k < count; ++k)
    set_path<T>(ps, k, xs[k0 + k], dxs ? dxs[k0 + k] : nullptr, hs[k0 + k], ws[k0 + k],
                mode_of(hs[k0 + k], ws[k0 + k], H, W), H, W);
  return ps;
}

template <typename T>
std::vector<T> weights(int P, const T* logits, double temperature) {
  std::vector<T> w(P);
  run_grid(1, 32, [&] { path_fusion_weights_kernel<T>(logits, P, T(temperature), w.data()); });
  return w;
}

// The host's vectorisation rule (W % 4 == 0, 4-element aligned bases).
template <typename T>
bool vec_ok(int P, const T* const* ps, const T* extra, int W) {
  auto ok = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % (4 * sizeof(T)) == 0; };
  bool v = W % 4 == 0 && ok(extra);
  for (int k = 0; k < P; ++k) v = v && ok(ps[k]);
  return v;
}

template <typename T>
void forward(int P, const T** xs, const int* hs, const int* ws, const T* logits, double temperature, T* y,
             int64_t planes, int H, int W) {
  const int row_tiles = (H + kFwdRows - 1) / kFwdRows, col_tiles = (W + kFwdCols - 1) / kFwdCols;
  const std::vector<T> w = weights<T>(P, logits, temperature);
  const bool vec = vec_ok<T>(P, xs, y, W);
  for (int k0 = 0; k0 < P; k0 += kMaxPaths) {
    const int count = std::min(kMaxPaths, P - k0);
    const Paths<T> ps = chunk<T>(k0, count, xs, nullptr, hs, ws, H, W);
    run_grid(planes * row_tiles * col_tiles, kThreads, [&] {
      if (vec) path_fusion_fwd_kernel<T, true>(ps, count, w.data(), k0, y, H, W, row_tiles, col_tiles, k0 > 0);
      else path_fusion_fwd_kernel<T, false>(ps, count, w.data(), k0, y, H, W, row_tiles, col_tiles, k0 > 0);
    });
  }
}

template <typename T>
void backward(int P, const T* g, const T** xs, T** dxs, const int* hs, const int* ws, const T* logits,
              double temperature, int64_t planes, int H, int W, bool input_grads, bool logit_grad, T* dlogits) {
  const int regions = (H + kRegion - 1) / kRegion;
  const int64_t blocks = planes * regions;
  std::vector<T> partial(P * blocks), dw(P);
  const std::vector<T> w = weights<T>(P, logits, temperature);
  const bool vec = vec_ok<T>(P, xs, g, W) && (!input_grads || vec_ok<T>(P, dxs, g, W));
  for (int k0 = 0; k0 < P; k0 += kMaxPaths) {
    const int count = std::min(kMaxPaths, P - k0);
    const Paths<T> ps = chunk<T>(k0, count, xs, input_grads ? dxs : nullptr, hs, ws, H, W);
    run_grid(blocks, kThreads, [&] {
      if (vec) path_fusion_bwd_kernel<T, true>(g, ps, count, w.data(), k0, H, W, regions, partial.data(), blocks,
                                               input_grads, logit_grad);
      else path_fusion_bwd_kernel<T, false>(g, ps, count, w.data(), k0, H, W, regions, partial.data(), blocks,
                                            input_grads, logit_grad);
    });
  }
  if (logit_grad) {
    run_grid(1, kThreads, [&] {
      path_fusion_dlogits_kernel<T>(partial.data(), blocks, logits, P, T(temperature), dw.data(), dlogits);
    });
  }
}

extern "C" {
void fwd_f64(int P, const double** xs, const int* hs, const int* ws, const double* l, double t, double* y,
             int64_t planes, int H, int W) { forward<double>(P, xs, hs, ws, l, t, y, planes, H, W); }
void fwd_f32(int P, const float** xs, const int* hs, const int* ws, const float* l, double t, float* y,
             int64_t planes, int H, int W) { forward<float>(P, xs, hs, ws, l, t, y, planes, H, W); }
void bwd_f64(int P, const double* g, const double** xs, double** dxs, const int* hs, const int* ws, const double* l,
             double t, int64_t planes, int H, int W, int ig, int lg, double* dl) {
  backward<double>(P, g, xs, dxs, hs, ws, l, t, planes, H, W, ig, lg, dl);
}
void bwd_f32(int P, const float* g, const float** xs, float** dxs, const int* hs, const int* ws, const float* l,
             double t, int64_t planes, int H, int W, int ig, int lg, float* dl) {
  backward<float>(P, g, xs, dxs, hs, ws, l, t, planes, H, W, ig, lg, dl);
}
}
"""


@pytest.fixture(scope="module")
def cuda_emulation(tmp_path_factory):
    return build_cuda_emulation(str(tmp_path_factory.mktemp("pf_cuda")), "path_fusion_emulation",
                                PATH_FUSION_EMULATION)


def _emulated(lib, logits, xs, size, temperature, g, input_grads=True, logit_grad=True):
    import ctypes

    dtype = xs[0].dtype
    suffix = "f64" if dtype == torch.float64 else "f32"
    ptr = ctypes.c_void_p
    xs = [x.detach().contiguous() for x in xs]
    n, c = xs[0].shape[:2]
    H, W = size
    P = len(xs)
    logits = logits.detach().to(dtype).contiguous()
    xp = (ptr * P)(*[x.data_ptr() for x in xs])
    hs = (ctypes.c_int * P)(*[x.shape[2] for x in xs])
    ws = (ctypes.c_int * P)(*[x.shape[3] for x in xs])
    y = torch.empty(n, c, H, W, dtype=dtype)
    getattr(lib, f"fwd_{suffix}")(P, xp, hs, ws, ptr(logits.data_ptr()), ctypes.c_double(temperature),
                                  ptr(y.data_ptr()), ctypes.c_int64(n * c), H, W)
    dxs = [torch.full_like(x, float("nan")) for x in xs]
    dp = (ptr * P)(*[d.data_ptr() for d in dxs])
    dl = torch.zeros(P, dtype=dtype)
    g = g.to(dtype).contiguous()
    getattr(lib, f"bwd_{suffix}")(P, ptr(g.data_ptr()), xp, dp, hs, ws, ptr(logits.data_ptr()),
                                  ctypes.c_double(temperature), ctypes.c_int64(n * c), H, W, int(input_grads),
                                  int(logit_grad), ptr(dl.data_ptr()))
    return [y, dl, *dxs]


EMULATED_CASES = {
    **{k: CASES[k] for k in ("pam_scales", "odd_ratios", "up32", "single_path", "one_dim_equal")},
    "nine_paths": ((6, 8), [(6, 8), (3, 4), (2, 2), (12, 16), (1, 1), (6, 8), (5, 7), (3, 8), (6, 4)]),
    "tall": ((40, 3), [(40, 3), (5, 1), (80, 6), (17, 2)]),
    "wide_row_chunks": ((2, 4100), [(1, 2000), (2, 4100)]),  # a bilinear row wider than the shared buffer
    "deep_footprint": ((600, 3), [(1, 3), (600, 3), (7, 2)]),  # one input row feeds 600 output rows
}
SINGLE_PLANE = {"wide_row_chunks", "deep_footprint"}


@pytest.mark.parametrize("case", list(EMULATED_CASES))
def test_cuda_kernels_emulated_fp64(cuda_emulation, case):
    size, sizes = EMULATED_CASES[case]
    n, c = (1, 1) if case in SINGLE_PLANE else (2, 3)
    logits, xs = _inputs(sizes, n=n, c=c)
    g = torch.randn(n, c, *size, dtype=torch.float64)
    got = _emulated(cuda_emulation, logits, xs, size, 0.7, g)
    want = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size, 0.7), logits, xs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# fp32 runs the staged integer-scale bilinear backward (fp64 takes the generic
# code): PAM ratios 2/4/8 with W % 4 == 0; "pam_tiles" spans two row bands and
# several staged column tiles, with a pooled input beside them.
EMULATED_FP32 = {
    "pam_scales": (CASES["pam_scales"], (2, 3)),
    "pam_tiles": (((32, 520), [(32, 520), (16, 260), (8, 130), (4, 65), (64, 1040)]), (1, 1)),
}


@pytest.mark.parametrize("case", list(EMULATED_FP32))
def test_cuda_kernels_emulated_fp32(cuda_emulation, case):
    (size, sizes), (n, c) = EMULATED_FP32[case]
    logits, xs = _inputs(sizes, n=n, c=c, dtype=torch.float32)
    g = torch.randn(n, c, *size)
    got = _emulated(cuda_emulation, logits, xs, size, 1.0, g)
    ref = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size), logits, xs, g)
    l64 = logits.detach().double().requires_grad_()
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    truth = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size), l64, xs64, g.double())
    assert_as_accurate_as_reference(got, ref, truth)


def test_cuda_kernels_emulated_partial_grads(cuda_emulation):
    size, sizes = CASES["odd_ratios"]
    logits, xs = _inputs(sizes)
    g = torch.randn(2, 3, *size, dtype=torch.float64)
    want = run_fwd_bwd(lambda l, xs: path_fusion_ref(l, xs, size), logits, xs, g)
    only_dx = _emulated(cuda_emulation, logits, xs, size, 1.0, g, logit_grad=False)
    assert torch.equal(only_dx[1], torch.zeros(len(xs), dtype=torch.float64))
    for a, b in zip(only_dx[2:], want[2:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    only_dl = _emulated(cuda_emulation, logits, xs, size, 1.0, g, input_grads=False)
    torch.testing.assert_close(only_dl[1], want[1], rtol=1e-12, atol=1e-12)
    assert all(d.isnan().all() for d in only_dl[2:])  # dx never written
