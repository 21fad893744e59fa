"""Building blocks of RSPNet's search space: the candidate operations, the
mixed edge and its memory modes, the cell, the RSP block, the Path-Attention
Module, stem, bodies and head (the reasoning behind each: docs/design.md).

``PRIMITIVES``, ``Genotype``, ``edge_list`` and ``partial_channels`` belong to
``rspnet.architecture`` and are re-exported here because these modules are
built from them."""
from .backbone import STEM, SinglePathBackbone, Stem, TrellisBackbone, layer_nodes, stem_and_body_input, trellis_nodes
from rspnet.architecture import PRIMITIVES, Genotype, edge_list, partial_channels

from .cell import Cell, DerivedCell, edge_normalization
from .head import HEADS, DetailHead, Head, LightHead, SegmentationHead, head_reads_stem, make_head, upsample_scores
from .mixed_op import MixedOp
from .pam import PathAttention
from .primitives import OPS, ConvBNReLU, DilConv, InvertedResidual, ReLUConvBN, SepConv, Zero
from .recompute import MEMORY_MODES, Recomputable, labelled_cross_entropy, set_memory_mode, upsampled_cross_entropy
from .rsp import RSPBlock

__all__ = [
    "PRIMITIVES", "OPS", "Zero", "SepConv", "DilConv", "InvertedResidual", "ConvBNReLU", "ReLUConvBN",
    "MixedOp", "MEMORY_MODES", "set_memory_mode", "Recomputable", "upsampled_cross_entropy",
    "labelled_cross_entropy",
    "Cell", "DerivedCell", "Genotype", "edge_list", "edge_normalization",
    "RSPBlock", "partial_channels", "PathAttention", "SegmentationHead", "Head", "LightHead", "DetailHead", "stem_and_body_input", "HEADS", "make_head", "head_reads_stem",
    "upsample_scores",
    "Stem", "SinglePathBackbone", "TrellisBackbone", "trellis_nodes", "layer_nodes", "STEM",
]
