"""The architecture step of the bi-level search, after DARTS.

First order (the default): ``α ← α - ξ_α ∇_α L_B(w, α)``, the weights held
where the last weight step left them.

Second order: DARTS's unrolled gradient
``∇_α L_B(w', α) - ξ ∇²_{α,w} L_A(w, α) ∇_{w'} L_B(w', α)`` with
``w' = w - ξ (momentum · buf + ∇_w L_A + wd · w)`` the weight step SGD would
take, and the Hessian-vector product by central finite differences
``(∇_α L_A(w + εv) - ∇_α L_A(w - εv)) / 2ε`` with ``ε = 0.01 / ‖v‖``.
The weights are moved in place and put back bit for bit, and BatchNorm
running statistics are restored, so the step changes only α / β.

Optional penalties are added to the architecture loss: on the expected
parameters (``ParamPenalty``) and on the expected FLOPs or latency of the
derived network beyond a budget (``CostPenalty``, ``rspnet.search.cost``).

Distributed (``reduce``, e.g. ``rspnet.engine.distributed.all_reduce_mean_``): the
architecture gradient and the loss are averaged over the ranks before the
optimiser step; in the second order, so are the virtual step's weight gradient
and the vector ``v`` (which sets ε), so that every rank moves its weights
identically and the result is the single-process one with the global batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from rspnet.engine.faults import NonFiniteError

ORDERS = ("first", "second")


@dataclass(frozen=True)
class ParamPenalty:
    """Light-weight pressure ``λ · E[params]`` on the architecture loss.

    With a ``budget`` (parameters), only the excess is penalised:
    ``λ · max(0, E[params] / budget - 1)``; without one, ``λ · E[params] / 1e6``
    (λ per million expected parameters).
    """
    weight: float
    budget: float | None = None

    def __call__(self, model: nn.Module) -> torch.Tensor:
        expected = model.expected_params()
        if self.budget is None:
            return self.weight * expected / 1e6
        return self.weight * torch.relu(expected / self.budget - 1)


@dataclass(frozen=True)
class CostPenalty:
    """``λ · max(0, E[cost] − budget) / budget``: only the excess of the
    derived network's expected cost (``model.expected_cost(table)``, FLOPs or
    ms as the ``rspnet.search.cost.CostTable`` measures them) is penalised."""
    table: object
    weight: float
    budget: float

    def expected(self, model: nn.Module) -> torch.Tensor:
        return model.expected_cost(self.table)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.weight * torch.relu(self.expected(model) - self.budget) / self.budget


class Architect:
    """Updates a supernet's architecture parameters on split-B batches.

    Args:
        model: provides ``loss(x, y)``, ``arch_parameters()``,
            ``weight_parameters()`` (and ``expected_params()`` with a penalty).
        optimizer: the optimiser of ``model.arch_parameters()``.
        order: ``"first"`` or ``"second"``.
        penalty: optional ``ParamPenalty`` / ``CostPenalty``, or a sequence of them (summed).
        reduce: averages a list of tensors over the data-parallel ranks in
            place (``None``: one process).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, order: str = "first",
                 penalty: Callable[[nn.Module], torch.Tensor] | Sequence | None = None,
                 reduce: Callable[[Sequence[torch.Tensor]], object] | None = None):
        if order not in ORDERS:
            raise ValueError(f"Architect: order must be one of {ORDERS}, got {order!r}")
        self.model, self.optimizer, self.order = model, optimizer, order
        self.penalties = (list(penalty) if isinstance(penalty, (list, tuple))
                          else [] if penalty is None else [penalty])
        self.reduce = reduce if reduce is not None else (lambda tensors: tensors)

    def arch_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.model.loss(images, labels)
        for penalty in self.penalties:
            loss = loss + penalty(self.model)
        return loss

    def step(self, train_batch: tuple[torch.Tensor, torch.Tensor],
             valid_batch: tuple[torch.Tensor, torch.Tensor],
             lr: float, w_optimizer: torch.optim.SGD) -> float:
        """One architecture update; returns the architecture loss on ``valid_batch``
        (averaged over the ranks). ``train_batch``, ``lr`` and ``w_optimizer``
        are used by the second order only. A loss that is not finite raises
        ``NonFiniteError`` before the optimiser step, leaving α / β untouched."""
        arch = self.model.arch_parameters()
        if self.order == "first":
            loss = self.arch_loss(*valid_batch)
            grads = torch.autograd.grad(loss, arch, allow_unused=True, materialize_grads=True)
        else:
            loss, grads = self._unrolled(train_batch, valid_batch, lr, w_optimizer)
        value = loss.detach().reshape(1).to(grads[0].dtype).clone()
        self.reduce([*grads, value])   # one collective: gradients and loss averaged together
        value = value.item()
        if not math.isfinite(value):
            raise NonFiniteError("the architecture loss (split B)", value)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(arch, grads):
            p.grad = g
        self.optimizer.step()
        return value

    def _unrolled(self, train_batch, valid_batch, lr, w_optimizer):
        model = self.model
        arch, weights = model.arch_parameters(), model.weight_parameters()
        original = [w.detach().clone() for w in weights]
        buffers = [b.detach().clone() for b in model.buffers()]
        try:
            self._virtual_step(train_batch, weights, lr, w_optimizer)
            loss = self.arch_loss(*valid_batch)
            grads = torch.autograd.grad(loss, arch + weights, allow_unused=True, materialize_grads=True)
            d_arch, v = grads[:len(arch)], list(grads[len(arch):])
            self.reduce(v)
            hessian_v = self._hessian_vector(train_batch, weights, original, v)
            return loss, [d - lr * h for d, h in zip(d_arch, hessian_v)]
        finally:
            with torch.no_grad():
                for w, value in zip(weights, original):
                    w.copy_(value)
                for b, value in zip(model.buffers(), buffers):
                    b.copy_(value)

    def _virtual_step(self, batch, weights, lr, w_optimizer) -> None:
        """``w ← w - lr (momentum · buf + g + wd · w)``: torch.optim.SGD's own
        update (dampening 0, no Nesterov), without touching its state."""
        grads = list(torch.autograd.grad(self.model.loss(*batch), weights, allow_unused=True,
                                         materialize_grads=True))
        self.reduce(grads)
        group_of = {id(p): g for g in w_optimizer.param_groups for p in g["params"]}
        with torch.no_grad():
            for w, g in zip(weights, grads):
                group = group_of[id(w)]
                step = g + group["weight_decay"] * w
                buf = w_optimizer.state.get(w, {}).get("momentum_buffer")
                if buf is not None:
                    step = step + group["momentum"] * buf
                w.sub_(lr * step)

    def _hessian_vector(self, batch, weights, original, v):
        arch = self.model.arch_parameters()
        norm = torch.cat([x.reshape(-1) for x in v]).norm()
        if norm == 0:   # no weight gradient on B: the Hessian-vector product is zero
            return [torch.zeros_like(p) for p in arch]
        eps = 0.01 / norm
        sides = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, w0, d in zip(weights, original, v):
                    w.copy_(w0).add_(d, alpha=sign * eps.item())
            sides.append(torch.autograd.grad(self.model.loss(*batch), arch, allow_unused=True,
                                             materialize_grads=True))
        return [(p - n) / (2 * eps) for p, n in zip(*sides)]
