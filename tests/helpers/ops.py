"""Helpers shared by the op tests: the backends that can run an op here, run
an op forward+backward, and the accuracy rule for low-precision results."""
import torch

from rspnet.ops import _backend


def cpu_backends(op: str) -> list[str]:
    """Every backend that can run ``op`` on CPU tensors here. The C++ kernels
    are expected whenever the extension is built: their absence fails the
    tests that need them instead of silently testing less."""
    names = ["reference", "cpp"]
    if _backend.TRITON_OK and _backend.triton_interpreter():
        names.append("triton")
    return names


def gpu_backends(op: str) -> list[str]:
    return ["reference", "cuda", "triton"]


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
