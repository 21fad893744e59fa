"""The checkpoint of a trained network: its format, and how to read one back
for evaluation, export or further training.

A training checkpoint (``checkpoint-step<N>.pt``, ``best.pt``) holds, besides
the run's position (``rspnet.engine.ResumableLoop``), the weights, the
optimiser, the schedule, the config, and the architecture it was trained for
with its fingerprint; loading it into another architecture fails with a
message that names both (``check_architecture``). ``"model"`` is always the
weights to evaluate, export and predict with: with ``--ema`` the moving
average, and the weights the optimiser steps are then ``"trained_model"``.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from rspnet.architecture import Architecture
from rspnet.engine.checkpoint import CheckpointError, CheckpointSeries, load_checkpoint
from rspnet.models import RSPNet

__all__ = ["TRAIN_FORMAT", "CHECKPOINT_PREFIX", "checkpoint_series", "load_train_checkpoint",
           "check_architecture", "load_model_weights", "load_trained_model"]

TRAIN_FORMAT = "rspnet-train-checkpoint/2"
CHECKPOINT_PREFIX = "checkpoint-step"   # checkpoint-step00000128.pt: named by the step count


def checkpoint_series(out_dir: str | os.PathLike, keep: int = 3) -> CheckpointSeries:
    return CheckpointSeries(out_dir, CHECKPOINT_PREFIX, keep)


def load_train_checkpoint(path: str | os.PathLike,
                          map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A verified checkpoint of ``rspnet.train`` (``CheckpointError`` otherwise)."""
    state = load_checkpoint(path, map_location, format=TRAIN_FORMAT, kind="rspnet training")
    for key in ("model", "architecture", "num_classes"):
        if key not in state:
            raise CheckpointError(f"checkpoint {os.fspath(path)!r} has no {key!r} entry")
    return state


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            sub = f"{where}.{key}" if where else str(key)
            if key not in a or key not in b:
                return f"{sub}: {'missing' if key not in a else a[key]!r} vs {'missing' if key not in b else b[key]!r}"
            found = _first_difference(a[key], b[key], sub)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        if len(a) != len(b):
            return f"{where}: {len(a)} entries vs {len(b)}"
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def check_architecture(state: Mapping[str, Any], arch: Architecture, num_classes: int,
                       checkpoint_name: str = "checkpoint", arch_name: str = "--arch") -> None:
    """Raise ``CheckpointError`` unless ``state`` was trained for ``arch`` with
    ``num_classes`` classes; the message names both architectures."""
    try:
        saved = Architecture.load(state["architecture"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint_name}: its stored architecture is invalid: {exc}") from None
    if saved.structure() != arch.structure():
        diff = _first_difference(saved.structure(), arch.structure())
        source = state.get("architecture_source") or "unknown file"
        raise CheckpointError(
            f"{checkpoint_name} was trained for architecture {saved.fingerprint()} "
            f"(from {source}), but {arch_name} is architecture {arch.fingerprint()}; "
            f"they differ at {diff} (checkpoint vs {arch_name})")
    if int(state["num_classes"]) != num_classes:
        raise CheckpointError(f"{checkpoint_name} has {int(state['num_classes'])} classes, "
                              f"but {num_classes} are expected")


def load_model_weights(model: torch.nn.Module, state: Mapping[str, Any], checkpoint_name: str,
                       key: str = "model") -> None:
    """``load_state_dict(strict=True)`` of ``state[key]`` with a one-line
    error instead of PyTorch's multi-line one."""
    if key not in state:
        raise CheckpointError(f"{checkpoint_name} has no {key!r} entry")
    try:
        model.load_state_dict(state[key], strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(f"{checkpoint_name}: weights do not fit the network: "
                              f"{' '.join(lines[:3])[:400]}") from None


def load_trained_model(architecture: Architecture, path: str | os.PathLike, num_classes: int | None = None,
                       arch_name: str = "--arch") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained network of checkpoint ``path`` (on the CPU, in eval mode)
    and the checkpoint, after checking that it was trained for
    ``architecture`` (and ``num_classes`` classes, when given; default: the
    checkpoint's own count). Every problem is a one-line ``CheckpointError``
    naming the file: what evaluation, export and prediction share."""
    name = f"checkpoint {os.fspath(path)}"
    state = load_train_checkpoint(path)
    classes = int(state["num_classes"]) if num_classes is None else num_classes
    check_architecture(state, architecture, classes, name, arch_name)
    model = RSPNet(architecture, classes)
    load_model_weights(model, state, name)
    return model.eval(), state
