"""Networks built from a searched architecture, what they cost, their
BatchNorm-folded inference form, and the hand-designed reference they are
compared with."""
from .cost import count_flops, count_flops_of, count_params
from .fold import FoldCount, fold_batchnorm
from .rspnet import RSPNet

__all__ = ["RSPNet", "count_params", "count_flops", "count_flops_of", "fold_batchnorm", "FoldCount"]
