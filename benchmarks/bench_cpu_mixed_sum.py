"""CPU micro-benchmark of mixed_sum, forward+backward: rspnet's C++ kernel vs
eager PyTorch vs torch.compile, time (pytest-benchmark) and peak memory.

    pytest benchmarks/bench_cpu_mixed_sum.py --benchmark-enable [--quick]

Peak memory is reported in each row's ``extra_info`` as ``peak_extra_mib``:
live tensor bytes at the peak of one forward+backward, minus the K input
gradients every method must produce (gradients are reset to None before each
step so all methods allocate them alike).
"""
import pytest
import torch

from memory import peak_bytes
from rspnet.ops import mixed_sum

K = 8
SHAPE = (8, 16, 64, 128)
QUICK_SHAPE = (2, 4, 16, 32)   # --quick (benchmarks/conftest.py)


@pytest.fixture(scope="module")
def data(quick):
    torch.manual_seed(0)
    shape = QUICK_SHAPE if quick else SHAPE
    xs = [torch.randn(shape, requires_grad=True) for _ in range(K)]
    alpha = torch.randn(K, requires_grad=True)
    g = torch.randn(shape)
    return alpha, xs, g


def eager(alpha, xs):
    w = torch.softmax(alpha, 0)
    return sum(wi * xi for wi, xi in zip(w, xs))


def rspnet_cpp(alpha, xs):
    return mixed_sum(torch.softmax(alpha, 0), xs, backend="cpp")


_compiled = torch.compile(eager)
METHODS = {"rspnet_cpp": rspnet_cpp, "eager": eager, "torch_compile": _compiled}


@pytest.mark.parametrize("method", list(METHODS))
def test_mixed_sum_fwd_bwd(benchmark, data, rounds, method):
    alpha, xs, g = data
    fn = METHODS[method]

    def step():
        for t in (alpha, *xs):
            t.grad = None
        fn(alpha, xs).backward(g)

    step()  # compile / warm up
    grad_bytes = sum(x.numel() * x.element_size() for x in xs)
    peak = peak_bytes(step) - grad_bytes
    benchmark.extra_info["peak_extra_mib"] = round(peak / 2**20, 2)
    benchmark.extra_info["shape"] = f"K={K} x {tuple(g.shape)} fp32"
    benchmark.group = "mixed_sum fwd+bwd CPU"
    benchmark.pedantic(step, rounds=rounds(20), iterations=1, warmup_rounds=2)
