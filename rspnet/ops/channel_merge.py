"""``channel_merge(inputs, groups)``: ``channel_shuffle(cat(inputs, 1), groups)`` in one pass.

The merge of a Recursive Stage Partial block (rspnet/nn/rsp.py): the
processed part and the bypassed part are concatenated and shuffled so that
the bypassed channels are processed at the next stage. Eager PyTorch materialises the concatenation and
then the shuffled copy; the fused op copies every input plane straight to its
shuffled place, and its backward copies the gradient planes straight back
into one tensor per input (the inverse permutation, split).

Registration follows the pattern of ``mixed_sum``: C++ ops
``rspnet::channel_merge`` / ``channel_merge_backward`` (CPU and CUDA), the
``triton_op`` pair ``channel_merge_triton`` / ``channel_merge_backward_triton``,
and ``channel_merge()`` validating and dispatching through ``_backend.select``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _backend, _checks
from .reference import channel_merge_ref

_OP = "channel_merge"


def channel_merge(inputs: Sequence[torch.Tensor], groups: int, *, backend: str | None = None) -> torch.Tensor:
    """Concatenate 4-D tensors along channels and shuffle the result in ``groups``.

    Args:
        inputs: tensors ``[N, C_i, H, W]`` with one N, H, W, dtype and device.
        groups: shuffle groups; must divide ``sum(C_i)``.
        backend: force ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"``;
            by default the fastest available (see ``rspnet.ops._backend``).

    Returns:
        ``[N, sum(C_i), H, W]`` (contiguous), channel ``(c % cpg) * groups + c // cpg``
        holding concatenated channel ``c`` (``cpg = sum(C_i) // groups``).
    """
    xs = _checks.tensor_list(_OP, inputs)
    groups = _check(xs, groups)
    ops = torch.ops.rspnet
    channels = [x.shape[1] for x in xs]
    name = _backend.select(_OP, xs[0], backend, lambda: _backend.signature(xs, groups), lambda: {
        "cuda": lambda: ops.channel_merge_backward(ops.channel_merge(xs, groups), channels, groups),
        "triton": lambda: ops.channel_merge_backward_triton(ops.channel_merge_triton(xs, groups), channels, groups)})
    return _backend.call(_OP, name, _backend.automatic(backend), {
        "reference": lambda: channel_merge_ref(xs, groups),
        "triton": lambda: ops.channel_merge_triton(xs, groups),
        "cuda": lambda: ops.channel_merge(xs, groups), "cpp": lambda: ops.channel_merge(xs, groups)}, xs[0])


def _check(xs: list[torch.Tensor], groups) -> int:
    x0 = xs[0]
    for k, x in enumerate(xs):
        if x.dim() != 4:
            raise ValueError(f"{_OP}: inputs must be 4-D [N, C, H, W], inputs[{k}] has shape {tuple(x.shape)}")
        if x.shape[0] != x0.shape[0] or x.shape[2:] != x0.shape[2:]:
            raise ValueError(f"{_OP}: inputs[{k}] has shape {tuple(x.shape)} but inputs[0] has "
                             f"{tuple(x0.shape)} (N, H and W must match)")
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"{_OP}: groups must be an int, got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"{_OP}: groups must be positive, got {groups}")
    total = sum(x.shape[1] for x in xs)
    if total % groups != 0:
        raise ValueError(f"{_OP}: {total} channels in all are not divisible by groups={groups}")
    return groups


# ----------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    xs, groups = inputs
    ctx.channels = [x.shape[1] for x in xs]
    ctx.groups = groups


def _make_backward(backward_op):
    def backward(ctx, grad):
        return list(backward_op(grad, ctx.channels, ctx.groups)), None
    return backward


def _fake_forward(inputs, groups):
    x0 = inputs[0]
    return x0.new_empty((x0.shape[0], sum(x.shape[1] for x in inputs), x0.shape[2], x0.shape[3]))


def _fake_backward(grad, channels, groups):
    n, _, h, w = grad.shape
    return [grad.new_empty((n, c, h, w)) for c in channels]


if _backend.has_kernel(_OP, "CPU"):
    torch.library.register_fake("rspnet::channel_merge")(_fake_forward)
    torch.library.register_fake("rspnet::channel_merge_backward")(_fake_backward)
    torch.library.register_autograd("rspnet::channel_merge",
                                    _make_backward(torch.ops.rspnet.channel_merge_backward),
                                    setup_context=_setup_context)


# ------------------------------------------------------------------- Triton
if _backend.TRITON_OK:
    from torch.library import triton_op, wrap_triton

    from ..kernels import channel_merge as _kern

    def _launch(parts: list[torch.Tensor], merged: torch.Tensor, groups: int, to_merged: bool) -> None:
        """Copy every part from/to its shuffled planes of ``merged``: one
        launch per MAX_PARTS inputs (one launch in all for the usual two).
        Empty parts are skipped (they own no channel)."""
        n, C, h, w = merged.shape
        plane = h * w
        if merged.numel() == 0:
            return
        live = [(p, offset) for p, offset in _offsets(parts) if p.shape[1] > 0]
        for start in range(0, len(live), _kern.MAX_PARTS):
            chunk = live[start:start + _kern.MAX_PARTS]
            c_base = chunk[0][1]
            bounds, ptrs = [], []
            for p, off in chunk:
                bounds.append(off - c_base)
                ptrs.append(p)
            cl = chunk[-1][1] + chunk[-1][0].shape[1] - c_base
            bounds = bounds[1:] + [cl] * (_kern.MAX_PARTS - len(chunk))
            ptrs += [ptrs[0]] * (_kern.MAX_PARTS - len(chunk))
            grid = (n * cl, (plane + _kern.BLOCK - 1) // _kern.BLOCK)
            wrap_triton(_kern.channel_merge_kernel)[grid](
                *ptrs, merged, plane, *bounds[:_kern.MAX_PARTS - 1], cl, c_base, C, groups,
                NUM_PARTS=len(chunk), TO_MERGED=to_merged, BLOCK=_kern.BLOCK)

    def _offsets(parts: list[torch.Tensor]):
        offset = 0
        for p in parts:
            yield p, offset
            offset += p.shape[1]

    @triton_op("rspnet::channel_merge_triton", mutates_args=())
    def channel_merge_triton(inputs: list[torch.Tensor], groups: int) -> torch.Tensor:
        xs = [x.contiguous() for x in inputs]
        n, _, h, w = xs[0].shape
        out = torch.empty((n, sum(x.shape[1] for x in xs), h, w), device=xs[0].device, dtype=xs[0].dtype)
        _launch(xs, out, groups, True)
        return out

    @triton_op("rspnet::channel_merge_backward_triton", mutates_args=())
    def channel_merge_backward_triton(grad: torch.Tensor, channels: list[int], groups: int) -> list[torch.Tensor]:
        g = grad.contiguous()
        n, _, h, w = g.shape
        dxs = [torch.empty((n, ck, h, w), device=g.device, dtype=g.dtype) for ck in channels]
        _launch(dxs, g, groups, False)
        return dxs

    channel_merge_triton.register_autograd(_make_backward(torch.ops.rspnet.channel_merge_backward_triton),
                                           setup_context=_setup_context)
    _backend.register_triton(_OP)
