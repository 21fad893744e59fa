"""Input validation shared by the public ops: every misuse becomes a
``ValueError``/``TypeError`` naming the argument, before any kernel runs."""
from __future__ import annotations

from typing import Sequence

import torch


def tensor_list(op: str, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (list, tuple)):
        raise TypeError(f"{op}: inputs must be a list or tuple of tensors, got {type(inputs).__name__}")
    if len(inputs) == 0:
        raise ValueError(f"{op}: inputs is empty; need at least one tensor")
    for k, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{op}: inputs[{k}] is a {type(x).__name__}, not a tensor")
    x0 = inputs[0]
    if not x0.is_floating_point():
        raise TypeError(f"{op}: inputs must be floating point, got {x0.dtype}")
    for k, x in enumerate(inputs[1:], start=1):
        if x.dtype != x0.dtype:
            raise ValueError(f"{op}: inputs[{k}] is {x.dtype} but inputs[0] is {x0.dtype}")
        if x.device != x0.device:
            raise ValueError(f"{op}: inputs[{k}] is on {x.device} but inputs[0] is on {x0.device}")
    return list(inputs)


def same_shapes(op: str, inputs: list[torch.Tensor]) -> None:
    for k, x in enumerate(inputs[1:], start=1):
        if x.shape != inputs[0].shape:
            raise ValueError(f"{op}: inputs[{k}] has shape {tuple(x.shape)} but inputs[0] has "
                             f"{tuple(inputs[0].shape)} (no broadcasting)")


def weight_vector(op: str, name: str, w: torch.Tensor, count: int, like: torch.Tensor) -> torch.Tensor:
    """A 1-D vector of ``count`` float weights on ``like``'s device.

    Weights on another device are moved there, unless they require grad: a
    silent copy would leave the caller's leaf without its gradient."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(w).__name__}")
    if w.dim() != 1:
        raise ValueError(f"{op}: {name} must be 1-D, got shape {tuple(w.shape)}")
    if w.shape[0] != count:
        raise ValueError(f"{op}: {w.shape[0]} {name} for {count} inputs")
    if not w.is_floating_point():
        raise TypeError(f"{op}: {name} must be floating point, got {w.dtype}")
    if w.device != like.device:
        if w.requires_grad:
            raise ValueError(f"{op}: {name} require grad and are on {w.device} while the inputs are on "
                             f"{like.device}; create them on {like.device}")
        w = w.to(like.device)
    return w


def dense_common_layout(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Inputs sharing one dense layout (contiguous or channels_last) as they
    are; anything else made contiguous, so kernels can walk flat memory."""
    x0 = xs[0]
    dense = x0.is_contiguous() or (x0.dim() == 4 and x0.is_contiguous(memory_format=torch.channels_last))
    if dense and all(x.stride() == x0.stride() for x in xs[1:]):
        return xs
    return [x.contiguous() for x in xs]
