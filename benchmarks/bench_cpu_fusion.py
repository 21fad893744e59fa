"""CPU micro-benchmarks of path_fusion and channel_merge, forward+backward:
rspnet's C++ kernels vs eager PyTorch vs torch.compile, time (pytest-benchmark)
and peak memory, in one run.

    pytest benchmarks/bench_cpu_fusion.py --benchmark-enable

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
"""
import pytest
import torch
import torch.nn.functional as F

from memory import peak_bytes
from rspnet.ops import channel_merge, path_fusion
from rspnet.ops.reference import channel_shuffle_ref

N, C, H, W = 2, 16, 128, 256
SCALES = 4


@pytest.fixture(scope="module")
def pam_data():
    torch.manual_seed(0)
    feats = [torch.randn(N, C, H >> i, W >> i, requires_grad=True) for i in range(SCALES)]
    logits = torch.randn(SCALES, requires_grad=True)
    g = torch.randn(N, C, H, W)
    return logits, feats, g


def pam_eager(logits, feats):
    b = F.softmax(logits, 0)
    out = b[0] * feats[0]
    for i in range(1, len(feats)):
        out = out + b[i] * F.interpolate(feats[i], size=(H, W), mode="bilinear", align_corners=False)
    return out


def pam_rspnet(logits, feats):
    return path_fusion(logits, feats, (H, W), backend="cpp")


PAM_METHODS = {"rspnet_cpp": pam_rspnet, "eager": pam_eager, "torch_compile": torch.compile(pam_eager)}


@pytest.mark.parametrize("method", list(PAM_METHODS))
def test_path_fusion_fwd_bwd(benchmark, pam_data, method):
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
    benchmark.extra_info["output_mib"] = round(N * C * H * W * 4 / 2**20, 2)
    benchmark.extra_info["shape"] = f"P={SCALES} scales -> {N}x{C}x{H}x{W} fp32"
    benchmark.group = "path_fusion fwd+bwd CPU"
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)


MERGE_C = 32


@pytest.fixture(scope="module")
def merge_data():
    torch.manual_seed(0)
    xs = [torch.randn(N, MERGE_C, H, W, requires_grad=True) for _ in range(2)]
    g = torch.randn(N, 2 * MERGE_C, H, W)
    return xs, g


def merge_eager(xs):
    return channel_shuffle_ref(torch.cat(xs, 1), 2)


MERGE_METHODS = {"rspnet_cpp": lambda xs: channel_merge(xs, 2, backend="cpp"), "eager": merge_eager,
                 "torch_compile": torch.compile(merge_eager)}


@pytest.mark.parametrize("method", list(MERGE_METHODS))
def test_channel_merge_fwd_bwd(benchmark, merge_data, method):
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
    benchmark.extra_info["shape"] = f"2 x {N}x{MERGE_C}x{H}x{W} fp32, groups=2"
    benchmark.group = "channel_merge fwd+bwd CPU"
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)
