"""``CachedDataset``: a data set whose raw samples are rendered (or decoded)
once and kept in memory, with the data set's transform applied per access.

Synthetic scenes are deterministic and cheap to keep; re-rendering them every
epoch would cost as much CPU as training the small network."""
from __future__ import annotations

import torch

__all__ = ["CachedDataset"]


class CachedDataset(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset
        self.samples = [dataset.sample(i) for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image, label = self.samples[index]
        return self.dataset.transform(image, label, index)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
