"""CPU micro-benchmarks of path_fusion and channel_merge, forward+backward:
rspnet's C++ kernels vs eager PyTorch vs torch.compile, time (pytest-benchmark)
and peak memory, in one run.

    pytest benchmarks/bench_cpu_fusion.py --benchmark-enable [--quick]

Peak memory is in each row's ``extra_info`` as ``peak_extra_mib``: live tensor
bytes at the peak of one forward+backward (torch.profiler allocation events),
minus the input gradients every method must produce (gradients are reset to
None before each step so all methods allocate them alike).

Workloads:
* path_fusion: a macro-supernet node's PAM fusion at CPU scale, four scales
  (1/1, 1/2, 1/4, 1/8 of the output) fused to 128x256, n=2, c=16, fp32; the
  eager peer is the composition a user would write (softmax, then
  w_0 x_0 + sum_p w_p interpolate(x_p)).
* channel_merge: the RSP merge, two halves of 32 channels at 128x256, n=2,
  groups=2; the peer is cat + view/transpose/reshape.

``--quick`` (benchmarks/conftest.py): n=1, c=4 at 16x32, two rounds.
"""
import pytest
import torch
import torch.nn.functional as F

from memory import peak_bytes
from rspnet.ops import channel_merge, path_fusion
from rspnet.ops.reference import channel_shuffle_ref

N, C, H, W = 2, 16, 128, 256
QUICK = 1, 4, 16, 32
SCALES = 4


@pytest.fixture(scope="module")
def shape(quick):
    return QUICK if quick else (N, C, H, W)


@pytest.fixture(scope="module")
def pam_data(shape):
    torch.manual_seed(0)
    n, c, h, w = shape
    feats = [torch.randn(n, c, h >> i, w >> i, requires_grad=True) for i in range(SCALES)]
    logits = torch.randn(SCALES, requires_grad=True)
    g = torch.randn(n, c, h, w)
    return logits, feats, g


def pam_eager(logits, feats):
    size = tuple(feats[0].shape[2:])
    b = F.softmax(logits, 0)
    out = b[0] * feats[0]
    for i in range(1, len(feats)):
        out = out + b[i] * F.interpolate(feats[i], size=size, mode="bilinear", align_corners=False)
    return out


def pam_rspnet(logits, feats):
    return path_fusion(logits, feats, tuple(feats[0].shape[2:]), backend="cpp")


PAM_METHODS = {"rspnet_cpp": pam_rspnet, "eager": pam_eager, "torch_compile": torch.compile(pam_eager)}


@pytest.mark.parametrize("method", list(PAM_METHODS))
def test_path_fusion_fwd_bwd(benchmark, pam_data, rounds, method):
    logits, feats, g = pam_data
    fn = PAM_METHODS[method]

    def step():
        for t in (logits, *feats):
            t.grad = None
        fn(logits, feats).backward(g)

    step()  # compile / warm up
    grad_bytes = sum(x.numel() * x.element_size() for x in feats)
    peak = peak_bytes(step) - grad_bytes
    benchmark.extra_info["peak_extra_mib"] = round(peak / 2**20, 2)
    n, c, h, w = g.shape
    benchmark.extra_info["output_mib"] = round(g.numel() * 4 / 2**20, 2)
    benchmark.extra_info["shape"] = f"P={SCALES} scales -> {n}x{c}x{h}x{w} fp32"
    benchmark.group = "path_fusion fwd+bwd CPU"
    benchmark.pedantic(step, rounds=rounds(10), iterations=1, warmup_rounds=1)


MERGE_C = 32


@pytest.fixture(scope="module")
def merge_data(shape, quick):
    torch.manual_seed(0)
    n, _, h, w = shape
    c = shape[1] if quick else MERGE_C
    xs = [torch.randn(n, c, h, w, requires_grad=True) for _ in range(2)]
    g = torch.randn(n, 2 * c, h, w)
    return xs, g


def merge_eager(xs):
    return channel_shuffle_ref(torch.cat(xs, 1), 2)


MERGE_METHODS = {"rspnet_cpp": lambda xs: channel_merge(xs, 2, backend="cpp"), "eager": merge_eager,
                 "torch_compile": torch.compile(merge_eager)}


@pytest.mark.parametrize("method", list(MERGE_METHODS))
def test_channel_merge_fwd_bwd(benchmark, merge_data, rounds, method):
    xs, g = merge_data
    fn = MERGE_METHODS[method]

    def step():
        for t in xs:
            t.grad = None
        fn(xs).backward(g)

    step()
    grad_bytes = sum(x.numel() * x.element_size() for x in xs)
    peak = peak_bytes(step) - grad_bytes
    benchmark.extra_info["peak_extra_mib"] = round(peak / 2**20, 2)
    n, c, h, w = xs[0].shape
    benchmark.extra_info["shape"] = f"2 x {n}x{c}x{h}x{w} fp32, groups=2"
    benchmark.group = "channel_merge fwd+bwd CPU"
    benchmark.pedantic(step, rounds=rounds(20), iterations=1, warmup_rounds=2)
