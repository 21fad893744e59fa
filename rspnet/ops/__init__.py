"""Fused operators of rspnet (SPEC.md section 8).

Each op has a plain-PyTorch reference (``rspnet.ops.reference``), a C++ CPU
kernel, a Triton kernel and a CUDA kernel; the public function validates its
input and dispatches to the best available backend.
"""
from .reference import channel_merge_ref, mixed_sum_ref, path_fusion_ref
from .mixed_sum import mixed_sum
from .path_fusion import path_fusion
from .channel_merge import channel_merge

__all__ = ["mixed_sum", "path_fusion", "channel_merge",
           "mixed_sum_ref", "path_fusion_ref", "channel_merge_ref"]
