"""The process group: who this process is in a data-parallel run, and the
collectives the run engine and the search use.

Both CLIs run unchanged as one process or under ``torchrun``::

    torchrun --nproc_per_node=2 -m rspnet.search ...
    torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
             --nproc_per_node=8 -m rspnet.train ...

``init`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group
through ``env://`` (NCCL on CUDA, one GPU per process, ``cuda:LOCAL_RANK``;
gloo on CPU). Without torchrun (``WORLD_SIZE`` unset or 1) nothing is
initialised and every helper below is a no-op, so the single-process code path
is the same code.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["Context", "init", "cleanup", "session", "is_initialized", "rank", "world_size",
           "is_main", "barrier", "all_reduce_mean_", "all_reduce_sum", "broadcast_object",
           "broadcast_tensors_", "gather_object", "average_buffers_", "mean_and_any", "wrap_ddp",
           "convert_sync_batchnorm"]


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the world, its device."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None      # None: not distributed
    owns_group: bool = False        # init() created the process group (cleanup() destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init(device: str | torch.device) -> Context:
    """Join the process group torchrun describes, or stay a single process.

    ``device`` is the CLI's ``--device``: with CUDA each process takes
    ``cuda:LOCAL_RANK`` (an explicit index is refused under torchrun), NCCL;
    otherwise gloo. A process group that already exists (e.g. created by a
    caller that runs several searches in one job) is used as it is."""
    device = torch.device(device)
    world = _env_int("WORLD_SIZE", 1)
    if dist.is_available() and dist.is_initialized():
        world, rank_ = dist.get_world_size(), dist.get_rank()
        local = _env_int("LOCAL_RANK", rank_ % max(torch.cuda.device_count(), 1))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        return Context(rank_, world, local, device, dist.get_backend(), owns_group=False)
    if world <= 1:
        return Context(device=device)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    rank_, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if device.index is not None and device.index != local:
            raise ValueError(f"--device {device}: under torchrun every process uses cuda:LOCAL_RANK "
                             f"(this one cuda:{local}); pass --device cuda")
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA "
                               f"device(s) on this node: use --nproc_per_node <= the GPU count")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method="env://", rank=rank_, world_size=world,
                                device_id=device)
        backend = "nccl"
    else:
        dist.init_process_group("gloo", init_method="env://", rank=rank_, world_size=world)
        backend = "gloo"
    return Context(rank_, world, local, device, backend, owns_group=True)


def cleanup(ctx: Context) -> None:
    """Destroy the process group if ``init`` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str | torch.device) -> Iterator[Context]:
    ctx = init(device)
    try:
        yield ctx
    finally:
        cleanup(ctx)


# ------------------------------------------------------------------ queries
def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# -------------------------------------------------------------- collectives
def all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Average ``tensors`` (e.g. gradients) over the ranks, in place, with one
    collective on a flat buffer; returns them. A no-op in one process."""
    tensors = list(tensors)
    if not is_initialized() or not tensors:
        return tensors
    world = dist.get_world_size()
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault((t.dtype, t.device), []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        with torch.no_grad():
            for t in group:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n
    return tensors


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over the ranks of ``tensor`` (a new tensor; the input in one process)."""
    if not is_initialized():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_tensors_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``tensors`` to every rank, in place."""
    if not is_initialized():
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled: for trusted, small objects
    such as a loaded checkpoint or an error message)."""
    if not is_initialized():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank ``dst`` (``None`` elsewhere); ``[obj]`` in one process."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def average_buffers_(module: nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over
    the ranks. With plain BatchNorm each rank's statistics see only its shard;
    averaging makes them the same everywhere before an evaluation or a
    checkpoint. (SyncBatchNorm's are identical already; averaging keeps them.)"""
    if not is_initialized():
        return
    all_reduce_mean_([b for b in module.buffers() if b.is_floating_point()])


def mean_and_any(value: torch.Tensor, flag: bool) -> tuple[float, bool]:
    """The mean over the ranks of the scalar ``value`` and whether ``flag`` is
    set on any rank, with one small collective (float64); the training loops
    call it once per step, so that every rank sees a NaN, or a stop request
    that reached only some ranks, at the same step."""
    stats = torch.stack([value.detach().to(torch.float64).reshape(()),
                         torch.tensor(float(flag), dtype=torch.float64, device=value.device)])
    total, flags = all_reduce_sum(stats).tolist()
    return total / world_size(), flags > 0


# ------------------------------------------------------------------- models
def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``SyncBatchNorm`` for every BatchNorm, on CUDA under torchrun; the module
    unchanged otherwise (SyncBatchNorm has no CPU implementation)."""
    if is_initialized() and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def wrap_ddp(module: nn.Module, device: torch.device,
             ignore: Sequence[nn.Parameter] = ()) -> nn.Module:
    """``DistributedDataParallel`` around ``module`` (itself in one process).

    ``ignore``: parameters that DDP must neither synchronise nor wait for —
    the architecture parameters of a supernet, which the weight step does not
    differentiate and whose gradients the search averages itself."""
    if not is_initialized():
        return module
    ignored = {id(p) for p in ignore}
    names = [name for name, p in module.named_parameters() if id(p) in ignored]
    if names:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
    # DDP builds its gradient buckets from the parameters that require grad and
    # are not ignored, but it matches the ignore list against "<module>.<name>",
    # which for a parameter of the root module (a supernet's ``alphas``) is
    # ".alphas" and never matches: the parameter would get a bucket slot that
    # the weight step never fills. Constructing DDP while they are frozen
    # keeps them out of the buckets for good.
    frozen = [p for p in module.parameters() if id(p) in ignored and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            output_device=device.index if device.type == "cuda" else None)
    finally:
        for p in frozen:
            p.requires_grad_(True)
