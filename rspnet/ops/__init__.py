"""Fused operators of rspnet: the supernets' memory-bound steps, each as one
op with a fused backward: ``mixed_sum`` (a mixed edge's weighted sum),
``path_fusion`` (a PAM node's fusion of resampled maps) and ``channel_merge``
(an RSP block's concat + channel shuffle).

Each op has a plain-PyTorch reference (``rspnet.ops.reference``), a C++ CPU
kernel, a Triton kernel and a CUDA kernel; the public function validates its
input and dispatches to the best available backend (``_backend``). This
package owns the Python side of the ops: validation (``_checks``), dispatch,
fake kernels, autograd and the Triton host code; the kernels themselves are in
csrc/ and kernels/.
"""
from .reference import channel_merge_ref, mixed_sum_ref, path_fusion_ref
from .mixed_sum import mixed_sum
from .path_fusion import path_fusion
from .channel_merge import channel_merge

__all__ = ["mixed_sum", "path_fusion", "channel_merge",
           "mixed_sum_ref", "path_fusion_ref", "channel_merge_ref"]
