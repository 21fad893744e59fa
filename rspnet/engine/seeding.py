"""Seeding and random generator states of a run.

A run seeds twice: once with a base seed before it builds its model, so that
every process builds identical weights, and once with ``rank_seed(base,
rank)`` after, so that each process draws its own stream (dropout, data
augmentation). ``rng_state`` / ``set_rng_state`` carry every generator
(torch CPU and CUDA, numpy, Python) through a checkpoint as tensors and
primitives, which ``torch.load(weights_only=True)`` accepts.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_everything", "rank_seed", "rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rank_seed(base: int, rank: int) -> int:
    """The seed of process ``rank`` once the model is built from ``base``."""
    return base * 1000 + rank
