"""Networks built from a searched architecture, what they cost, their
folded inference form (BatchNorms and linear cell states), and the
hand-designed reference they are compared with."""
from .cost import count_flops, count_flops_of, count_params
from .fold import FoldCount, fold_batchnorm
from .rspnet import RSPNet
from .simplify import FoldedCell, fold_cells

__all__ = ["RSPNet", "count_params", "count_flops", "count_flops_of", "fold_batchnorm", "FoldCount",
           "FoldedCell", "fold_cells"]
