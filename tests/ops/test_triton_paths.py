"""The Triton kernels' specialised and fallback paths against the plain-PyTorch
references, under the interpreter on CPU at small shapes: path_fusion's
integer-scale (constexpr SCALE) bilinear and pool paths and the generic code
for odd ratios, sizes that are not multiples of the tiles, more paths than a
launch takes, and partial gradients; channel_merge's one-launch kernel with
more inputs than a launch takes and empty inputs."""
import pytest
import torch

from rspnet.ops import _backend, channel_merge, channel_merge_ref, path_fusion
from rspnet.ops.reference import path_fusion_ref
from tests.helpers.ops import cpu_backends

pytestmark = pytest.mark.skipif("triton" not in cpu_backends("path_fusion"), reason="Triton cannot run here")

PF_CASES = {
    # PAM: identity, bilinear x2, x4, x8 (SCALE 2/4/8) and pool by 2
    "pam": ((16, 32), [(16, 32), (8, 16), (4, 8), (2, 4), (32, 64)]),
    # generic: odd ratios (5x7 -> 12x16), mixed pool factors, x3
    "odd": ((12, 16), [(5, 7), (12, 16), (24, 48), (4, 8), (3, 4), (6, 8), (36, 32), (4, 16), (12, 16)]),
    # not multiples of the tiles, x2 with a 1-row input
    "ragged": ((2, 134), [(1, 67), (2, 134), (4, 268)]),
}


def _run(fn, logits, xs, g):
    y = fn(logits, xs)
    return [y.detach(), *torch.autograd.grad(y, [logits, *xs], g, allow_unused=True)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(PF_CASES))
def test_path_fusion_paths(case, dtype):
    size, sizes = PF_CASES[case]
    torch.manual_seed(0)
    xs = [torch.randn(2, 3, *s, dtype=dtype, requires_grad=True) for s in sizes]
    logits = torch.randn(len(sizes), dtype=dtype, requires_grad=True)
    g = torch.randn(2, 3, *size, dtype=dtype)
    got = _run(lambda l, xs: path_fusion(l, xs, size, 0.7, backend="triton"), logits, xs, g)
    want = _run(lambda l, xs: path_fusion_ref(l, xs, size, 0.7), logits, xs, g)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("input_grads,logit_grad", [(True, False), (False, True)])
def test_path_fusion_partial_grads(input_grads, logit_grad):
    size, sizes = PF_CASES["pam"]
    xs = [torch.randn(1, 2, *s, dtype=torch.float64, requires_grad=input_grads) for s in sizes]
    logits = torch.randn(len(sizes), dtype=torch.float64, requires_grad=logit_grad)
    g = torch.randn(1, 2, *size, dtype=torch.float64)
    wrt = [logits] if logit_grad else xs
    got = torch.autograd.grad(path_fusion(logits, xs, size, backend="triton"), wrt, g)
    want = torch.autograd.grad(path_fusion_ref(logits, xs, size), wrt, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels,groups", [([3, 5], 2), ([2, 0, 4, 1, 3, 2], 4), ([4], 2), ([1, 1, 1, 1, 1], 5)])
def test_channel_merge_one_launch(channels, groups):
    xs = [torch.randn(2, c, 3, 5, dtype=torch.float64, requires_grad=True) for c in channels]
    g = torch.randn(2, sum(channels), 3, 5, dtype=torch.float64)
    y = channel_merge(xs, groups, backend="triton")
    assert torch.equal(y, channel_merge_ref(xs, groups))
    got = torch.autograd.grad(y, xs, g)
    want = torch.autograd.grad(channel_merge_ref(xs, groups), xs, g)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_scale_specialisation_is_chosen():
    from rspnet.ops.path_fusion import _scale
    from rspnet.ops.reference import resample_mode
    x = lambda h, w: torch.empty(1, 1, h, w)
    cases = [((8, 16), 2), ((4, 8), 4), ((2, 4), 8), ((5, 7), 0), ((4, 16), 0), ((32, 64), 2), ((48, 96), 0),
             ((16, 32), 0)]
    for hw, want in cases:
        assert _scale(x(*hw), resample_mode(hw, (16, 32)), 16, 32) == want, hw
    assert _backend.TRITON_OK
