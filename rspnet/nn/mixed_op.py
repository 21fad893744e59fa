"""The mixed edge of a search cell: ``y = sum_k w_k op_k(x)``.

Two ways to keep what the backward pass needs:

``store``
    The plain behaviour and the reference: every candidate's activations are
    kept by autograd, so memory grows with the number of candidates.
``recompute``
    Only the edge input, the weights and the output are kept. The backward
    pass runs the candidates again one at a time, takes ``dL/dw_k = <g, y_k>``
    and back-propagates ``w_k g`` through candidate k before building the next,
    so at most one candidate's activations are alive: peak memory is close to
    a single-path network's, for one extra forward pass of compute.

Both give the same loss and gradients, to floating-point rounding.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from rspnet.architecture import PRIMITIVES
from rspnet.ops import channel_merge, mixed_sum

from .primitives import OPS, Zero
from .recompute import MEMORY_MODES, Recomputable, check_memory_mode, running_stats_kept, set_memory_mode

__all__ = ["MEMORY_MODES", "MixedOp", "set_memory_mode"]

# How the recompute pass treats a candidate: ``none`` contributes nothing and
# ``skip_connect`` is its own input, so neither is ever run again.
_ZERO, _IDENTITY, _COMPUTE = "zero", "identity", "compute"


def _kind(op: nn.Module) -> str:
    if isinstance(op, Zero):
        return _ZERO
    if isinstance(op, nn.Identity):
        return _IDENTITY
    return _COMPUTE


class _RecomputedMixture(torch.autograd.Function):
    """``sum_k weights[k] * ops[k](x)`` keeping only ``x`` and ``weights``.

    The ops' parameters are explicit inputs so that their gradients are
    returned as outputs of this function: no re-entrant ``.backward()``, so
    autograd hooks (DDP's gradient buckets) see them like any other gradient.
    The ops must be deterministic (no dropout), as recomputation replays them.
    """

    @staticmethod
    def forward(ctx, x, weights, ops, kinds, spans, *params):
        out = torch.zeros_like(x)
        for k, op in enumerate(ops):
            # a separate multiply and add, not addcmul_: the fused kernel rounds the
            # vectorised body and the tail differently, so equal inputs (flat regions
            # after a ReLU) would give unequal outputs and break max-pool ties
            # differently from ``store``, which changes the (sub)gradient taken there
            if kinds[k] != _ZERO:
                out.add_(op(x) * weights[k])
        ctx.save_for_backward(x, weights, *params)
        ctx.ops, ctx.kinds, ctx.spans = ops, kinds, spans
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weights, *params = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_params = ctx.needs_input_grad[5:]
        dx = torch.zeros_like(x) if need_x else None
        dw = torch.zeros_like(weights) if need_w else None
        dparams: list[torch.Tensor | None] = [None] * len(params)
        flat_grad = grad.reshape(-1)
        for k, op in enumerate(ctx.ops):
            kind = ctx.kinds[k]
            if kind == _ZERO:
                continue
            if kind == _IDENTITY:
                if need_w:
                    dw[k] = torch.dot(flat_grad, x.reshape(-1))
                if need_x:
                    dx.add_(grad * weights[k])
                continue
            lo, hi = ctx.spans[k]
            wanted = [i for i in range(lo, hi) if need_params[i]]
            # BN saves its running statistics for backward: restore them only
            # once the candidate's gradients are taken
            with running_stats_kept(op):
                with torch.enable_grad():
                    x_k = x.detach().requires_grad_(need_x)
                    y = op(x_k)
                if need_w:
                    dw[k] = torch.dot(flat_grad, y.reshape(-1))
                if need_x or wanted:
                    inputs = ([x_k] if need_x else []) + [params[i] for i in wanted]
                    grads = torch.autograd.grad(y, inputs, grad * weights[k])
                    if need_x:
                        dx.add_(grads[0])
                        grads = grads[1:]
                    for i, g in zip(wanted, grads):
                        dparams[i] = g
                del y
        return (dx, dw, None, None, None, *dparams)


class MixedOp(Recomputable, nn.Module):
    """One edge of a search cell: a weighted sum of every candidate operation.

    Args:
        C: channels of the edge's input and output.
        memory: ``"store"`` or ``"recompute"`` (see the module docstring); may
            be changed later with :func:`set_memory_mode`.
        partial: PC-DARTS partial channels: only ``C / partial`` channels go
            through the candidates, the rest bypass the edge, and a channel
            shuffle (groups=``partial``) mixes them for the next edge. 1 = off.
        primitives: candidate names, keys of ``OPS``.
        skip_bn: follow ``skip_connect`` with an affine-free BatchNorm too.

    Pooling candidates are followed by a BatchNorm without affine parameters,
    as in DARTS's search, so that every candidate's output has the same scale.
    With ``skip_bn`` (the default) so is ``skip_connect``: unnormalised, its
    output's scale is whatever the previous layer's is, and the architecture
    step grows its weight as a way to scale the edge's output instead of for
    what it computes — DARTS's collapse onto skip connections (a known-answer
    test, ``tests/search/test_known_answers.py``, picks skip_connect for a task
    it cannot solve without it, the right ops with it).
    """

    def __init__(self, C: int, memory: str = "store", partial: int = 1,
                 primitives: Sequence[str] = PRIMITIVES, skip_bn: bool = True):
        super().__init__()
        check_memory_mode(memory, "MixedOp")
        if partial < 1 or C % partial:
            raise ValueError(f"MixedOp: partial={partial} must divide C={C}")
        self.memory = memory
        self.partial = partial
        self.primitives = tuple(primitives)
        c = C // partial
        ops = []
        for name in self.primitives:
            op = OPS[name](c, False)
            if "pool" in name or (skip_bn and name == "skip_connect"):
                op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        self._kinds = tuple(_kind(op) for op in self.ops)
        counts = [sum(p.numel() for p in op.parameters()) for op in self.ops]
        # op k's parameters are entries spans[k][0]:spans[k][1] of the flat list
        # handed to the recompute function
        spans, start = [], 0
        for op in self.ops:
            end = start + len(list(op.parameters()))
            spans.append((start, end))
            start = end
        self._spans = tuple(spans)
        self.register_buffer("param_counts", torch.tensor(counts, dtype=torch.float32),
                             persistent=False)

    def _mix(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.memory == "store":
            return mixed_sum(weights, [op(x) for op in self.ops])
        params = [p for op in self.ops for p in op.parameters()]
        return _RecomputedMixture.apply(x, weights, tuple(self.ops), self._kinds, self._spans, *params)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.partial == 1:
            return self._mix(x, weights)
        c = x.shape[1] // self.partial
        return channel_merge([self._mix(x[:, :c], weights), x[:, c:]], groups=self.partial)

    def expected_params(self, weights: torch.Tensor) -> torch.Tensor:
        """``sum_k w_k * |params(op_k)|``: this edge's parameter count in expectation."""
        return (weights * self.param_counts.to(weights.dtype)).sum()
