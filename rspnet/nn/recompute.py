"""Activation recomputation for the supernets' ``recompute`` memory mode.

``store`` is the plain behaviour and the reference: autograd keeps whatever each
operation saves for backward. In ``recompute`` every part that dominates a
search step's memory keeps only its inputs and runs again during backward:

* the mixed edges (``MixedOp``, its own autograd function, ``mixed_op.py``);
* the stem, the head up to its 1/4-resolution class scores, and each node of the
  stage-2 trellis: :func:`checkpoint` (PyTorch's non-reentrant activation
  checkpointing, BatchNorm running statistics guarded);
* the loss: :func:`upsampled_cross_entropy`, the head's final bilinear
  upsampling and the cross-entropy fused, one image at a time, so that no
  full-resolution map of class scores outlives one image's loss or gradient.

Every module with a memory mode derives from :class:`Recomputable`;
:func:`set_memory_mode` switches all of them inside a model.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.autograd.function import once_differentiable

MEMORY_MODES = ("store", "recompute")


def check_memory_mode(memory: str, owner: str = "memory") -> str:
    if memory not in MEMORY_MODES:
        raise ValueError(f"{owner}: memory must be one of {MEMORY_MODES}, got {memory!r}")
    return memory


class Recomputable:
    """Mixin of the modules that have a ``memory`` mode (``store`` or
    ``recompute``), which :func:`set_memory_mode` switches."""

    memory: str = "store"


def set_memory_mode(module: nn.Module, memory: str) -> nn.Module:
    """Switch every :class:`Recomputable` module inside ``module`` (mixed edges,
    stem, head, trellis) to ``memory``; returns ``module``."""
    check_memory_mode(memory)
    for m in module.modules():
        if isinstance(m, Recomputable):
            m.memory = memory
    return module


@contextlib.contextmanager
def running_stats_kept(*modules: nn.Module) -> Iterator[None]:
    """Undo whatever a re-run forward does to the buffers (BatchNorm running
    statistics and ``num_batches_tracked``): the first forward updated them
    already, a recompute must not count the batch twice."""
    buffers = [b for m in modules for b in m.buffers()]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def checkpoint(fn: Callable[..., torch.Tensor], *args, modules: tuple[nn.Module, ...]):
    """``fn(*args)`` keeping only ``args`` for backward: PyTorch's non-reentrant
    activation checkpointing (gradients of the parameters of ``modules`` flow as
    usual, ``autograd.grad(inputs=...)`` and ``backward(inputs=...)`` work).
    The recomputation in backward runs with the buffers of ``modules`` restored
    afterwards, so BatchNorm counts the batch once. ``fn`` must be
    deterministic given its inputs (no dropout). Without autograd it is a
    plain call."""
    if not torch.is_grad_enabled():
        return fn(*args)

    def contexts():
        return contextlib.nullcontext(), running_stats_kept(*modules)
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, context_fn=contexts,
                                             preserve_rng_state=False)


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _labelled_total(labels: torch.Tensor, ignore_index: int, weight: torch.Tensor | None,
                    dtype: torch.dtype) -> torch.Tensor:
    """The denominator of the mean cross-entropy: the labelled pixels (with
    class weights: the sum of their classes' weights), at least 1 (weighted:
    the smallest positive number), so that a batch without a labelled pixel
    has loss 0 instead of 0 / 0."""
    labelled = labels != ignore_index
    if weight is None:
        return labelled.sum().to(dtype).clamp_min(1)
    return (weight.to(dtype)[labels.masked_fill(~labelled, 0)] * labelled).sum().clamp_min(torch.finfo(dtype).tiny)


class _UpsampledCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``upsample(scores)`` against ``labels`` (with
    class weights: the weighted mean, as ``labelled_cross_entropy``), one
    image at a time; keeps only the low-resolution scores (the labels are the
    caller's). Backward recomputes each image's upsampled scores, turns them
    into ``(softmax - onehot) * weight[label]`` in place and takes them back
    through the upsampling."""

    @staticmethod
    def forward(ctx, scores, labels, ignore_index, weight):
        size = tuple(labels.shape[-2:])
        total = None
        w = None if weight is None else weight.to(scores.dtype)
        for i in range(scores.shape[0]):
            up = _upsample(scores[i:i + 1], size)
            loss = F.cross_entropy(up, labels[i:i + 1], weight=w, ignore_index=ignore_index, reduction="sum")
            total = loss if total is None else total + loss
            del up
        count = _labelled_total(labels, ignore_index, w, total.dtype)
        ctx.save_for_backward(scores, labels, count, *(() if weight is None else (w,)))
        ctx.ignore_index = ignore_index
        return total / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        scores, labels, count, *weight = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        size = tuple(labels.shape[-2:])
        # no labelled pixel: every entry is masked, the gradient is 0 as F.cross_entropy's
        scale = grad / count
        out = torch.empty_like(scores)
        for i in range(scores.shape[0]):
            target = labels[i:i + 1]
            ignored = target == ctx.ignore_index
            with torch.enable_grad():
                q = scores[i:i + 1].detach().requires_grad_()
                up = _upsample(q, size)
            # d(-w[target] log softmax(up)[target]) / d(up) = w[target] (softmax(up) - onehot(target))
            g = torch.softmax(up.detach(), 1)
            safe = target.masked_fill(ignored, 0)
            g.scatter_add_(1, safe.unsqueeze(1), ignored.to(g.dtype).sub_(1).unsqueeze(1))
            pixel = (~ignored).to(g.dtype).mul_(scale)
            if weight:
                pixel.mul_(weight[0].to(g.dtype)[safe])
            g.mul_(pixel.unsqueeze(1))
            out[i:i + 1] = torch.autograd.grad(up, q, g)[0]
            del up, g
        return out, None, None, None


def labelled_cross_entropy(scores: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                           weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean cross-entropy over the labelled pixels, as
    ``F.cross_entropy(scores, labels, ignore_index=, weight=)`` (with class
    weights: the weighted mean), except that a batch with no labelled pixel
    has loss 0 with zero gradients (nothing to learn from) instead of
    0 / 0 = nan, which a run would take for a divergence."""
    total = F.cross_entropy(scores, labels, weight=weight, ignore_index=ignore_index, reduction="sum")
    return total / _labelled_total(labels, ignore_index, weight, total.dtype)


def upsampled_cross_entropy(scores: torch.Tensor, labels: torch.Tensor,
                            ignore_index: int = -100, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``labelled_cross_entropy(upsample(scores, labels' size), labels,
    ignore_index, weight)`` (bilinear, ``align_corners=False``) without ever
    holding more than one image's full-resolution scores."""
    return _UpsampledCrossEntropy.apply(scores, labels, ignore_index, weight)
