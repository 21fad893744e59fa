"""``ShardSampler``: the data order of a resumable, data-parallel run."""
from __future__ import annotations

import torch

__all__ = ["ShardSampler"]


class ShardSampler(torch.utils.data.distributed.DistributedSampler):
    """``DistributedSampler`` (one shard per rank, a permutation that depends
    only on ``seed + epoch``; call ``set_epoch``) that can start mid-epoch:
    ``set_start(n)`` skips this rank's first ``n`` indices, so that a run
    resumed after ``k`` batches of ``b`` sees exactly the batches that the
    uninterrupted run saw next (``set_start(k * b)``), without loading the
    skipped samples.

    With ``drop_last=True`` and a global batch ``B = world · b``, global batch
    ``k`` (the union of every rank's batch ``k``) is the same set of samples,
    positions ``[kB, (k+1)B)`` of the permutation, for any number of ranks."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(super().__len__() - self.start, 0)
