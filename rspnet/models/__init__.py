"""Networks built from a searched architecture, what they cost, their
inference form (``inference_form``: BatchNorms folded, linear cell states
merged, inference-only modules), and the hand-designed reference they are
compared with."""
from .cost import count_flops, count_flops_of, count_params
from .inference import FoldCount, InferenceFormReport, fold_batchnorm, inference_form
from .rspnet import RSPNet
from .simplify import FoldedCell, fold_cells

__all__ = ["RSPNet", "count_params", "count_flops", "count_flops_of", "inference_form", "InferenceFormReport",
           "FoldedCell", "fold_cells", "fold_batchnorm", "FoldCount"]
