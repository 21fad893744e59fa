"""Helpers shared by the op tests: run an op forward+backward, and the
accuracy rule for low-precision results."""
import torch


def run_fwd_bwd(fn, first, xs, g):
    """``[y, d first, d xs...]`` of ``y = fn(first, xs)`` for the output gradient ``g``."""
    y = fn(first, xs)
    grads = torch.autograd.grad(y, [first, *xs], g)
    return [y.detach(), *grads]


def assert_as_accurate_as_reference(got, ref_lowp, truth, slack=2.0):
    """The kernel's error against an fp64 truth is at most ``slack`` times the
    plain-PyTorch reference's own error at the same precision (plus two ulps of
    the values' magnitude, for results the reference gets exactly right)."""
    for a, r, t in zip(got, ref_lowp, truth):
        eps = torch.finfo(a.dtype).eps
        err = (a.double() - t).abs().max().item()
        ref_err = (r.double() - t).abs().max().item()
        bound = slack * ref_err + 2 * eps * max(t.abs().max().item(), 1.0)
        assert err <= bound, f"error {err:.3g} exceeds {bound:.3g} (reference error {ref_err:.3g})"
