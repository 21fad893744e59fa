"""Networks built from a searched architecture, and what they cost."""
from .cost import count_flops, count_flops_of, count_params
from .rspnet import RSPNet

__all__ = ["RSPNet", "count_params", "count_flops", "count_flops_of"]
