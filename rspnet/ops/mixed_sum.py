"""``mixed_sum(weights, inputs)``: ``y = sum_k weights[k] * inputs[k]``.

The weighted sum of a DARTS mixed edge. The fused backward makes one pass
over the data: ``dx_k = w_k * g`` and ``dw_k = sum(g * x_k)``, without the K
products or a stacked copy that eager PyTorch materialises.

Registration follows one pattern for every rspnet op:
  * ``rspnet::mixed_sum`` / ``rspnet::mixed_sum_backward``: C++ schemas
    (csrc/rspnet.cpp) with CPU and CUDA kernels; fake kernels and autograd
    registered here.
  * ``rspnet::mixed_sum_triton`` / ``..._backward_triton``: the same contract
    as ``torch.library.triton_op``s, so torch.compile sees the Triton kernels.
  * ``mixed_sum()``: validation, then dispatch (``_backend.select``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _backend, _checks
from .reference import mixed_sum_ref

_OP = "mixed_sum"


def mixed_sum(weights: torch.Tensor, inputs: Sequence[torch.Tensor], *, backend: str | None = None) -> torch.Tensor:
    """Weighted sum of K same-shape tensors, differentiable in both arguments.

    Args:
        weights: 1-D tensor of K weights (any float dtype; on the inputs' device,
            or on another device if it does not require grad).
        inputs: K tensors of one shape, dtype and device (any rank).
        backend: force ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"``;
            by default the fastest available (see ``rspnet.ops._backend``).
    """
    xs = _checks.tensor_list(_OP, inputs)
    _checks.same_shapes(_OP, xs)
    w = _checks.weight_vector(_OP, "weights", weights, len(xs), xs[0])
    ops = torch.ops.rspnet
    name = _backend.select(_OP, xs[0], backend, lambda: _backend.signature(xs), lambda: {
        "cuda": lambda: ops.mixed_sum_backward(ops.mixed_sum(w, xs), w, xs, True, True),
        "triton": lambda: ops.mixed_sum_backward_triton(ops.mixed_sum_triton(w, xs), w, xs, True, True)})
    return _backend.call(_OP, name, _backend.automatic(backend), {
        "reference": lambda: mixed_sum_ref(w, xs),
        "triton": lambda: ops.mixed_sum_triton(w, xs),
        "cuda": lambda: ops.mixed_sum(w, xs), "cpp": lambda: ops.mixed_sum(w, xs)}, xs[0])


# ----------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    weights, xs = inputs
    ctx.save_for_backward(weights, *xs)
    ctx.weight_grad = ctx.needs_input_grad[0]
    ctx.input_grads = any(ctx.needs_input_grad[1]) if isinstance(ctx.needs_input_grad[1], (list, tuple)) \
        else bool(ctx.needs_input_grad[1])


def _make_backward(backward_op):
    def backward(ctx, grad):
        weights, *xs = ctx.saved_tensors
        dxs, dw = backward_op(grad, weights, xs, ctx.input_grads, ctx.weight_grad)
        return (dw if ctx.weight_grad else None), (list(dxs) if ctx.input_grads else [None] * len(xs))
    return backward


def _fake_forward(weights, inputs):
    return torch.empty_like(_checks.dense_common_layout(list(inputs))[0])


def _fake_backward(grad, weights, inputs, input_grads, weight_grad):
    xs = _checks.dense_common_layout(list(inputs))
    return ([torch.empty_like(x) for x in xs] if input_grads else []), weights.new_empty(weights.shape)


if _backend.has_kernel(_OP, "CPU"):
    torch.library.register_fake("rspnet::mixed_sum")(_fake_forward)
    torch.library.register_fake("rspnet::mixed_sum_backward")(_fake_backward)
    torch.library.register_autograd("rspnet::mixed_sum", _make_backward(torch.ops.rspnet.mixed_sum_backward),
                                    setup_context=_setup_context)


# ------------------------------------------------------------------- Triton
def _acc_weights(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    acc = torch.float64 if like.dtype == torch.float64 else torch.float32
    return weights.detach().to(device=like.device, dtype=acc).contiguous()


def _chunks(k: int, size: int):
    return [(k0, min(size, k - k0)) for k0 in range(0, k, size)]


if _backend.TRITON_OK:
    from torch.library import triton_op, wrap_triton

    from ..kernels import mixed_sum as _kern

    def _pad(ptrs: list[torch.Tensor]) -> list[torch.Tensor]:
        # Unused pointer slots get a live tensor; K (constexpr) keeps them unread.
        return ptrs + [ptrs[0]] * (_kern.MAX_INPUTS - len(ptrs))

    @triton_op("rspnet::mixed_sum_triton", mutates_args=())
    def mixed_sum_triton(weights: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
        xs = _checks.dense_common_layout(list(inputs))
        y = torch.empty_like(xs[0])
        n = y.numel()
        if n == 0:
            return y
        w = _acc_weights(weights, y)
        grid = (triton_cdiv(n, _kern.BLOCK),)
        for k0, kc in _chunks(len(xs), _kern.MAX_INPUTS):
            wrap_triton(_kern.mixed_sum_fwd_kernel)[grid](
                y, w[k0:], *_pad(xs[k0:k0 + kc]), n, K=kc, ACCUMULATE=k0 > 0, BLOCK=_kern.BLOCK)
        return y

    @triton_op("rspnet::mixed_sum_backward_triton", mutates_args=())
    def mixed_sum_backward_triton(grad: torch.Tensor, weights: torch.Tensor, inputs: list[torch.Tensor],
                                  input_grads: bool, weight_grad: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        xs = _checks.dense_common_layout(list(inputs))
        g = grad.to(xs[0].dtype)
        if g.stride() != xs[0].stride():
            g = torch.empty_like(xs[0]).copy_(g)
        n = g.numel()
        dxs = [torch.empty_like(x) for x in xs] if input_grads else []
        w = _acc_weights(weights, g)
        tiles = triton_cdiv(n, _kern.BLOCK)
        if n == 0 or not (input_grads or weight_grad):
            return dxs, torch.zeros_like(weights)
        # Every [k, tile] partial is written when weight_grad (no zero-fill);
        # without it the kernel writes none and w stands in as the pointer.
        partial = torch.empty(len(xs), tiles, device=g.device, dtype=w.dtype) if weight_grad else w
        for k0, kc in _chunks(len(xs), _kern.MAX_INPUTS):
            outs = dxs[k0:k0 + kc] if input_grads else xs[k0:k0 + kc]
            wrap_triton(_kern.mixed_sum_bwd_kernel)[(tiles,)](
                g, w[k0:], partial[k0:], *_pad(xs[k0:k0 + kc]), *_pad(outs), n, tiles,
                K=kc, INPUT_GRADS=input_grads, WEIGHT_GRAD=weight_grad, BLOCK=_kern.BLOCK)
        if not weight_grad:
            return dxs, torch.zeros_like(weights)
        return dxs, partial.sum(1).to(weights.dtype)

    def triton_cdiv(a: int, b: int) -> int:
        return (a + b - 1) // b

    mixed_sum_triton.register_autograd(_make_backward(torch.ops.rspnet.mixed_sum_backward_triton),
                                       setup_context=_setup_context)
    _backend.register_triton(_OP)
