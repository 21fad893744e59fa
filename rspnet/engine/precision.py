"""Numeric format of a run on a device: mixed precision and memory layout.

``--amp auto`` is bf16 on a GPU that has it, else fp16 (with a GradScaler in
training), and off on CPU; ``--channels-last auto`` is on for GPUs.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["AMP_MODES", "CHANNELS_LAST_MODES", "amp_dtype", "use_channels_last", "autocast"]

AMP_MODES = ("auto", "off", "bf16", "fp16")
CHANNELS_LAST_MODES = ("auto", "on", "off")


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp mode`` on ``device`` (None: full precision)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def use_channels_last(mode: str, device: torch.device) -> bool:
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or nothing when it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
